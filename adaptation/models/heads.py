"""Encoder-only classification, regression and ranking: poolers, an MLP head, `EncoderClassifier`.

The Gemma Encoder recipe (arXiv 2503.02656): the decoder-only stack run with a bidirectional mask
(a `TransformerConfig` with `causal=False`; `causal=True` is kept as an option for the study), a
pooler over the final-norm hidden states, dropout, an MLP of configurable depth, and one output
layer. With `mlp_depth=0` and the Last-1 pooler the head is the T5Gemma paper's SuperGLUE head and
matches transformers' `T5GemmaForSequenceClassification(is_encoder_decoder=False)`: dropout and one
linear layer with bias on the last non-pad token.

Parameters: `{"embedder": {"embedding"}, "encoder": {...}, ["pooler": {...}],
["head_mlp_0": {"kernel", "bias"}, ...], "head": {"kernel": [D', C], "bias": [C]}}`.

Poolers (`HeadConfig.pooler`); `mask` is True on non-pad tokens:
- "first": mean of the first K non-pad tokens' states.
- "last": mean of the last K non-pad tokens' states. First-K and Last-K select tokens by their rank
  among the non-pad tokens, never by index, so left and right padding give the same result. A row
  with fewer than K real tokens averages the ones it has.
- "mean": mean over all non-pad tokens.
- "query_probe": attention pooling where P learned probes are the *queries*. Per head n:
  `k_t = h_t W_k[n]`, `v_t = h_t W_v[n]`, `a_pt = softmax_t(probe[p, n] . k_t / sqrt(H))` over
  non-pad t, `z_p = sum_n (sum_t a_pt v_t) W_o[n]`; the output is the mean of the P vectors `z_p`.
  (Set Transformer's PMA; the common form of attention pooling.)
- "kv_probe": attention pooling where P learned probes are the *keys and values*. Every non-pad
  token queries the probes: `q_t = h_t W_q[n]`, `a_tp = softmax_p(q_t . probe_key[p, n] / sqrt(H))`,
  `z_t = sum_n (sum_p a_tp probe_value[p, n]) W_o[n]`; the output is the mean of `z_t` over the
  non-pad tokens. The pooled vector is a mixture of learned vectors chosen by the tokens (a soft
  codebook), not of the tokens themselves.
Rows without any non-pad token pool to zeros.

Outputs (`HeadConfig.output`): "classification" -> float32 logits [B, num_classes];
"regression" and "ranking" -> one float32 value per row, [B].
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from adaptation.models import axes, masks
from adaptation.models.config import TransformerConfig
from adaptation.models.layers import Embedder
from adaptation.models.transformer import Stack, segments_and_positions

Array = jnp.ndarray

POOLERS = ("first", "last", "mean", "query_probe", "kv_probe")
OUTPUTS = ("classification", "regression", "ranking")
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The task head on top of the encoder.

    Attributes:
      output: "classification", "regression" or "ranking".
      num_classes: classes of a classification head (ignored otherwise).
      pooler: one of `POOLERS` (see the module docstring for the exact definitions).
      pool_k: K of the First-K / Last-K poolers.
      num_probes: P, learned probes of the attention poolers.
      probe_heads: attention heads of the attention poolers (the width must divide by it).
      mlp_depth: hidden layers between the pooler and the output layer (0: dropout + linear).
      mlp_width: width of the hidden layers (None: the encoder width).
      activation: hidden-layer activation, one of `ACTIVATIONS`.
      dropout_rate: dropout before every dense layer of the head.
    """

    output: str = "classification"
    num_classes: int = 2
    pooler: str = "last"
    pool_k: int = 1
    num_probes: int = 1
    probe_heads: int = 1
    mlp_depth: int = 0
    mlp_width: Optional[int] = None
    activation: str = "gelu"
    dropout_rate: float = 0.0

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown head output {self.output!r}; choose one of {OUTPUTS}.")
        if self.pooler not in POOLERS:
            raise ValueError(f"unknown pooler {self.pooler!r}; choose one of {POOLERS}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        if self.output == "classification" and self.num_classes < 2:
            raise ValueError(f"a classification head needs num_classes >= 2, got {self.num_classes}.")
        for name in ("pool_k", "num_probes", "probe_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"HeadConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.mlp_depth < 0:
            raise ValueError(f"HeadConfig.mlp_depth must be >= 0, got {self.mlp_depth}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"HeadConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.")

    @property
    def num_outputs(self) -> int:
        """Width of the output layer: the classes, or 1 for a regression value / ranking score."""
        return self.num_classes if self.output == "classification" else 1

    def replace(self, **changes) -> "HeadConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# Simple poolers: pure functions of [B, T, D] states and a [B, T] non-pad mask.


def first_k_weights(mask: Array, k: int) -> Array:
    """[B, T] weights selecting the first K non-pad tokens of each row (each weight 1/count)."""
    mask = mask.astype(jnp.int32)
    rank = jnp.cumsum(mask, axis=-1)  # 1 on the first real token
    return _normalize((mask > 0) & (rank <= k))


def last_k_weights(mask: Array, k: int) -> Array:
    """[B, T] weights selecting the last K non-pad tokens of each row (each weight 1/count)."""
    mask = mask.astype(jnp.int32)
    rank_from_end = jnp.flip(jnp.cumsum(jnp.flip(mask, -1), axis=-1), -1)  # 1 on the last real token
    return _normalize((mask > 0) & (rank_from_end <= k))


def mean_weights(mask: Array) -> Array:
    """[B, T] weights averaging the non-pad tokens of each row."""
    return _normalize(mask.astype(bool))


def _normalize(selected: Array) -> Array:
    selected = selected.astype(jnp.float32)
    count = jnp.sum(selected, axis=-1, keepdims=True)
    return selected / jnp.maximum(count, 1.0)


def weighted_pool(hidden: Array, weights: Array) -> Array:
    """[B, T, D] states, [B, T] weights -> [B, D] float32 weighted sums."""
    return jnp.einsum("BTD,BT->BD", hidden.astype(jnp.float32), weights)


def simple_pool(hidden: Array, mask: Array, pooler: str, k: int = 1) -> Array:
    """First-K, Last-K or Mean pooling of [B, T, D] states over the non-pad `mask` -> [B, D]."""
    if pooler == "first":
        weights = first_k_weights(mask, k)
    elif pooler == "last":
        weights = last_k_weights(mask, k)
    elif pooler == "mean":
        weights = mean_weights(mask)
    else:
        raise ValueError(f"{pooler!r} is not a simple pooler; choose 'first', 'last' or 'mean'.")
    return weighted_pool(hidden, weights)


# ----------------------------------------------------------------------------------------------
# Attention poolers.

_MASKED = -1e30


def _dense_init():
    return nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))


class QueryProbePooler(nn.Module):
    """Learned probes attend over the non-pad tokens (probes are the queries); [B, T, D] -> [B, D]."""

    num_probes: int = 1
    num_heads: int = 1

    @nn.compact
    def __call__(self, hidden: Array, mask: Array) -> Array:
        d = hidden.shape[-1]
        n, h = self.num_heads, _head_width(d, self.num_heads)
        x = hidden.astype(jnp.float32)
        probes = self.param("probes", nn.initializers.normal(stddev=1.0), (self.num_probes, n, h))
        w_k = self.param("k", _dense_init(), (d, n, h))
        w_v = self.param("v", _dense_init(), (d, n, h))
        w_o = self.param("o", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), (n, h, d))
        keys = jnp.einsum("BTD,DNH->BTNH", x, w_k)
        values = jnp.einsum("BTD,DNH->BTNH", x, w_v)
        logits = jnp.einsum("PNH,BTNH->BNPT", probes, keys) * h**-0.5
        logits = jnp.where(mask[:, None, None, :].astype(bool), logits, _MASKED)
        attn = jax.nn.softmax(logits, axis=-1)
        pooled = jnp.einsum("BNPT,BTNH->BPNH", attn, values)
        out = jnp.einsum("BPNH,NHD->BPD", pooled, w_o).mean(axis=1)
        return jnp.where(jnp.any(mask, axis=-1, keepdims=True), out, 0.0)


class KVProbePooler(nn.Module):
    """Each non-pad token attends over learned probe keys/values; the mean over tokens -> [B, D]."""

    num_probes: int = 1
    num_heads: int = 1

    @nn.compact
    def __call__(self, hidden: Array, mask: Array) -> Array:
        d = hidden.shape[-1]
        n, h = self.num_heads, _head_width(d, self.num_heads)
        x = hidden.astype(jnp.float32)
        w_q = self.param("q", _dense_init(), (d, n, h))
        probe_keys = self.param("probe_keys", nn.initializers.normal(stddev=1.0), (self.num_probes, n, h))
        probe_values = self.param("probe_values", nn.initializers.normal(stddev=1.0), (self.num_probes, n, h))
        w_o = self.param("o", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), (n, h, d))
        queries = jnp.einsum("BTD,DNH->BTNH", x, w_q)
        attn = jax.nn.softmax(jnp.einsum("BTNH,PNH->BTNP", queries, probe_keys) * h**-0.5, axis=-1)
        mixed = jnp.einsum("BTNP,PNH->BTNH", attn, probe_values)
        per_token = jnp.einsum("BTNH,NHD->BTD", mixed, w_o)
        return weighted_pool(per_token, mean_weights(mask))


def _head_width(width: int, heads: int) -> int:
    if width % heads:
        raise ValueError(f"attention-pooler width {width} does not divide into {heads} heads (probe_heads).")
    return width // heads


# ----------------------------------------------------------------------------------------------
# The classifier.


class EncoderClassifier(nn.Module):
    """Encoder-only model with a pooler and an MLP head.

    `apply({"params": p}, tokens) -> [B, C]` float32 logits (classification) or `[B]` values
    (regression, ranking); id 0 is padding. `config` is the encoder stack (`causal=False` for the
    bidirectional encoder, `dropout_rate` for residual dropout, `attention_dropout_rate` where the
    core has it); `head` the pooler and head.
    """

    config: TransformerConfig
    head: HeadConfig = HeadConfig()

    def setup(self):
        cfg, head = self.config, self.head
        self.embedder = Embedder(cfg.vocab_size, cfg.embed_dim, cfg.compute_dtype, cfg.weight_dtype)
        self.encoder = Stack(cfg)
        if head.pooler == "query_probe":
            self.pooler = QueryProbePooler(head.num_probes, head.probe_heads)
        elif head.pooler == "kv_probe":
            self.pooler = KVProbePooler(head.num_probes, head.probe_heads)
        width = head.mlp_width or cfg.embed_dim
        self.head_mlp = [
            nn.Dense(width, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None)))
            for _ in range(head.mlp_depth)
        ]
        self.head_dropout = nn.Dropout(head.dropout_rate)
        self.head_out = nn.Dense(
            head.num_outputs,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, axes.CLASSES)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CLASSES,)),
            name="head",
        )

    def encode(
        self,
        tokens: Array,
        segment_ids: Optional[Array] = None,
        positions: Optional[Array] = None,
        enable_dropout: bool = False,
    ) -> Array:
        """[B, T] ids -> [B, T, D] final-norm hidden states."""
        segment_ids, positions = segments_and_positions(tokens, segment_ids, positions)
        x = self.embedder.encode(tokens)
        hidden, _ = self.encoder(x, segment_ids, positions, deterministic=not enable_dropout)
        return hidden

    def pool(self, hidden: Array, mask: Array) -> Array:
        """[B, T, D] states and [B, T] non-pad mask -> [B, D] float32 pooled vectors."""
        head = self.head
        if head.pooler in ("query_probe", "kv_probe"):
            return self.pooler(hidden, mask)
        return simple_pool(hidden, mask, head.pooler, head.pool_k)

    def score(self, pooled: Array, enable_dropout: bool = False) -> Array:
        """[B, D] pooled vectors -> logits [B, C] or values [B] (float32)."""
        x = pooled.astype(jnp.float32)
        act = ACTIVATIONS[self.head.activation]
        for dense in self.head_mlp:
            x = act(dense(self.head_dropout(x, deterministic=not enable_dropout)))
        out = self.head_out(self.head_dropout(x, deterministic=not enable_dropout))
        return out if self.head.output == "classification" else out[..., 0]

    def __call__(
        self,
        tokens: Array,
        segment_ids: Optional[Array] = None,
        positions: Optional[Array] = None,
        enable_dropout: bool = False,
    ) -> Array:
        hidden = self.encode(tokens, segment_ids, positions, enable_dropout)
        mask = tokens != masks.PAD_ID if segment_ids is None else segment_ids != 0
        return self.score(self.pool(hidden, mask), enable_dropout)

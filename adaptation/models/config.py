"""The one frozen configuration of a transformer stack.

Every family (Gemma 2, Gemma 3) and every role (decoder-only LM, encoder, decoder with cross- or
merged attention, encoder-only) is a value of `TransformerConfig`; variants are made with
`dataclasses.replace`, never with a second model class.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

import jax.numpy as jnp


class AttentionKind(str, enum.Enum):
    """Kind of self-attention a layer performs."""

    GLOBAL = "global"
    LOCAL = "local"  # sliding window


BIDIRECTIONAL_WINDOWS = ("radius", "width")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of one transformer stack (embedding table size included).

    Attributes:
        vocab_size: rows of the embedding table.
        num_layers: number of blocks.
        embed_dim: model width d_model.
        hidden_dim: width of each GeGLU branch (transformers' `intermediate_size`).
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention when < num_heads).
        head_dim: width of one head.
        query_pre_attn_scalar: queries are scaled by `query_pre_attn_scalar ** -0.5`.
        attn_logits_soft_cap: `cap * tanh(logits / cap)` on attention logits, before masking; None: off.
        final_logit_soft_cap: the same on the output logits; None: off.
        sliding_window: window of local layers (a key j is visible from query i when |i - j| < window,
            and j <= i in causal stacks).
        bidirectional_window: how bidirectional stacks read `sliding_window` W: "radius" (T5Gemma:
            |i - j| <= W) or "width" (T5Gemma 2: W keys around the query, j - i <= W // 2 ahead and
            i - j <= (W - 1) // 2 behind). Causal stacks ignore it.
        attention_pattern: layer kinds repeated over the depth (Gemma 2: local, global).
        rope_base_local / rope_base_global: RoPE base frequency per layer kind.
        rope_scale_global: positions of global layers are divided by this (Gemma 3 4B+: 8).
        use_qk_norm: RMSNorm on queries and keys per head (Gemma 3).
        use_post_attn_norm / use_post_ffw_norm: sandwich norms after attention and FFN.
        norm_eps: RMSNorm epsilon.
        causal: causal self-attention (decoder, LM) or bidirectional (encoder).
        cross_attention: a cross-attention sub-layer after self-attention (T5Gemma decoder).
        merged_attention: one attention over [decoder; encoder] keys (T5Gemma 2 decoder).
        cross_kv_dim: width of the encoder output that cross/merged attention reads (None: embed_dim).
        dropout_rate: residual dropout after each sub-layer (finetuning).
        attention_dropout_rate: dropout on the attention probabilities (finetuning; off when
            deterministic).
        dtype: activation/compute dtype.
        param_dtype: dtype of stored parameters.
        scan_layers: run the blocks with `nn.scan` (params stacked on a leading 'layers' axis).
        remat_policy: 'none', 'full', 'dots' or 'dots_no_batch' (see `models.block.REMAT_POLICIES`).
    """

    vocab_size: int
    num_layers: int
    embed_dim: int
    hidden_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    query_pre_attn_scalar: Optional[float] = None
    attn_logits_soft_cap: Optional[float] = 50.0
    final_logit_soft_cap: Optional[float] = 30.0
    sliding_window: Optional[int] = 4096
    bidirectional_window: str = "radius"
    attention_pattern: tuple[AttentionKind, ...] = (AttentionKind.LOCAL, AttentionKind.GLOBAL)
    rope_base_local: float = 10_000.0
    rope_base_global: float = 10_000.0
    rope_scale_global: float = 1.0
    use_qk_norm: bool = False
    use_post_attn_norm: bool = True
    use_post_ffw_norm: bool = True
    norm_eps: float = 1e-6
    causal: bool = True
    cross_attention: bool = False
    merged_attention: bool = False
    cross_kv_dim: Optional[int] = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                    f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}."
            )
        if self.cross_attention and self.merged_attention:
            raise ValueError("cross_attention and merged_attention are exclusive: choose one.")
        if self.merged_attention and self.cross_kv_dim not in (None, self.embed_dim):
            raise ValueError(
                    f"merged attention needs equal encoder and decoder widths; encoder {self.cross_kv_dim}, "
                    f"decoder {self.embed_dim}."
            )
        if self.bidirectional_window not in BIDIRECTIONAL_WINDOWS:
            raise ValueError(
                    f"bidirectional_window must be one of {BIDIRECTIONAL_WINDOWS}, got {self.bidirectional_window!r}."
            )
        if not self.attention_pattern:
            raise ValueError("attention_pattern must name at least one layer kind.")
        object.__setattr__(
                self, "attention_pattern", tuple(AttentionKind(k) for k in self.attention_pattern)
        )

    @property
    def query_scale(self) -> float:
        """Multiplier applied to queries before the dot product."""
        scalar = self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim
        return float(scalar) ** -0.5

    @property
    def layer_kinds(self) -> tuple[AttentionKind, ...]:
        """Attention kind of every layer: the pattern repeated over the depth."""
        pattern = self.attention_pattern
        return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

    @property
    def kv_input_dim(self) -> int:
        """Width of the encoder output read by cross- or merged attention."""
        return self.cross_kv_dim or self.embed_dim

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig:
    """An encoder stack and a decoder stack.

    Attributes:
        encoder: bidirectional stack config (`causal=False`).
        decoder: causal stack with `cross_attention` or `merged_attention`, `cross_kv_dim` the encoder
            width.
        tie_all_embeddings: one table for encoder input, decoder input and output head (T5Gemma 2);
            otherwise separate encoder and decoder tables, the head tied to the decoder table (T5Gemma).
    """

    encoder: TransformerConfig
    decoder: TransformerConfig
    tie_all_embeddings: bool = False

    def __post_init__(self):
        enc, dec = self.encoder, self.decoder
        if enc.causal:
            raise ValueError("the encoder config must be bidirectional (causal=False).")
        if not (dec.cross_attention or dec.merged_attention):
            raise ValueError("the decoder config needs cross_attention or merged_attention.")
        if dec.kv_input_dim != enc.embed_dim:
            raise ValueError(
                    f"decoder reads encoder outputs of width {dec.kv_input_dim}, encoder width is "
                    f"{enc.embed_dim}."
            )
        if enc.vocab_size != dec.vocab_size:
            raise ValueError(
                    f"encoder vocabulary {enc.vocab_size} differs from decoder vocabulary {dec.vocab_size}."
            )
        if self.tie_all_embeddings and enc.embed_dim != dec.embed_dim:
            raise ValueError(
                    f"tied embeddings need equal widths; encoder {enc.embed_dim}, decoder {dec.embed_dim}."
            )

    def replace(self, **changes) -> "EncoderDecoderConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def encoder_decoder_from(
        encoder_source: TransformerConfig,
        decoder_source: Optional[TransformerConfig] = None,
        *,
        merged_attention: bool = False,
        tie_all_embeddings: bool = False,
) -> EncoderDecoderConfig:
    """Derives an encoder-decoder config from one (balanced) or two (unbalanced) decoder-only configs."""
    decoder_source = decoder_source or encoder_source
    encoder = encoder_source.replace(causal=False, cross_attention=False, merged_attention=False)
    decoder = decoder_source.replace(
            causal=True,
            cross_attention=not merged_attention,
            merged_attention=merged_attention,
            cross_kv_dim=encoder_source.embed_dim,
    )
    return EncoderDecoderConfig(encoder=encoder, decoder=decoder, tie_all_embeddings=tie_all_embeddings)

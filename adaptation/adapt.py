"""Decoder-only params -> encoder-decoder params (T5Gemma / T5Gemma 2 initialization).

Pure functions on per-layer parameter trees (numpy or jax arrays); no IO. The rules
(DESIGN.md §1 "Initialization"):

- encoder: every weight of the encoder source (embedding, all layers, final norm), run with
  bidirectional attention;
- decoder: the decoder source's self-attention, FFN, norms, embedding and final norm;
- cross-attention (T5Gemma decoders): a copy of the same layer's self-attention (q, k, v, o, and
  QK-norm scales when present), its pre/post norms copied from the self-attention norms, for a
  balanced pair; freshly initialized with the model's own initializers for an unbalanced pair or
  when asked (`cross_attention_init="random"`). Fresh params are listed in `new_param_paths` so that
  the trainer can train them alone first (the paper's 1 000-step warm-up, see `trainable_mask`);
- merged attention (T5Gemma 2 decoders): one attention module per layer, initialized from the
  source self-attention; nothing is new;
- `tie_all_embeddings`: one `embedder` table (the decoder source's) for encoder input, decoder input
  and output head.

Arrays are not copied: encoder, decoder and cross-attention leaves may be the very arrays of the
source trees (treat them as immutable, as jax arrays are).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Iterable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaptation.checkpoints.common import expected_shapes, flatten, unflatten
from adaptation.models import layout
from adaptation.models.config import EncoderDecoderConfig, TransformerConfig, encoder_decoder_from
from adaptation.models.transformer import Stack

Params = dict
Source = tuple[TransformerConfig, Params]

CROSS_ATTENTION_INITS = ("copy", "random")

# Cross-attention params of a decoder block -> the self-attention params they are copied from.
_CROSS_FROM_SELF = {
    "pre_cross_attention_norm": "pre_attention_norm",
    "cross_attn": "attn",
    "post_cross_attention_norm": "post_attention_norm",
}


@dataclasses.dataclass(frozen=True)
class AdaptedModel:
    """An encoder-decoder model initialized from decoder-only checkpoints.

    Attributes:
      config: the encoder-decoder config.
      params: the model's params in the per-layer layout (`layout.map_stacks` with
        `layout.to_config_layout` gives the scanned layout).
      new_param_paths: "/"-joined paths of the freshly initialized params, e.g.
        "decoder/layers_0/cross_attn/q" (empty for a balanced copy or merged attention).
    """

    config: EncoderDecoderConfig
    params: Params
    new_param_paths: list[str]


def adapt(
    encoder_source: Source,
    decoder_source: Optional[Source] = None,
    *,
    cross_attention_init: Optional[str] = None,
    merged_attention: bool = False,
    tie_all_embeddings: bool = False,
    seed: int = 0,
) -> AdaptedModel:
    """Builds encoder-decoder params from one (balanced) or two (unbalanced) decoder-only sources.

    Args:
      encoder_source: (config, params) of the decoder-only model the encoder comes from (the larger
        one of an unbalanced pair). Params in `DecoderOnlyLM` layout, per-layer or scanned.
      decoder_source: (config, params) of the decoder's source; None: the encoder source (balanced).
      cross_attention_init: "copy" (cross-attention = the same layer's self-attention), "random"
        (fresh init) or None: "copy" for a balanced pair, "random" otherwise.
      merged_attention: T5Gemma 2 decoder (one attention over decoder and encoder keys).
      tie_all_embeddings: one embedding table for encoder, decoder and output head.
      seed: PRNG seed of the fresh params.

    Returns:
      An `AdaptedModel`.

    Raises:
      ValueError: a source that is not decoder-only, params that do not match their config,
        sources with different vocabularies, a cross-attention copy between shapes that differ,
        merged attention or tied embeddings with different widths.
    """
    enc_cfg, enc_params = _check_source(encoder_source, "encoder source")
    if decoder_source is None:
        dec_cfg, dec_params = enc_cfg, enc_params
    else:
        dec_cfg, dec_params = _check_source(decoder_source, "decoder source")
    balanced = _architecture(enc_cfg) == _architecture(dec_cfg)
    _check_pair(enc_cfg, dec_cfg, merged_attention, tie_all_embeddings)

    if merged_attention:
        if cross_attention_init is not None:
            raise ValueError(
                f"cross_attention_init={cross_attention_init!r} does not apply to merged attention: a "
                "merged-attention decoder has no cross-attention, its attention comes from the source "
                "self-attention. Leave cross_attention_init unset."
            )
        init = None
    else:
        init = cross_attention_init or ("copy" if balanced else "random")
        if init not in CROSS_ATTENTION_INITS:
            raise ValueError(
                f"cross_attention_init must be one of {CROSS_ATTENTION_INITS} or None, got {init!r}."
            )
        if init == "copy" and not balanced:
            _check_copyable(enc_cfg, dec_cfg)

    config = encoder_decoder_from(
        enc_cfg, dec_cfg, merged_attention=merged_attention, tie_all_embeddings=tie_all_embeddings
    )
    expected = expected_shapes(config)
    decoder_shapes = {p[len("decoder/") :]: s for p, s in expected.items() if p.startswith("decoder/")}
    decoder, new_paths = _adapt_decoder(
        config.decoder, dec_params["decoder"], decoder_shapes, copy_cross=init == "copy", seed=seed
    )
    params: Params = {}
    if tie_all_embeddings:
        params["embedder"] = dec_params["embedder"]
    else:
        params["encoder_embedder"] = enc_params["embedder"]
        params["decoder_embedder"] = dec_params["embedder"]
    params["encoder"] = dict(enc_params["decoder"])
    params["decoder"] = decoder
    _check_tree(params, expected, "adapted encoder-decoder params")
    return AdaptedModel(config=config, params=params, new_param_paths=["decoder/" + p for p in new_paths])


def trainable_mask(params: Params, trainable_paths: Iterable[str]) -> Any:
    """A pytree of bools shaped like `params`: True for the leaves named in `trainable_paths`.

    Paths are "/"-joined per-layer paths (`AdaptedModel.new_param_paths`). Scanned stacks
    (`{"layers": stacked}`) are handled: a stacked leaf is trainable when the path of every layer
    is listed. Use with optax, e.g.
    `optax.multi_transform({True: tx, False: optax.set_to_zero()}, trainable_mask(p, new_paths))`.

    Raises:
      ValueError: a path that names no leaf, or a stacked leaf listed for only some of its layers.
    """
    wanted = set(trainable_paths)
    used: set[str] = set()

    def leaf_mask(path, leaf) -> bool:
        keys = [_key_name(k) for k in path]
        if "layers" in keys:  # scanned stack: expand to the per-layer paths
            at = keys.index("layers")
            num = np.shape(leaf)[0]
            names = ["/".join(keys[:at] + [f"layers_{i}"] + keys[at + 1 :]) for i in range(num)]
        else:
            names = ["/".join(keys)]
        listed = [n in wanted for n in names]
        if any(listed) and not all(listed):
            raise ValueError(
                f"stacked leaf {'/'.join(keys)} is trainable in only some layers "
                f"({sum(listed)} of {len(names)}); a scanned stack trains a leaf in all layers or none."
            )
        used.update(n for n in names if n in wanted)
        return all(listed)

    mask = jax.tree_util.tree_map_with_path(leaf_mask, params)
    unknown = sorted(wanted - used)
    if unknown:
        raise ValueError(f"trainable paths name no parameter: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return mask


# --------------------------------------------------------------------------------------------------
# Internals.


def _adapt_decoder(
    cfg: TransformerConfig, source: Params, expected: Mapping[str, tuple], *, copy_cross: bool, seed: int
) -> tuple[Params, list[str]]:
    """The decoder stack: source leaves where the path exists, cross-attention copied or fresh."""
    flat_source = flatten(source)
    flat: dict[str, Any] = {}
    new_paths: list[str] = []
    for path in sorted(expected, key=_natural_key):
        if path in flat_source:
            flat[path] = flat_source[path]
            continue
        copied_from = _self_attention_path(path) if copy_cross else None
        if copied_from is not None and copied_from in flat_source:
            flat[path] = flat_source[copied_from]
        else:
            new_paths.append(path)
    if new_paths:
        flat.update(_fresh_decoder_leaves(cfg, new_paths, seed))
    return unflatten(flat), new_paths


def _self_attention_path(path: str) -> Optional[str]:
    """"layers_3/cross_attn/q" -> "layers_3/attn/q"; None for paths outside cross-attention."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[1] in _CROSS_FROM_SELF:
        return "/".join([parts[0], _CROSS_FROM_SELF[parts[1]], *parts[2:]])
    return None


def _fresh_decoder_leaves(cfg: TransformerConfig, paths: list[str], seed: int) -> dict[str, np.ndarray]:
    """The model's own initialization of some decoder leaves."""
    leaves = _init_leaves(_unscanned(cfg).replace(dropout_rate=0.0), tuple(paths), jax.random.PRNGKey(seed))
    return {p: np.asarray(v) for p, v in leaves.items()}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_leaves(cfg: TransformerConfig, paths: tuple[str, ...], rng: jax.Array) -> dict[str, jax.Array]:
    """Initializes a decoder `Stack` and keeps `paths` (under jit, XLA computes only those)."""
    x = jnp.zeros((1, 1, cfg.embed_dim), cfg.compute_dtype)
    encoded = jnp.zeros((1, 1, cfg.kv_input_dim), cfg.compute_dtype)
    ones = jnp.ones((1, 1), jnp.int32)
    variables = Stack(cfg).init({"params": rng}, x, ones, ones * 0, encoded=encoded, encoder_segment_ids=ones)
    flat = flatten(nn.meta.unbox(variables["params"]))
    return {p: flat[p] for p in paths}


def _check_source(source: Source, side: str) -> tuple[TransformerConfig, Params]:
    """Validates a decoder-only (config, params) pair; returns it with per-layer, unboxed params."""
    if not (isinstance(source, tuple) and len(source) == 2):
        raise TypeError(f"the {side} must be a (TransformerConfig, params) pair, got {type(source).__name__}.")
    cfg, params = source
    if isinstance(cfg, EncoderDecoderConfig) or not isinstance(cfg, TransformerConfig):
        raise ValueError(
            f"the {side} config is {type(cfg).__name__}; adapt takes decoder-only checkpoints "
            "(a TransformerConfig with causal=True), not an encoder-decoder one."
        )
    if cfg.cross_attention or cfg.merged_attention:
        raise ValueError(
            f"the {side} is already an encoder-decoder decoder (cross_attention={cfg.cross_attention}, "
            f"merged_attention={cfg.merged_attention}); adapt takes decoder-only checkpoints."
        )
    if not cfg.causal:
        raise ValueError(
            f"the {side} config is bidirectional (causal=False), i.e. an encoder; adapt takes "
            "decoder-only (causal) checkpoints."
        )
    params = nn.meta.unbox(params)
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    if not isinstance(params, Mapping) or "decoder" not in params or "embedder" not in params:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        hint = (
            " It looks like an encoder-decoder checkpoint; adapt takes decoder-only checkpoints."
            if isinstance(params, Mapping) and "encoder" in params
            else ""
        )
        raise ValueError(
            f"the {side} params must be a DecoderOnlyLM tree {{'embedder', 'decoder'}}, found {keys}.{hint}"
        )
    params = {"embedder": params["embedder"], "decoder": layout.unstack_layers(dict(params["decoder"]))}
    _check_tree(params, expected_shapes(cfg), f"{side} params")
    return cfg, params


def _check_pair(enc: TransformerConfig, dec: TransformerConfig, merged: bool, tied: bool) -> None:
    """Errors for source pairs that cannot form one encoder-decoder model."""
    if enc.vocab_size != dec.vocab_size:
        raise ValueError(
            f"the sources have different vocabularies: encoder source vocab_size={enc.vocab_size}, "
            f"decoder source vocab_size={dec.vocab_size}. Pair checkpoints that share one tokenizer."
        )
    if merged and enc.embed_dim != dec.embed_dim:
        raise ValueError(
            f"merged attention needs equal encoder and decoder widths: encoder source embed_dim="
            f"{enc.embed_dim}, decoder source embed_dim={dec.embed_dim}. Use separate cross-attention "
            "(merged_attention=False) for an unbalanced pair."
        )
    if tied and enc.embed_dim != dec.embed_dim:
        raise ValueError(
            f"tied embeddings need equal widths: encoder source embed_dim={enc.embed_dim}, decoder "
            f"source embed_dim={dec.embed_dim}. Use tie_all_embeddings=False for an unbalanced pair."
        )


def _check_copyable(enc: TransformerConfig, dec: TransformerConfig) -> None:
    """Cross-attention copied from self-attention needs K/V inputs of the decoder's own width."""
    if enc.embed_dim != dec.embed_dim:
        raise ValueError(
            "cannot copy the decoder self-attention into cross-attention: its keys/values project the "
            f"encoder outputs (encoder source embed_dim={enc.embed_dim}, num_heads={enc.num_heads}, "
            f"num_kv_heads={enc.num_kv_heads}, head_dim={enc.head_dim}) but the self-attention K/V "
            f"project the decoder width (decoder source embed_dim={dec.embed_dim}, num_heads="
            f"{dec.num_heads}, num_kv_heads={dec.num_kv_heads}, head_dim={dec.head_dim}). "
            "Use cross_attention_init='random' for an unbalanced pair."
        )


def _check_tree(found: Params, flat_expected: Mapping[str, tuple], what: str) -> None:
    """Raises a ValueError listing missing, unexpected and mis-shaped leaves."""
    flat_found = flatten(found)
    missing = sorted(set(flat_expected) - set(flat_found))
    extra = sorted(set(flat_found) - set(flat_expected))
    shapes = [
        f"{p}: expected {tuple(flat_expected[p])}, found {tuple(np.shape(flat_found[p]))}"
        for p in sorted(set(flat_found) & set(flat_expected))
        if tuple(np.shape(flat_found[p])) != tuple(flat_expected[p])
    ]
    if missing or extra or shapes:
        problems = [f"missing {missing[:5]}"] if missing else []
        problems += [f"unexpected {extra[:5]}"] if extra else []
        problems += [f"shape mismatch: {'; '.join(shapes[:5])}"] if shapes else []
        raise ValueError(f"{what} do not match their config: {' | '.join(problems)}")


def _architecture(cfg: TransformerConfig) -> TransformerConfig:
    """The config without the fields that do not change the weights' meaning or shapes."""
    return cfg.replace(scan_layers=False, remat_policy="none", dropout_rate=0.0, dtype="float32", param_dtype="float32")


def _unscanned(cfg: TransformerConfig) -> TransformerConfig:
    return cfg.replace(scan_layers=False, remat_policy="none")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _natural_key(path: str) -> list:
    """Sort key that puts layers_2 before layers_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]

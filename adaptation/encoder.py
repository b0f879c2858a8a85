"""Encoder-only models from any checkpoint: the Gemma Encoder starting point.

A decoder-only checkpoint becomes an encoder by running the same weights with a bidirectional
mask (`causal=False`); an encoder-decoder checkpoint gives its encoder. `load_encoder(path)` does
this for any checkpoint `adaptation.load_checkpoint` reads; `encoder_from_params` does it for
params already in memory. The result is an `EncoderOnly` model, `model.apply({"params": p},
tokens) -> [B, T, D]` final-norm hidden states (id 0 is padding), or, with `head=`, an
`EncoderClassifier` whose head params are freshly initialized.

`pad_batch` builds left- or right-padded token batches (the padding side is a data option; the
poolers and the model give the same result either way).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import numpy as np

from adaptation.models import layout
from adaptation.models.config import EncoderDecoderConfig, TransformerConfig
from adaptation.models.heads import EncoderClassifier, HeadConfig
from adaptation.models.transformer import EncoderOnly

Params = dict


def encoder_config(source: Union[TransformerConfig, EncoderDecoderConfig], *, causal: bool = False) -> TransformerConfig:
    """The encoder stack config of a decoder-only, encoder-only or encoder-decoder config.

    Args:
      source: the checkpoint's config.
      causal: keep causal attention (an option of the Gemma Encoder study); default bidirectional.
    """
    stack = source.encoder if isinstance(source, EncoderDecoderConfig) else source
    return stack.replace(causal=causal, cross_attention=False, merged_attention=False, cross_kv_dim=None)


def encoder_params(params: Params) -> Params:
    """`{"embedder", "encoder"}` params from a decoder-only, encoder-only, encoder-decoder or classifier tree.

    Decoder-only `{"embedder", "decoder"}`: the decoder stack becomes the encoder stack, weights
    unchanged. Encoder-decoder `{"encoder_embedder" | "embedder", "encoder", "decoder"}`: the encoder
    and its input table. Extra entries (a classifier's head) are dropped.
    """
    keys = set(params)
    if "encoder" in keys:
        table = params.get("encoder_embedder", params.get("embedder"))
        stack = params["encoder"]
    elif "decoder" in keys and "embedder" in keys:
        table, stack = params["embedder"], params["decoder"]
    else:
        raise ValueError(
            f"cannot find an encoder in params with top-level keys {sorted(keys)}; expected "
            "{'embedder', 'decoder'} (decoder-only) or {'encoder_embedder'|'embedder', 'encoder', ...}."
        )
    if table is None:
        raise ValueError(f"params hold an 'encoder' but no 'encoder_embedder' or 'embedder' table: {sorted(keys)}.")
    return {"embedder": table, "encoder": stack}


def encoder_from_params(
    config: Union[TransformerConfig, EncoderDecoderConfig],
    params: Params,
    *,
    causal: bool = False,
    head: Optional[HeadConfig] = None,
    rng: Optional[jax.Array] = None,
    **overrides: Any,
) -> tuple[Union[EncoderOnly, EncoderClassifier], Params]:
    """An encoder-only model and its params from a checkpoint's config and params.

    Args:
      config: the checkpoint's config (decoder-only, encoder-only or encoder-decoder).
      params: the checkpoint's params (per-layer or scanned layout).
      causal: keep causal self-attention instead of the bidirectional default.
      head: when given, return an `EncoderClassifier` with this head, its head (and pooler)
        params initialized from `rng`.
      rng: PRNG key for the head initialization (default key 0).
      **overrides: `TransformerConfig` fields to change (e.g. dropout_rate, scan_layers, dtype).
    """
    cfg = encoder_config(config, causal=causal).replace(**overrides)
    tree = encoder_params(params)
    tree = {"embedder": tree["embedder"], "encoder": layout.to_config_layout(tree["encoder"], cfg.scan_layers)}
    width = np.shape(tree["embedder"]["embedding"])
    if tuple(width) != (cfg.vocab_size, cfg.embed_dim):
        raise ValueError(
            f"embedder/embedding has shape {tuple(width)}, the config expects {(cfg.vocab_size, cfg.embed_dim)}."
        )
    if head is None:
        return EncoderOnly(cfg), tree
    model = EncoderClassifier(cfg, head)
    return model, init_head(model, tree, rng)


def init_head(model: EncoderClassifier, encoder_tree: Params, rng: Optional[jax.Array] = None) -> Params:
    """Classifier params: the given `{"embedder", "encoder"}` plus freshly initialized head/pooler params."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    tokens = np.ones((1, 2), np.int32)
    shapes = jax.eval_shape(lambda r: model.init(r, tokens), rng)["params"]
    head_names = [k for k in shapes if k not in ("embedder", "encoder")]

    def init_head_only(r):
        from flax.core import meta

        full = meta.unbox(model.init(r, tokens)["params"])
        return {k: full[k] for k in head_names}

    # Initializing the whole model to keep only the head is cheap at test sizes; at full size the
    # encoder part is dead code that XLA removes under jit.
    head_params = jax.jit(init_head_only)(rng)
    return {**encoder_tree, **head_params}


def load_encoder(
    path: str,
    *,
    causal: bool = False,
    head: Optional[HeadConfig] = None,
    rng: Optional[jax.Array] = None,
    config: Any = None,
    **overrides: Any,
) -> tuple[Union[EncoderOnly, EncoderClassifier], Params]:
    """An encoder-only model from any checkpoint `adaptation.load_checkpoint` reads.

    Decoder-only checkpoints (Gemma 2, Gemma 3; Hugging Face, official Flax, ours) give the same
    weights run bidirectionally; encoder-decoder checkpoints give their encoder; a T5Gemma
    classifier directory gives its encoder. Returns `(model, params)` with
    `model.apply({"params": params}, tokens) -> [B, T, D]` final-norm hidden states (id 0 is
    padding), or an `EncoderClassifier` when `head` is given (see `encoder_from_params`).
    `config` is passed to `read_checkpoint` (a preset name for official Gemma checkpoints).
    """
    from adaptation.checkpoints.loader import read_checkpoint

    source, params = read_checkpoint(path, config=config)
    return encoder_from_params(source, params, causal=causal, head=head, rng=rng, **overrides)


def pad_batch(
    sequences: Sequence[Sequence[int]],
    length: Optional[int] = None,
    *,
    pad_side: str = "right",
    truncate_side: str = "left",
    pad_id: int = 0,
) -> np.ndarray:
    """[B, length] int32 token batch, padded on `pad_side` ("right" or "left").

    Sequences longer than `length` lose tokens on `truncate_side` ("left" keeps the end, where the
    Last-K pooler reads; "right" keeps the start). `length` defaults to the longest sequence.
    """
    if pad_side not in ("left", "right") or truncate_side not in ("left", "right"):
        raise ValueError(f"pad_side and truncate_side must be 'left' or 'right', got {pad_side!r}, {truncate_side!r}.")
    if not sequences:
        raise ValueError("pad_batch got no sequences.")
    length = length or max(len(s) for s in sequences)
    out = np.full((len(sequences), length), pad_id, np.int32)
    for i, seq in enumerate(sequences):
        seq = list(seq)
        if len(seq) > length:
            seq = seq[-length:] if truncate_side == "left" else seq[:length]
        if pad_side == "right":
            out[i, : len(seq)] = seq
        else:
            out[i, length - len(seq) :] = seq
    return out

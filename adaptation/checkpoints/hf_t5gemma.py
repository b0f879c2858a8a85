"""Hugging Face T5Gemma directories <-> our `EncoderDecoder` and encoder classifier params.

`T5GemmaForConditionalGeneration` (ours -> HF; stacks `encoder`/`decoder`, `{i}` the layer):
  encoder_embedder/embedding        model.encoder.embed_tokens.weight   (V, E)
  decoder_embedder/embedding        model.decoder.embed_tokens.weight   (V, D); lm_head.out_proj.weight tied to it
  {stack}/final_norm/scale          model.{stack}.norm.weight
  {stack}/layers_{i}/ pre_attention_norm/scale          model.{stack}.layers.{i}.pre_self_attn_layernorm.weight
                      attn/{q,k,v,o}                    self_attn.{q,k,v,o}_proj.weight   (IN_PROJ / OUT_PROJ)
                      post_attention_norm/scale         post_self_attn_layernorm.weight
                      pre_cross_attention_norm/scale    pre_cross_attn_layernorm.weight     (decoder)
                      cross_attn/q [D,N,H]              cross_attn.q_proj.weight (N*H, D)
                      cross_attn/k, v [E,K,H]           cross_attn.{k,v}_proj.weight (K*H, E), E the encoder width
                      cross_attn/o [N,H,D]              cross_attn.o_proj.weight (D, N*H)
                      post_cross_attention_norm/scale   post_cross_attn_layernorm.weight    (decoder)
                      pre_ffw_norm, post_ffw_norm       pre_/post_feedforward_layernorm.weight
                      mlp/{gate,up,down}                mlp.{gate,up,down}_proj.weight
config.json: `T5GemmaConfig(encoder=T5GemmaModuleConfig(...), decoder=...)`; each module config is
a Gemma stack (see `hf_common`); the decoder's `cross_attention_hidden_size` is the encoder width.
A model with `tie_all_embeddings` is exported with its one table written as both HF tables
(HF T5Gemma has no shared-table option); it imports back untied, with equal logits.

`T5GemmaForSequenceClassification(config, is_encoder_decoder=False)` (encoder only) <->
`adaptation.models.heads.EncoderClassifier` params `{"embedder", "encoder", "head"}`:
  embedder/embedding -> model.encoder.embed_tokens.weight, encoder/... as above,
  head/kernel [D, C] -> score.out_proj.weight (C, D), head/bias [C] -> score.out_proj.bias.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from adaptation.checkpoints.common import (
    IDENTITY,
    IN_PROJ,
    OUT_PROJ,
    CheckpointError,
    NameMap,
    expected_shapes,
    flatten,
    per_layer,
)
from adaptation.checkpoints.hf_common import (
    SPECIAL_IDS,
    check_params,
    dtype_name,
    hf_tensors,
    params_dtype,
    read_params,
    stack_config_from_hf,
    stack_config_to_hf,
)
from adaptation.checkpoints.safetensors_io import (
    DEFAULT_SHARD_BYTES,
    SafetensorsReader,
    read_hf_config,
    write_hf_directory,
)
from adaptation.models import layout
from adaptation.models.config import AttentionKind, EncoderDecoderConfig, TransformerConfig

T5GEMMA_BLOCK = {
    "pre_attention_norm/scale": ("pre_self_attn_layernorm.weight", IDENTITY),
    "attn/q": ("self_attn.q_proj.weight", IN_PROJ),
    "attn/k": ("self_attn.k_proj.weight", IN_PROJ),
    "attn/v": ("self_attn.v_proj.weight", IN_PROJ),
    "attn/o": ("self_attn.o_proj.weight", OUT_PROJ),
    "post_attention_norm/scale": ("post_self_attn_layernorm.weight", IDENTITY),
    "pre_cross_attention_norm/scale": ("pre_cross_attn_layernorm.weight", IDENTITY),
    "cross_attn/q": ("cross_attn.q_proj.weight", IN_PROJ),
    "cross_attn/k": ("cross_attn.k_proj.weight", IN_PROJ),
    "cross_attn/v": ("cross_attn.v_proj.weight", IN_PROJ),
    "cross_attn/o": ("cross_attn.o_proj.weight", OUT_PROJ),
    "post_cross_attention_norm/scale": ("post_cross_attn_layernorm.weight", IDENTITY),
    "pre_ffw_norm/scale": ("pre_feedforward_layernorm.weight", IDENTITY),
    "post_ffw_norm/scale": ("post_feedforward_layernorm.weight", IDENTITY),
    "mlp/gate": ("mlp.gate_proj.weight", IN_PROJ),
    "mlp/up": ("mlp.up_proj.weight", IN_PROJ),
    "mlp/down": ("mlp.down_proj.weight", OUT_PROJ),
}
_STACKS = {"encoder": "model.encoder.layers.{i}.", "decoder": "model.decoder.layers.{i}."}

T5GEMMA_NAMES = NameMap(
    top={
        "encoder_embedder/embedding": ("model.encoder.embed_tokens.weight", IDENTITY),
        "decoder_embedder/embedding": ("model.decoder.embed_tokens.weight", IDENTITY),
        "encoder/final_norm/scale": ("model.encoder.norm.weight", IDENTITY),
        "decoder/final_norm/scale": ("model.decoder.norm.weight", IDENTITY),
    },
    stacks=_STACKS,
    block=T5GEMMA_BLOCK,
)
T5GEMMA_TIED_HEAD = {"lm_head.out_proj.weight": "model.decoder.embed_tokens.weight"}

T5GEMMA_CLASSIFIER_NAMES = NameMap(
    top={
        "embedder/embedding": ("model.encoder.embed_tokens.weight", IDENTITY),
        "encoder/final_norm/scale": ("model.encoder.norm.weight", IDENTITY),
        "head/kernel": ("score.out_proj.weight", IN_PROJ),
        "head/bias": ("score.out_proj.bias", IDENTITY),
    },
    stacks={"encoder": _STACKS["encoder"]},
    block=T5GEMMA_BLOCK,
)


def _module(hf: Mapping[str, Any], side: str, source: str) -> Mapping[str, Any]:
    module = hf.get(side)
    if not isinstance(module, Mapping):
        raise CheckpointError(f"{source}: T5Gemma config has no {side!r} object.")
    return module


def _encoder_config(hf: Mapping[str, Any], source: str) -> TransformerConfig:
    return stack_config_from_hf(_module(hf, "encoder", source), f"{source} (encoder)", causal=False)


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> EncoderDecoderConfig:
    """EncoderDecoderConfig of a T5Gemma config.json."""
    if hf.get("tie_word_embeddings") is False:
        raise CheckpointError(f"{source}: tie_word_embeddings=false is not supported (the head is tied to the decoder table).")
    encoder = _encoder_config(hf, source)
    dec_hf = _module(hf, "decoder", source)
    cross = dec_hf.get("cross_attention_hidden_size") or encoder.embed_dim
    if cross != encoder.embed_dim:
        raise CheckpointError(
            f"{source}: decoder cross_attention_hidden_size {cross} differs from the encoder hidden_size {encoder.embed_dim}."
        )
    decoder = stack_config_from_hf(dec_hf, f"{source} (decoder)", causal=True, cross_attention=True, cross_kv_dim=cross)
    try:
        return EncoderDecoderConfig(encoder=encoder, decoder=decoder)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _module_to_hf(cfg: TransformerConfig, *, is_decoder: bool, cross_width: Optional[int] = None) -> dict:
    module = {"model_type": "t5_gemma_module", "is_decoder": is_decoder, "dropout_rate": 0.0,
              **stack_config_to_hf(cfg, "T5Gemma")}
    if cross_width is not None:
        module["cross_attention_hidden_size"] = cross_width
    return module


def config_to_hf(config: EncoderDecoderConfig, architecture: str = "T5GemmaForConditionalGeneration") -> dict:
    """T5Gemma config.json of an EncoderDecoderConfig."""
    enc, dec = config.encoder, config.decoder
    if enc.causal or not dec.cross_attention:
        raise CheckpointError("T5Gemma needs a bidirectional encoder and a decoder with cross-attention (not merged).")
    if enc.sliding_window is not None and enc.bidirectional_window != "radius" and AttentionKind.LOCAL in enc.layer_kinds:
        raise CheckpointError(
            f"T5Gemma encoders read the sliding window as a radius (|i - j| <= W); this encoder uses "
            f"bidirectional_window={enc.bidirectional_window!r} (set config.encoder.bidirectional_window='radius')."
        )
    return {
        "architectures": [architecture],
        "model_type": "t5gemma",
        "encoder": _module_to_hf(enc, is_decoder=False),
        "decoder": _module_to_hf(dec, is_decoder=True, cross_width=enc.embed_dim),
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
        "vocab_size": dec.vocab_size,
        "dropout_rate": 0.0,
        "attention_dropout": 0.0,
        "classifier_dropout_rate": 0.0,
        **SPECIAL_IDS,
    }


def import_t5gemma(path: Union[str, os.PathLike]) -> tuple[EncoderDecoderConfig, dict]:
    """(EncoderDecoderConfig, numpy per-layer params) of a HF `T5GemmaForConditionalGeneration` directory."""
    path = os.fspath(path)
    source = os.path.join(path, "config.json")
    config = config_from_hf(read_hf_config(path), source)
    entries = T5GEMMA_NAMES.entries(expected_shapes(config))
    with SafetensorsReader(path) as reader:
        params = read_params(reader, entries, tied=T5GEMMA_TIED_HEAD, source=source)
    dtype = params_dtype(params)
    return config.replace(encoder=config.encoder.replace(param_dtype=dtype),
                          decoder=config.decoder.replace(param_dtype=dtype)), params


def _untie(config: EncoderDecoderConfig, params: Mapping[str, Any]) -> tuple[EncoderDecoderConfig, dict]:
    """A tied-embedding model as the equivalent untied one (the table written twice)."""
    if not config.tie_all_embeddings:
        return config, dict(params)
    params = dict(params)
    table = params.pop("embedder")
    return config.replace(tie_all_embeddings=False), {**params, "encoder_embedder": table, "decoder_embedder": table}


def export_t5gemma(
    path: Union[str, os.PathLike],
    config: EncoderDecoderConfig,
    params: Mapping[str, Any],
    dtype: Optional[Any] = None,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> None:
    """Writes `params` (per-layer or scanned) as a HF `T5GemmaForConditionalGeneration` directory, atomically."""
    config, params = _untie(per_layer(config), layout.map_stacks(dict(params), layout.unstack_layers))
    hf = config_to_hf(config)
    entries = T5GEMMA_NAMES.entries(expected_shapes(config))
    flat = check_params(params, entries)
    hf["dtype"] = dtype_name(params, dtype)
    write_hf_directory(path, hf, hf_tensors(entries, flat, dtype), max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def classifier_shapes(encoder: TransformerConfig, num_classes: int) -> dict:
    """Expected shapes of the classifier params (`EncoderClassifier` with the paper's linear head)."""
    shapes = expected_shapes(encoder.replace(causal=False))
    shapes["head/kernel"] = (encoder.embed_dim, num_classes)
    shapes["head/bias"] = (num_classes,)
    return shapes


def classifier_config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> TransformerConfig:
    """The encoder config of a T5Gemma encoder-only classifier config.json."""
    if hf.get("is_encoder_decoder", True):
        raise CheckpointError(
            f"{source}: is_encoder_decoder is true; only the encoder-only classifier "
            f"(T5GemmaForSequenceClassification(config, is_encoder_decoder=False)) maps to EncoderClassifier."
        )
    return _encoder_config(hf, source)


def import_t5gemma_classifier(path: Union[str, os.PathLike]) -> tuple[TransformerConfig, dict]:
    """(encoder TransformerConfig, numpy params {"embedder", "encoder", "head"}) of a HF
    `T5GemmaForSequenceClassification(is_encoder_decoder=False)` directory. Classes: `head/bias` length."""
    path = os.fspath(path)
    source = os.path.join(path, "config.json")
    hf = read_hf_config(path)
    encoder = classifier_config_from_hf(hf, source)
    num_classes = len(hf.get("id2label") or {}) or int(hf.get("num_labels", 2))
    entries = T5GEMMA_CLASSIFIER_NAMES.entries(classifier_shapes(encoder, num_classes))
    with SafetensorsReader(path) as reader:
        params = read_params(reader, entries, source=source)
    return encoder.replace(param_dtype=params_dtype(params)), params


def export_t5gemma_classifier(
    path: Union[str, os.PathLike],
    encoder: TransformerConfig,
    params: Mapping[str, Any],
    dtype: Optional[Any] = None,
    *,
    overwrite: bool = False,
) -> None:
    """Writes classifier params {"embedder", "encoder", "head"} as a HF
    `T5GemmaForSequenceClassification(is_encoder_decoder=False)` directory, atomically."""
    params = layout.map_stacks(dict(params), layout.unstack_layers)
    flat_head = flatten({"head": params.get("head", {})})
    if "head/bias" not in flat_head:
        raise CheckpointError("classifier params lack head/bias (expected {'embedder', 'encoder', 'head': {kernel, bias}}).")
    num_classes = int(flat_head["head/bias"].shape[0])
    encoder = encoder.replace(causal=False, scan_layers=False)
    entries = T5GEMMA_CLASSIFIER_NAMES.entries(classifier_shapes(encoder, num_classes))
    flat = check_params(params, entries, "classifier params")
    decoder = encoder.replace(causal=True, cross_attention=True, cross_kv_dim=encoder.embed_dim)
    hf = config_to_hf(EncoderDecoderConfig(encoder=encoder, decoder=decoder), "T5GemmaForSequenceClassification")
    hf.update(
        is_encoder_decoder=False,
        id2label={str(i): f"LABEL_{i}" for i in range(num_classes)},
        label2id={f"LABEL_{i}": i for i in range(num_classes)},
        dtype=dtype_name(params, dtype),
    )
    write_hf_directory(path, hf, hf_tensors(entries, flat, dtype), overwrite=overwrite)

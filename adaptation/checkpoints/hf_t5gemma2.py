"""Hugging Face T5Gemma 2 directories (`T5Gemma2ForConditionalGeneration`, text path) <-> our `EncoderDecoder`.

T5Gemma 2 is our encoder-decoder with Gemma 3 blocks, `merged_attention=True` in the decoder and
`tie_all_embeddings=True`; its encoder reads the sliding window as a width
(`bidirectional_window="width"`: W keys around the query, transformers' `sliding_window_mask_function`
with `is_causal=False`). Name map (ours -> the names `save_pretrained` writes; `{i}` the layer):
  embedder/embedding                model.encoder.embed_tokens.weight      (V, D); the decoder table
                                    `model.decoder.embed_tokens.weight` and the head `lm_head.out_proj.weight`
                                    are tied to it (accepted when stored, must be equal)
  encoder/final_norm/scale          model.encoder.norm.weight
  decoder/final_norm/scale          model.decoder.norm.weight
  {stack}/layers_{i}/ pre_attention_norm/scale     model.{stack}.layers.{i}.pre_self_attn_layernorm.weight
                      attn/{q,k,v,o}               self_attn.{q,k,v,o}_proj.weight   (IN_PROJ / OUT_PROJ)
                      attn/query_norm, key_norm    self_attn.{q,k}_norm.weight
                      post_attention_norm/scale    post_self_attn_layernorm.weight
                      pre_ffw_norm, post_ffw_norm  pre_/post_feedforward_layernorm.weight
                      mlp/{gate,up,down}           mlp.{gate,up,down}_proj.weight
The decoder's `self_attn` is transformers' `T5Gemma2MergedAttention`: one q/k/v/o and QK-norm for
the decoder tokens and the encoder outputs together (our decoder `attn` with `merged_attention`):
decoder q/k get QK-norm and RoPE, encoder keys get the k-norm and no RoPE, keys/values are
[decoder; encoder], the mask is causal (sliding on local layers) over the decoder part and the
encoder padding over the encoder part. The in-memory names `model.encoder.text_model.*` are read too.

Not part of the text path, skipped on import with a warning: the vision tower
(`model.encoder.vision_tower.*`), the multimodal projector (`model.encoder.multi_modal_projector.*`)
and `eoi_embedding`, the input vector that replaces the embedding of the end-of-image token
(`eoi_token_index`, 256 000; our model embeds that token with its table row). On export,
`eoi_embedding` is written as that row times sqrt(D) (so transformers embeds the token as we do) and
`vision_config` is a small placeholder SigLIP config whose (unwritten) weights transformers
initializes at random: the text path does not read them.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Optional, Union

import numpy as np

from adaptation.checkpoints.common import (
    IDENTITY,
    CheckpointError,
    NameMap,
    expected_shapes,
    per_layer,
)
from adaptation.checkpoints.hf_common import (
    GEMMA3_STYLE,
    SPECIAL_IDS,
    check_params,
    dtype_name,
    hf_tensors,
    params_dtype,
    read_params,
    stack_config_from_hf,
    stack_config_to_hf,
    stacks_of,
)
from adaptation.checkpoints.hf_t5gemma import T5GEMMA_BLOCK
from adaptation.checkpoints.safetensors_io import (
    DEFAULT_SHARD_BYTES,
    SafetensorsReader,
    read_hf_config,
    write_hf_directory,
)
from adaptation.models import layout
from adaptation.models.config import AttentionKind, EncoderDecoderConfig, TransformerConfig

log = logging.getLogger(__name__)

ARCHITECTURE = "T5Gemma2ForConditionalGeneration"
MODEL_TYPE = "t5gemma2"
EOI_TOKEN_INDEX = 256_000

T5GEMMA2_BLOCK = {
    **{k: v for k, v in T5GEMMA_BLOCK.items() if not k.startswith(("cross_attn/", "pre_cross", "post_cross"))},
    "attn/query_norm/scale": ("self_attn.q_norm.weight", IDENTITY),
    "attn/key_norm/scale": ("self_attn.k_norm.weight", IDENTITY),
}


def _names(encoder_prefix: str) -> NameMap:
    return NameMap(
        top={
            "embedder/embedding": (f"{encoder_prefix}embed_tokens.weight", IDENTITY),
            "encoder/final_norm/scale": (f"{encoder_prefix}norm.weight", IDENTITY),
            "decoder/final_norm/scale": ("model.decoder.norm.weight", IDENTITY),
        },
        stacks={"encoder": encoder_prefix + "layers.{i}.", "decoder": "model.decoder.layers.{i}."},
        block=T5GEMMA2_BLOCK,
    )


# The names save_pretrained writes, then the in-memory module names.
T5GEMMA2_NAMES = _names("model.encoder.")
T5GEMMA2_TEXT_MODEL_NAMES = _names("model.encoder.text_model.")
SKIPPED = {
    "model.encoder.vision_tower.": "vision tower",
    "model.encoder.multi_modal_projector.": "multimodal projector",
}

# A small SigLIP config written as the (weightless) vision tower of exported directories.
PLACEHOLDER_VISION_CONFIG = {
    "model_type": "siglip_vision_model",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 16,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}
PLACEHOLDER_MM_TOKENS = 4  # (16 / 4)^2 patches pooled to 2 x 2


# ----------------------------------------------------------------------------------------------
# config.json


def _object(hf: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = hf.get(key)
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{source}: T5Gemma2 config has no {key!r} object.")
    return value


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> EncoderDecoderConfig:
    """EncoderDecoderConfig (merged attention, tied embeddings) of a T5Gemma2 config.json (text path)."""
    if hf.get("tie_word_embeddings") is False:
        raise CheckpointError(
            f"{source}: tie_word_embeddings=false is not supported (T5Gemma 2 ties encoder, decoder and output tables)."
        )
    enc_hf = _object(hf, "encoder", source)
    text = _object(enc_hf, "text_config", f"{source} (encoder)")
    dec_hf = _object(hf, "decoder", source)
    enc_width, dec_width = text.get("hidden_size"), dec_hf.get("hidden_size")
    if enc_width != dec_width:
        raise CheckpointError(
            f"{source}: merged attention needs equal encoder and decoder widths, but encoder.text_config.hidden_size is "
            f"{enc_width} and decoder.hidden_size is {dec_width}."
        )
    if enc_hf.get("vision_config") is not None:
        log.warning("%s: T5Gemma2: loading the text path only; the vision tower and the multimodal projector are skipped.",
                    source)
    encoder = stack_config_from_hf(text, f"{source} (encoder.text_config)", GEMMA3_STYLE, causal=False,
                                   bidirectional_window="width")
    decoder = stack_config_from_hf(dec_hf, f"{source} (decoder)", GEMMA3_STYLE, causal=True, merged_attention=True,
                                   cross_kv_dim=encoder.embed_dim)
    if encoder.vocab_size != decoder.vocab_size:
        raise CheckpointError(
            f"{source}: encoder.text_config.vocab_size {encoder.vocab_size} differs from decoder.vocab_size "
            f"{decoder.vocab_size}; T5Gemma 2 ties the tables."
        )
    try:
        return EncoderDecoderConfig(encoder=encoder, decoder=decoder, tie_all_embeddings=True)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _has_local_layers(cfg: TransformerConfig) -> bool:
    return cfg.sliding_window is not None and AttentionKind.LOCAL in cfg.layer_kinds


def config_to_hf(config: EncoderDecoderConfig, vision_config: Optional[Mapping[str, Any]] = None) -> dict:
    """T5Gemma2 config.json of an EncoderDecoderConfig; a CheckpointError for what T5Gemma2 cannot express."""
    enc, dec = config.encoder, config.decoder
    problems = []
    if not dec.merged_attention:
        problems.append("the decoder needs merged attention (merged_attention=True), not cross-attention")
    if not config.tie_all_embeddings:
        problems.append("the embeddings must be tied (tie_all_embeddings=True)")
    if enc.embed_dim != dec.embed_dim:
        problems.append(f"merged attention needs equal widths (encoder {enc.embed_dim}, decoder {dec.embed_dim})")
    if _has_local_layers(enc) and enc.bidirectional_window != "width":
        problems.append(
            f"its encoder reads the sliding window as a width (bidirectional_window='width'); this encoder uses "
            f"{enc.bidirectional_window!r} (set config.encoder.bidirectional_window='width')"
        )
    if problems:
        raise CheckpointError(f"T5Gemma2ForConditionalGeneration cannot express this config: {'; '.join(problems)}.")
    text = {"model_type": "t5gemma2_text", "dropout_rate": 0.0, **stack_config_to_hf(enc.replace(causal=True), "T5Gemma2 encoder", GEMMA3_STYLE)}
    plain_dec = dec.replace(merged_attention=False, cross_kv_dim=None)
    decoder = {"model_type": "t5gemma2_decoder", "dropout_rate": 0.0, **stack_config_to_hf(plain_dec, "T5Gemma2 decoder", GEMMA3_STYLE)}
    vision = dict(vision_config or PLACEHOLDER_VISION_CONFIG)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "encoder": {
            "model_type": "t5gemma2_encoder",
            "text_config": text,
            "vision_config": vision,
            "mm_tokens_per_image": PLACEHOLDER_MM_TOKENS if vision_config is None else vision.get("mm_tokens_per_image", 256),
            "eoi_token_index": EOI_TOKEN_INDEX,
            "tie_word_embeddings": True,
        },
        "decoder": decoder,
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
        "vocab_size": dec.vocab_size,
        "dropout_rate": 0.0,
        "attention_dropout": 0.0,
        "classifier_dropout_rate": 0.0,
        "eoi_token_index": EOI_TOKEN_INDEX,
        **SPECIAL_IDS,
    }


# ----------------------------------------------------------------------------------------------
# Import / export.


def _eoi_row(table: np.ndarray, eoi: int) -> Optional[np.ndarray]:
    """What our model feeds the encoder/decoder for token `eoi`: its row times sqrt(D); None when out of range."""
    if not 0 <= eoi < table.shape[0]:
        return None
    return (table[eoi].astype(np.float32) * np.float32(math.sqrt(table.shape[1]))).astype(table.dtype)


def import_t5gemma2(path: Union[str, os.PathLike]) -> tuple[EncoderDecoderConfig, dict]:
    """(EncoderDecoderConfig, numpy per-layer params) of a HF `T5Gemma2ForConditionalGeneration` directory.

    Loads the text path (tied table, encoder, merged-attention decoder); the vision tower, the
    multimodal projector and `eoi_embedding` are skipped with a warning (see the module docstring).
    """
    path = os.fspath(path)
    source = os.path.join(path, "config.json")
    hf = read_hf_config(path)
    config = config_from_hf(hf, source)
    shapes = expected_shapes(config)
    layers = {"encoder": config.encoder.num_layers, "decoder": config.decoder.num_layers}
    with SafetensorsReader(path) as reader:
        names = T5GEMMA2_TEXT_MODEL_NAMES if T5GEMMA2_TEXT_MODEL_NAMES.top["embedder/embedding"][0] in reader else T5GEMMA2_NAMES
        table_name = names.top["embedder/embedding"][0]
        tied = {"model.decoder.embed_tokens.weight": table_name, "lm_head.out_proj.weight": table_name}
        prefix = table_name[: -len("embed_tokens.weight")]
        eoi_names = [n for n in (f"{prefix}embed_tokens.eoi_embedding", "model.decoder.embed_tokens.eoi_embedding") if n in reader]
        skip = {**SKIPPED, **{n: "end-of-image embedding" for n in eoi_names}}
        params = read_params(reader, names.entries(shapes), tied=tied, source=source,
                             stacks=stacks_of(names, layers), skip=skip)
        eoi = int((hf.get("encoder") or {}).get("eoi_token_index") or hf.get("eoi_token_index") or EOI_TOKEN_INDEX)
        ours = _eoi_row(params["embedder"]["embedding"], eoi)
        for name in eoi_names:
            stored = reader.get(name)
            if ours is not None and not np.allclose(stored.astype(np.float32), ours.astype(np.float32), atol=1e-6):
                log.warning(
                    "%s: %s differs from the embedding of token %d (its row times sqrt(d_model)); it is skipped, so this "
                    "model embeds the end-of-image token with its table row.", path, name, eoi,
                )
    dtype = params_dtype(params)
    return config.replace(encoder=config.encoder.replace(param_dtype=dtype),
                          decoder=config.decoder.replace(param_dtype=dtype)), params


def export_t5gemma2(
    path: Union[str, os.PathLike],
    config: EncoderDecoderConfig,
    params: Mapping[str, Any],
    dtype: Optional[Any] = None,
    *,
    vision_config: Optional[Mapping[str, Any]] = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> None:
    """Writes `params` (per-layer or scanned) as a HF `T5Gemma2ForConditionalGeneration` directory, atomically.

    The text path is written; `vision_config` (default: a small placeholder SigLIP config) names a
    vision tower whose weights are not written (transformers initializes them at random).
    """
    config = per_layer(config)
    params = layout.map_stacks(dict(params), layout.unstack_layers)
    hf = config_to_hf(config, vision_config)
    entries = T5GEMMA2_NAMES.entries(expected_shapes(config))
    flat = check_params(params, entries)
    hf["dtype"] = dtype_name(params, dtype)
    table = np.asarray(flat["embedder/embedding"])
    if dtype is not None:
        from adaptation.checkpoints.common import dtype_of

        table = table.astype(dtype_of(dtype))
    eoi = _eoi_row(table, EOI_TOKEN_INDEX)
    eoi = np.zeros((table.shape[1],), table.dtype) if eoi is None else eoi
    log.warning("%s: T5Gemma2 export writes the text path; the vision tower in config.json is a placeholder without "
                "weights (transformers initializes it at random).", os.fspath(path))

    def tensors():
        yield from hf_tensors(entries, flat, dtype)
        yield "model.encoder.embed_tokens.eoi_embedding", eoi

    write_hf_directory(path, hf, tensors(), max_shard_bytes=max_shard_bytes, overwrite=overwrite)


__all__ = ["T5GEMMA2_NAMES", "config_from_hf", "config_to_hf", "export_t5gemma2", "import_t5gemma2"]

"""Hugging Face decoder-only Gemma directories (`Gemma2ForCausalLM`) <-> our `DecoderOnlyLM` params.

Name map (ours -> HF; `{i}` the layer), hooks from `checkpoints.common`:
  embedder/embedding              model.embed_tokens.weight            (V, D)        identity
  decoder/final_norm/scale        model.norm.weight                    (D,)          identity
  decoder/layers_{i}/ pre_attention_norm/scale   model.layers.{i}.input_layernorm.weight
                      attn/q [D,N,H]             self_attn.q_proj.weight (N*H, D)   IN_PROJ
                      attn/k, attn/v [D,K,H]     self_attn.{k,v}_proj.weight (K*H, D)  IN_PROJ
                      attn/o [N,H,D]             self_attn.o_proj.weight (D, N*H)   OUT_PROJ
                      attn/query_norm, key_norm  self_attn.{q,k}_norm.weight (Gemma 3 QK-norm)
                      post_attention_norm/scale  post_attention_layernorm.weight
                      pre_ffw_norm/scale         pre_feedforward_layernorm.weight
                      post_ffw_norm/scale        post_feedforward_layernorm.weight
                      mlp/gate, mlp/up [D,F]     mlp.{gate,up}_proj.weight (F, D)   IN_PROJ
                      mlp/down [F,D]             mlp.down_proj.weight (D, F)        OUT_PROJ
Norm scales are `w` in `(1 + w)` on both sides. The output head is tied to the embedding; an
`lm_head.weight` stored beside it must equal it.

A family is an `HFDecoderFamily` entry in `FAMILIES` (model_type -> names, config conversion);
Gemma 3 (`Gemma3ForCausalLM`) is one more entry reusing `GEMMA_DECODER_BLOCK` (which already names
the QK-norm scales) with its own config functions.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Union

from adaptation.checkpoints.common import (
    IDENTITY,
    IN_PROJ,
    OUT_PROJ,
    CheckpointError,
    NameMap,
    expected_shapes,
    per_layer,
)
from adaptation.checkpoints.hf_common import (
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
from adaptation.models.config import TransformerConfig

# Our block path -> (HF name inside a decoder layer, hook). Shared by every decoder-only Gemma.
GEMMA_DECODER_BLOCK = {
    "pre_attention_norm/scale": ("input_layernorm.weight", IDENTITY),
    "attn/q": ("self_attn.q_proj.weight", IN_PROJ),
    "attn/k": ("self_attn.k_proj.weight", IN_PROJ),
    "attn/v": ("self_attn.v_proj.weight", IN_PROJ),
    "attn/o": ("self_attn.o_proj.weight", OUT_PROJ),
    "attn/query_norm/scale": ("self_attn.q_norm.weight", IDENTITY),
    "attn/key_norm/scale": ("self_attn.k_norm.weight", IDENTITY),
    "post_attention_norm/scale": ("post_attention_layernorm.weight", IDENTITY),
    "pre_ffw_norm/scale": ("pre_feedforward_layernorm.weight", IDENTITY),
    "post_ffw_norm/scale": ("post_feedforward_layernorm.weight", IDENTITY),
    "mlp/gate": ("mlp.gate_proj.weight", IN_PROJ),
    "mlp/up": ("mlp.up_proj.weight", IN_PROJ),
    "mlp/down": ("mlp.down_proj.weight", OUT_PROJ),
}

GEMMA_CAUSAL_LM_NAMES = NameMap(
    top={
        "embedder/embedding": ("model.embed_tokens.weight", IDENTITY),
        "decoder/final_norm/scale": ("model.norm.weight", IDENTITY),
    },
    stacks={"decoder": "model.layers.{i}."},
    block=GEMMA_DECODER_BLOCK,
)


@dataclasses.dataclass(frozen=True)
class HFDecoderFamily:
    """One Hugging Face decoder-only family: names, head tying, config.json conversion."""

    model_type: str
    architecture: str
    names: NameMap
    config_from_hf: Callable[[Mapping[str, Any], str], TransformerConfig]
    config_to_hf: Callable[[TransformerConfig], dict]
    tied_head: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"lm_head.weight": "model.embed_tokens.weight"}
    )


def _gemma2_config_from_hf(hf: Mapping[str, Any], source: str) -> TransformerConfig:
    if hf.get("tie_word_embeddings") is False:
        raise CheckpointError(f"{source}: tie_word_embeddings=false is not supported (Gemma ties the output head).")
    return stack_config_from_hf(hf, source)


def _gemma2_config_to_hf(cfg: TransformerConfig) -> dict:
    if not cfg.causal or cfg.cross_attention:
        raise CheckpointError("Gemma2ForCausalLM needs a causal decoder-only config.")
    return {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", **stack_config_to_hf(cfg, "Gemma2ForCausalLM")}


GEMMA2 = HFDecoderFamily("gemma2", "Gemma2ForCausalLM", GEMMA_CAUSAL_LM_NAMES, _gemma2_config_from_hf, _gemma2_config_to_hf)

# model_type -> family. Gemma 3 goes here as another entry.
FAMILIES: dict[str, HFDecoderFamily] = {GEMMA2.model_type: GEMMA2}


def family_of(hf_config: Mapping[str, Any], path: str) -> HFDecoderFamily:
    """The decoder-only family of a config.json (by model_type); a CheckpointError when unknown."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{os.path.join(path, 'config.json')}: model_type {model_type!r} is not a supported decoder-only family "
            f"({sorted(FAMILIES)})."
        )
    return FAMILIES[model_type]


def import_decoder(path: Union[str, os.PathLike], family: Optional[HFDecoderFamily] = None) -> tuple[TransformerConfig, dict]:
    """(config, numpy per-layer params) of a Hugging Face decoder-only directory, in the stored dtype."""
    path = os.fspath(path)
    hf = read_hf_config(path)
    family = family or family_of(hf, path)
    source = os.path.join(path, "config.json")
    config = family.config_from_hf(hf, source)
    entries = family.names.entries(expected_shapes(config))
    with SafetensorsReader(path) as reader:
        params = read_params(reader, entries, tied=family.tied_head, source=source)
    return config.replace(param_dtype=params_dtype(params)), params


def export_decoder(
    path: Union[str, os.PathLike],
    config: TransformerConfig,
    params: Mapping[str, Any],
    family: HFDecoderFamily,
    dtype: Optional[Any] = None,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> None:
    """Writes a Hugging Face decoder-only directory (config.json + safetensors) atomically."""
    params = layout.map_stacks(dict(params), layout.unstack_layers)
    hf = family.config_to_hf(config)
    entries = family.names.entries(expected_shapes(per_layer(config)))
    flat = check_params(params, entries)
    hf["dtype"] = dtype_name(params, dtype)
    write_hf_directory(path, hf, hf_tensors(entries, flat, dtype), max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def import_gemma2(path: Union[str, os.PathLike]) -> tuple[TransformerConfig, dict]:
    """(TransformerConfig, numpy per-layer params) of a Hugging Face `Gemma2ForCausalLM` directory."""
    return import_decoder(path, GEMMA2)


def export_gemma2(
    path: Union[str, os.PathLike],
    config: TransformerConfig,
    params: Mapping[str, Any],
    dtype: Optional[Any] = None,
    **kw,
) -> None:
    """Writes `params` (per-layer or scanned) as a Hugging Face `Gemma2ForCausalLM` directory."""
    export_decoder(path, config, params, GEMMA2, dtype, **kw)


__all__ = ["FAMILIES", "GEMMA2", "HFDecoderFamily", "export_gemma2", "import_gemma2"]

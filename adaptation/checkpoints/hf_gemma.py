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

A family is an `HFDecoderFamily` entry in `FAMILIES` (model_type -> names, config conversion):
- `gemma2` (`Gemma2ForCausalLM`);
- `gemma3_text` (`Gemma3ForCausalLM`): the same names, QK-norm scales included, config.json in the
  Gemma 3 style (RoPE per layer type, linear scaling on global layers; `hf_common.GEMMA3_STYLE`);
- `gemma3` (`Gemma3ForConditionalGeneration`, multimodal; import only): the text model's tensors are
  `language_model.model.{embed_tokens,layers.{i},norm}.*` (the released files, and what transformers
  5.23 `save_pretrained` writes; head `language_model.lm_head.weight` when stored) or the in-memory
  names `model.language_model.*` (head `lm_head.weight`); the config is `text_config`. The vision
  tower (`vision_tower.*`) and the multimodal projector (`multi_modal_projector.*`) are skipped, with
  a warning.
"""

from __future__ import annotations

import dataclasses
import logging
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
    GEMMA3_STYLE,
    check_params,
    dtype_name,
    hf_tensors,
    params_dtype,
    read_params,
    stack_config_from_hf,
    stack_config_to_hf,
    stacks_of,
)
from adaptation.checkpoints.safetensors_io import (
    DEFAULT_SHARD_BYTES,
    SafetensorsReader,
    read_hf_config,
    write_hf_directory,
)
from adaptation.models import layout
from adaptation.models.config import TransformerConfig

log = logging.getLogger(__name__)

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
    alternatives: tuple[tuple[NameMap, Mapping[str, str]], ...] = ()
    skip: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def names_for(self, reader: SafetensorsReader) -> tuple[NameMap, Mapping[str, str]]:
        """(names, tied head) of the naming scheme a checkpoint uses: the first whose embedding is stored."""
        for names, tied in ((self.names, self.tied_head), *self.alternatives):
            if names.top["embedder/embedding"][0] in reader:
                return names, tied
        return self.names, self.tied_head


def _gemma2_config_from_hf(hf: Mapping[str, Any], source: str) -> TransformerConfig:
    if hf.get("tie_word_embeddings") is False:
        raise CheckpointError(f"{source}: tie_word_embeddings=false is not supported (Gemma ties the output head).")
    return stack_config_from_hf(hf, source)


def _gemma2_config_to_hf(cfg: TransformerConfig) -> dict:
    if not cfg.causal or cfg.cross_attention:
        raise CheckpointError("Gemma2ForCausalLM needs a causal decoder-only config.")
    return {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", **stack_config_to_hf(cfg, "Gemma2ForCausalLM")}


GEMMA2 = HFDecoderFamily("gemma2", "Gemma2ForCausalLM", GEMMA_CAUSAL_LM_NAMES, _gemma2_config_from_hf, _gemma2_config_to_hf)

def _gemma3_config_from_hf(hf: Mapping[str, Any], source: str) -> TransformerConfig:
    if hf.get("tie_word_embeddings") is False:
        raise CheckpointError(f"{source}: tie_word_embeddings=false is not supported (Gemma ties the output head).")
    return stack_config_from_hf(hf, source, GEMMA3_STYLE)


def _gemma3_config_to_hf(cfg: TransformerConfig) -> dict:
    if not cfg.causal or cfg.cross_attention:
        raise CheckpointError("Gemma3ForCausalLM needs a causal decoder-only config.")
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "use_bidirectional_attention": False,
        **stack_config_to_hf(cfg, "Gemma3ForCausalLM", GEMMA3_STYLE),
    }


GEMMA3 = HFDecoderFamily("gemma3_text", "Gemma3ForCausalLM", GEMMA_CAUSAL_LM_NAMES, _gemma3_config_from_hf, _gemma3_config_to_hf)


def _language_model_names(prefix: str) -> NameMap:
    return NameMap(
        top={
            "embedder/embedding": (f"{prefix}embed_tokens.weight", IDENTITY),
            "decoder/final_norm/scale": (f"{prefix}norm.weight", IDENTITY),
        },
        stacks={"decoder": prefix + "layers.{i}."},
        block=GEMMA_DECODER_BLOCK,
    )


def _gemma3_multimodal_config_from_hf(hf: Mapping[str, Any], source: str) -> TransformerConfig:
    text = hf.get("text_config")
    if not isinstance(text, Mapping):
        raise CheckpointError(f"{source}: Gemma3ForConditionalGeneration config has no 'text_config' object.")
    if "vision_config" in hf:
        log.warning(
            "%s: Gemma3ForConditionalGeneration: loading the text model only; the vision tower and the multimodal "
            "projector are skipped.", source,
        )
    return _gemma3_config_from_hf({"tie_word_embeddings": hf.get("tie_word_embeddings"), **text},
                                  f"{source} (text_config)")


def _gemma3_multimodal_config_to_hf(cfg: TransformerConfig) -> dict:
    raise CheckpointError(
        "Gemma3ForConditionalGeneration (multimodal) is import-only: the text model is written as Gemma3ForCausalLM."
    )


GEMMA3_MULTIMODAL = HFDecoderFamily(
    "gemma3",
    "Gemma3ForConditionalGeneration",
    _language_model_names("language_model.model."),
    _gemma3_multimodal_config_from_hf,
    _gemma3_multimodal_config_to_hf,
    tied_head={"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"},
    alternatives=(
        (_language_model_names("model.language_model."), {"lm_head.weight": "model.language_model.embed_tokens.weight"}),
    ),
    skip={
        "model.vision_tower.": "vision tower",
        "model.multi_modal_projector.": "multimodal projector",
        "vision_tower.": "vision tower",
        "multi_modal_projector.": "multimodal projector",
    },
)

# model_type -> family.
FAMILIES: dict[str, HFDecoderFamily] = {f.model_type: f for f in (GEMMA2, GEMMA3, GEMMA3_MULTIMODAL)}


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
    shapes = expected_shapes(config)
    with SafetensorsReader(path) as reader:
        names, tied = family.names_for(reader)
        params = read_params(reader, names.entries(shapes), tied=tied, source=source,
                             stacks=stacks_of(names, {"decoder": config.num_layers}), skip=family.skip)
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


def import_gemma3(path: Union[str, os.PathLike]) -> tuple[TransformerConfig, dict]:
    """(TransformerConfig, numpy per-layer params) of a HF `Gemma3ForCausalLM` directory, or the text model
    of a `Gemma3ForConditionalGeneration` directory (vision tower skipped)."""
    hf = read_hf_config(path)
    family = GEMMA3_MULTIMODAL if hf.get("model_type") == GEMMA3_MULTIMODAL.model_type else GEMMA3
    return import_decoder(path, family)


def export_gemma3(
    path: Union[str, os.PathLike],
    config: TransformerConfig,
    params: Mapping[str, Any],
    dtype: Optional[Any] = None,
    **kw,
) -> None:
    """Writes `params` (per-layer or scanned) as a Hugging Face `Gemma3ForCausalLM` directory."""
    export_decoder(path, config, params, GEMMA3, dtype, **kw)


__all__ = [
    "FAMILIES",
    "GEMMA2",
    "GEMMA3",
    "GEMMA3_MULTIMODAL",
    "HFDecoderFamily",
    "export_gemma2",
    "export_gemma3",
    "import_gemma2",
    "import_gemma3",
]

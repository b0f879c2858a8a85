"""`load_checkpoint`: one entry point for every supported checkpoint format.

Detection, in order:
  1. `config.json`: a Hugging Face directory, by `architectures` (else `model_type`):
     Gemma2ForCausalLM / gemma2, Gemma3ForCausalLM / gemma3_text, Gemma3ForConditionalGeneration /
     gemma3 (text model; vision tower skipped) (the families of `hf_gemma.FAMILIES`),
     T5GemmaForConditionalGeneration / t5gemma, T5GemmaForSequenceClassification (encoder-only),
     T5Gemma2ForConditionalGeneration / t5gemma2 (text path);
  2. `model_config.json`: our format (`params/`) or a trainer run (`checkpoints/<step>/params`, latest);
  3. an orbax checkpoint without either: an official Gemma Flax checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from adaptation.checkpoints import hf_gemma, hf_t5gemma, hf_t5gemma2
from adaptation.checkpoints.common import (
    AnyConfig,
    CheckpointError,
    cast_tree,
    dtype_of,
    expected_shapes,
    flatten,
    model_for,
    require_dir,
)
from adaptation.checkpoints.gemma_flax import import_gemma_flax, is_orbax_directory, read_gemma_flax_config
from adaptation.checkpoints.native import MODEL_CONFIG, load_model, read_model_config, to_layout
from adaptation.checkpoints.safetensors_io import CONFIG, read_hf_config
from adaptation.models.config import EncoderDecoderConfig, TransformerConfig

CLASSIFIER = "T5GemmaForSequenceClassification"


def _decoder_entry(family: hf_gemma.HFDecoderFamily):
    return (lambda p: hf_gemma.import_decoder(p, family), family.config_from_hf)


# HF architecture (or model_type) -> (importer(path) -> (config, params), config_from_hf(hf, source)).
HF_ARCHITECTURES = {
    "T5GemmaForConditionalGeneration": (hf_t5gemma.import_t5gemma, hf_t5gemma.config_from_hf),
    CLASSIFIER: (hf_t5gemma.import_t5gemma_classifier, hf_t5gemma.classifier_config_from_hf),
    hf_t5gemma2.ARCHITECTURE: (hf_t5gemma2.import_t5gemma2, hf_t5gemma2.config_from_hf),
    **{family.architecture: _decoder_entry(family) for family in hf_gemma.FAMILIES.values()},
}
HF_MODEL_TYPES = {
    "t5gemma": HF_ARCHITECTURES["T5GemmaForConditionalGeneration"],
    hf_t5gemma2.MODEL_TYPE: HF_ARCHITECTURES[hf_t5gemma2.ARCHITECTURE],
    **{t: _decoder_entry(family) for t, family in hf_gemma.FAMILIES.items()},
}


def detect_format(path: Union[str, os.PathLike]) -> str:
    """"hf", "native" (ours or a trainer run) or "gemma_flax"; a CheckpointError otherwise."""
    path = require_dir(path)
    if os.path.isfile(os.path.join(path, CONFIG)):
        return "hf"
    if os.path.isfile(os.path.join(path, MODEL_CONFIG)):
        return "native"
    if is_orbax_directory(path):
        return "gemma_flax"
    raise CheckpointError(
        f"{path!r} is not a recognized checkpoint: expected {CONFIG} (Hugging Face), {MODEL_CONFIG} (ours or a "
        f"trainer run), or an orbax checkpoint (official Gemma)."
    )


def hf_architecture(path: str) -> str:
    """The HF architecture (or model_type) that decides the importer of a directory."""
    hf = read_hf_config(path)
    for arch in hf.get("architectures") or []:
        if arch in HF_ARCHITECTURES:
            return arch
    if hf.get("model_type") in HF_MODEL_TYPES:
        return hf["model_type"]
    raise CheckpointError(
        f"{os.path.join(path, CONFIG)}: architectures {hf.get('architectures')} / model_type {hf.get('model_type')!r} "
        f"are not supported; supported: {sorted(HF_ARCHITECTURES)}."
    )


def _check_override(config: AnyConfig, params: dict, path: str) -> None:
    """An explicit config must describe the same params as the checkpoint."""
    expected = expected_shapes(config)
    found = {k: tuple(v.shape) for k, v in flatten(params).items()}
    if expected != found:
        diff = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
        name = diff[0]
        raise CheckpointError(
            f"{path}: the given config contradicts the checkpoint, e.g. parameter {name!r}: config expects "
            f"{expected.get(name)}, checkpoint has {found.get(name)} ({len(diff)} differences)."
        )


def read_checkpoint(
    path: Union[str, os.PathLike], *, config: Union[None, str, AnyConfig] = None
) -> tuple[AnyConfig, dict]:
    """(config, numpy per-layer params in the stored dtype) of any supported checkpoint.

    `config`: for official Gemma checkpoints a preset name or a `TransformerConfig` (what the
    shapes cannot tell); for the other formats a config replacing the stored one, with the same
    parameter shapes (e.g. another `scan_layers`, dropout or dtype).
    For a T5Gemma classifier directory the config is the encoder's `TransformerConfig` and the
    params are `EncoderClassifier` params.
    """
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "gemma_flax":
        return import_gemma_flax(path, config)
    if isinstance(config, str):
        raise CheckpointError(f"config={config!r}: a preset name is only used for official Gemma checkpoints.")
    if fmt == "native":
        stored, params = load_model(path)
        from adaptation.models import layout

        params = layout.map_stacks(params, layout.unstack_layers)
    else:
        arch = hf_architecture(path)
        stored, params = (HF_ARCHITECTURES.get(arch) or HF_MODEL_TYPES[arch])[0](path)
    if config is None:
        return stored, params
    if os.path.isfile(os.path.join(path, CONFIG)) and hf_architecture(path) == CLASSIFIER:
        return config, params
    _check_override(config, params, path)
    return config, params


def read_config(path: Union[str, os.PathLike], *, config: Union[None, str, AnyConfig] = None) -> AnyConfig:
    """The config `read_checkpoint` would return, reading no tensor (for dry runs)."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "gemma_flax":
        return read_gemma_flax_config(path, config)
    if config is not None and not isinstance(config, str):
        return config
    if fmt == "native":
        return read_model_config(path)
    arch = hf_architecture(path)
    return (HF_ARCHITECTURES.get(arch) or HF_MODEL_TYPES[arch])[1](read_hf_config(path), os.path.join(path, CONFIG))


def _with_dtype(config: AnyConfig, dtype: Optional[Any]) -> AnyConfig:
    if dtype is None:
        return config
    name = dtype_of(dtype).name
    if isinstance(config, EncoderDecoderConfig):
        return config.replace(encoder=config.encoder.replace(param_dtype=name),
                              decoder=config.decoder.replace(param_dtype=name))
    return config.replace(param_dtype=name)


def load_checkpoint(
    path: Union[str, os.PathLike],
    *,
    config: Union[None, str, AnyConfig] = None,
    dtype: Optional[Any] = None,
) -> tuple[Any, dict]:
    """Loads any supported checkpoint as (Flax module, params).

    Args:
      path: a Hugging Face directory (Gemma 2, Gemma 3, T5Gemma, T5Gemma classifier, T5Gemma 2), our model directory,
        a trainer run directory (latest step), or an official Gemma Flax/Orbax checkpoint.
      config: see `read_checkpoint` (a preset name or config where the checkpoint cannot tell,
        or a replacement config with the same shapes).
      dtype: cast the params to this dtype ("bfloat16", "float32") and set the config's
        `param_dtype`; None keeps the stored dtype. The compute dtype stays the config's.

    Returns:
      (`DecoderOnlyLM` | `EncoderDecoder` | `EncoderOnly` | `EncoderClassifier`, numpy params in the
      layout the config's `scan_layers` asks for). Call `model.apply({"params": params}, ...)`.
    """
    path = os.fspath(path)
    config, params = read_checkpoint(path, config=config)
    config = _with_dtype(config, dtype)
    params = cast_tree(params, dtype)
    if detect_format(path) == "hf" and hf_architecture(path) == CLASSIFIER:
        from adaptation.models.heads import EncoderClassifier, HeadConfig

        assert isinstance(config, TransformerConfig)
        head = HeadConfig(num_classes=int(params["head"]["bias"].shape[0]))
        return EncoderClassifier(config, head), to_layout(params, config)
    return model_for(config), to_layout(params, config)

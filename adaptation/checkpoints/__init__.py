"""Checkpoint formats: Hugging Face (Gemma 2, Gemma 3, T5Gemma, T5Gemma 2), official Gemma Flax/Orbax, and our own.

Exports are lazy (PEP 562) so that importing one format does not import the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": "adaptation.checkpoints.common",
    "load_checkpoint": "adaptation.checkpoints.loader",
    "read_checkpoint": "adaptation.checkpoints.loader",
    "detect_format": "adaptation.checkpoints.loader",
    "import_gemma2": "adaptation.checkpoints.hf_gemma",
    "export_gemma2": "adaptation.checkpoints.hf_gemma",
    "import_gemma3": "adaptation.checkpoints.hf_gemma",
    "export_gemma3": "adaptation.checkpoints.hf_gemma",
    "import_t5gemma2": "adaptation.checkpoints.hf_t5gemma2",
    "export_t5gemma2": "adaptation.checkpoints.hf_t5gemma2",
    "import_t5gemma": "adaptation.checkpoints.hf_t5gemma",
    "export_t5gemma": "adaptation.checkpoints.hf_t5gemma",
    "import_t5gemma_classifier": "adaptation.checkpoints.hf_t5gemma",
    "export_t5gemma_classifier": "adaptation.checkpoints.hf_t5gemma",
    "import_gemma_flax": "adaptation.checkpoints.gemma_flax",
    "save_model": "adaptation.checkpoints.native",
    "load_model": "adaptation.checkpoints.native",
    "write_model_config": "adaptation.checkpoints.native",
    "read_model_config": "adaptation.checkpoints.native",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adaptation.checkpoints' has no attribute {name!r}")

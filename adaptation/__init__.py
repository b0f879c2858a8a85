"""adaptation: decoder-only Gemma checkpoints -> encoder-decoder (T5Gemma) and encoder-only models.

Kept light: the public entry points are imported on first use (PEP 562).
  load_checkpoint(path, *, config=None, dtype=None) -> (model, params)   any supported checkpoint
  load_encoder(...)                                                       see `adaptation.encoder`
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_checkpoint": "adaptation.checkpoints.loader",
    "load_encoder": "adaptation.encoder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adaptation' has no attribute {name!r}")

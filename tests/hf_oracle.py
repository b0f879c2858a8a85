"""Shared helpers of the parity tests against Hugging Face transformers (the numerical oracle)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
import torch
from safetensors.numpy import load_file, save_file


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Adds noise to every weight (norm scales included) so that each one matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def lm_logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    """Logits of a transformers causal LM on a padded batch (id 0 = padding)."""
    with torch.no_grad():
        t = torch.tensor(tokens, dtype=torch.long)
        return model(input_ids=t, attention_mask=(t != 0).long()).logits.float().numpy()


def seq2seq_logits(model: torch.nn.Module, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Logits of a transformers encoder-decoder on padded encoder and decoder batches."""
    with torch.no_grad():
        e, d = torch.tensor(enc, dtype=torch.long), torch.tensor(dec, dtype=torch.long)
        out = model(input_ids=e, attention_mask=(e != 0).long(), decoder_input_ids=d,
                    decoder_attention_mask=(d != 0).long())
        return out.logits.float().numpy()


def max_diff(a: Any, b: Any, tokens: np.ndarray, vocab: Optional[int] = None) -> float:
    """Max |a - b| over the non-pad positions of `tokens` (and the first `vocab` logits)."""
    a, b = np.asarray(a), np.asarray(b)
    if vocab is not None:
        a, b = a[..., :vocab], b[..., :vocab]
    return float(np.abs(a - b)[tokens != 0].max())


def jit_apply(model: Any, params: Any, *inputs) -> np.ndarray:
    """Our model's output, jit-compiled (far faster than op-by-op on CPU)."""
    return np.asarray(jax.jit(model.apply)({"params": params}, *inputs))


def copy_hf_dir(
    src: str,
    dst: Any,
    *,
    drop: Optional[str] = None,
    replace: Optional[Mapping[str, np.ndarray]] = None,
    config_edit: Optional[Mapping[str, Any]] = None,
) -> str:
    """A copy of a single-file HF directory with one tensor dropped/replaced or config fields edited.

    `config_edit` keys may be "/"-joined paths into nested config sections ("encoder/text_config/x").
    """
    os.makedirs(dst)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    if drop:
        del tensors[drop]
    tensors.update(replace or {})
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    for key, value in (config_edit or {}).items():
        node = config
        *parents, leaf = key.split("/")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return str(dst)

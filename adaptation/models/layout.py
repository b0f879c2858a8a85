"""Converts a stack's params between the per-layer layout and the scanned (stacked) layout.

Per-layer: {"layers_0": block, ..., "layers_{L-1}": block, "final_norm": ...}.
Scanned:   {"layers": block with every leaf stacked on a leading axis of size L, "final_norm": ...}.
Checkpoint code works with the per-layer layout; `to_config_layout` puts params in the layout
that a config's `scan_layers` expects.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from flax.core import meta

_LAYER = re.compile(r"^layers_(\d+)$")


def is_scanned(stack: dict) -> bool:
    """True when the stack's params are in the scanned layout."""
    return "layers" in stack


def stack_layers(stack: dict) -> dict:
    """Per-layer -> scanned layout (numpy stacking; arrays stay on host)."""
    if is_scanned(stack):
        return stack
    stack = meta.unbox(stack)
    indices = sorted(int(m.group(1)) for k in stack if (m := _LAYER.match(k)))
    if indices != list(range(len(indices))):
        raise ValueError(f"stack layers are not numbered 0..{len(indices) - 1}: {indices}")
    blocks = [stack[f"layers_{i}"] for i in indices]
    rest = {k: v for k, v in stack.items() if not _LAYER.match(k)}
    return {**rest, "layers": jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)}


def unstack_layers(stack: dict) -> dict:
    """Scanned -> per-layer layout."""
    if not is_scanned(stack):
        return stack
    stack = meta.unbox(stack)
    num = jax.tree.leaves(stack["layers"])[0].shape[0]
    rest = {k: v for k, v in stack.items() if k != "layers"}
    for i in range(num):
        rest[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stack["layers"])
    return rest


def to_config_layout(stack: dict, scan_layers: bool) -> dict:
    """The stack's params in the layout `scan_layers` asks for."""
    return stack_layers(stack) if scan_layers else unstack_layers(stack)


def map_stacks(params: dict, fn: Any, stack_names=("encoder", "decoder")) -> dict:
    """Applies `fn` to each stack subtree of a model's params (other entries unchanged)."""
    return {k: (fn(v) if k in stack_names else v) for k, v in params.items()}

"""Our own checkpoint format, and the trainer's run directories.

A model directory:
  model_config.json   {"format_version": 1, "kind": "decoder_only" | "encoder_decoder" | "encoder_only",
                       "config": TransformerConfig fields, or {"encoder": ..., "decoder": ...,
                       "tie_all_embeddings": ...} for encoder-decoder}
  params/             the param tree saved with orbax (PyTree checkpoint), per-layer or scanned layout.
A trainer run directory (written by the trainer):
  model_config.json
  checkpoints/<step>/params/   orbax CheckpointManager steps with an item named `params`.
`load_model` reads either (a run: its latest finished step) and returns the params as numpy, in
the layout the config's `scan_layers` asks for. Enum values (attention kinds) are written as their
strings; unknown config fields are an error naming them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping, Optional, Union

import numpy as np

from adaptation.checkpoints.common import (
    DECODER_ONLY,
    ENCODER_DECODER,
    KINDS,
    AnyConfig,
    CheckpointError,
    atomic_directory,
    check_shapes,
    expected_shapes,
    flatten,
    kind_of,
    require_dir,
)
from adaptation.models import layout
from adaptation.models.config import EncoderDecoderConfig, TransformerConfig

MODEL_CONFIG = "model_config.json"
PARAMS = "params"
CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1
_STEP = re.compile(r"^\d+$")


# ----------------------------------------------------------------------------------------------
# model_config.json


def _stack_to_json(cfg: TransformerConfig) -> dict:
    out = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "attention_pattern":
            value = [k.value for k in value]
        out[field.name] = value
    return out


def _stack_from_json(fields: Mapping[str, Any], source: str) -> TransformerConfig:
    known = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown TransformerConfig fields {unknown}.")
    fields = dict(fields)
    if "attention_pattern" in fields:
        fields["attention_pattern"] = tuple(fields["attention_pattern"])
    try:
        return TransformerConfig(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def config_to_json(config: AnyConfig) -> dict:
    """The model_config.json object of a config."""
    if isinstance(config, EncoderDecoderConfig):
        body = {
            "encoder": _stack_to_json(config.encoder),
            "decoder": _stack_to_json(config.decoder),
            "tie_all_embeddings": config.tie_all_embeddings,
        }
    else:
        body = _stack_to_json(config)
    return {"format_version": FORMAT_VERSION, "kind": kind_of(config), "config": body}


def config_from_json(obj: Mapping[str, Any], source: str = MODEL_CONFIG) -> AnyConfig:
    """The config of a model_config.json object."""
    kind = obj.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{source}: 'kind' is {kind!r}; expected one of {list(KINDS)}.")
    body = obj.get("config")
    if not isinstance(body, Mapping):
        raise CheckpointError(f"{source}: missing the 'config' object.")
    if kind == ENCODER_DECODER:
        missing = [k for k in ("encoder", "decoder") if k not in body]
        if missing:
            raise CheckpointError(f"{source}: encoder_decoder config lacks {missing}.")
        try:
            return EncoderDecoderConfig(
                encoder=_stack_from_json(body["encoder"], f"{source} (encoder)"),
                decoder=_stack_from_json(body["decoder"], f"{source} (decoder)"),
                tie_all_embeddings=bool(body.get("tie_all_embeddings", False)),
            )
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from None
    config = _stack_from_json(body, source)
    if config.causal != (kind == DECODER_ONLY):
        raise CheckpointError(f"{source}: kind {kind!r} contradicts causal={config.causal}.")
    return config


def write_model_config(directory: Union[str, os.PathLike], config: AnyConfig) -> str:
    """Writes `directory/model_config.json`; returns its path."""
    os.makedirs(directory, exist_ok=True)
    file = os.path.join(os.fspath(directory), MODEL_CONFIG)
    with open(file, "w") as f:
        json.dump(config_to_json(config), f, indent=2)
    return file


def read_model_config(directory: Union[str, os.PathLike]) -> AnyConfig:
    """The config stored in `directory/model_config.json`."""
    directory = require_dir(directory)
    file = os.path.join(directory, MODEL_CONFIG)
    if not os.path.isfile(file):
        raise CheckpointError(f"{directory!r} has no {MODEL_CONFIG}.")
    try:
        with open(file) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}).") from None
    return config_from_json(obj, file)


# ----------------------------------------------------------------------------------------------
# Orbax trees.


def save_tree(directory: Union[str, os.PathLike], tree: Mapping[str, Any]) -> None:
    """Saves a param tree with orbax at `directory` (which must not exist)."""
    import orbax.checkpoint as ocp

    tree = {k: v for k, v in tree.items()}
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(os.path.abspath(os.fspath(directory)), tree)


def tree_metadata(directory: Union[str, os.PathLike]) -> dict:
    """The nested tree of orbax array metadata (shape, dtype) of a PyTree checkpoint."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(require_dir(directory))
    try:
        meta = ocp.PyTreeCheckpointer().metadata(directory)
    except Exception as e:  # orbax raises assorted types for unreadable directories
        raise CheckpointError(f"{directory!r} is not a readable orbax checkpoint ({type(e).__name__}: {e}).") from None
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    return dict(meta)


def restore_tree(directory: Union[str, os.PathLike], subtree: Optional[Mapping[str, Any]] = None) -> dict:
    """Restores an orbax PyTree checkpoint as numpy arrays in their stored dtype.

    `subtree` (a part of `tree_metadata(directory)`) restores only those leaves.
    """
    import jax
    import orbax.checkpoint as ocp

    directory = os.path.abspath(require_dir(directory))
    meta = tree_metadata(directory) if subtree is None else subtree
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    args = ocp.args.PyTreeRestore(item=meta if subtree is not None else None, restore_args=restore_args,
                                  partial_restore=subtree is not None)
    return ocp.PyTreeCheckpointer().restore(directory, args=args)


def _unbox(tree: Any) -> Any:
    """Drops `{"value": x}` wrappers that boxed (partitioned) Flax params leave in saved trees."""
    if isinstance(tree, Mapping):
        if set(tree) == {"value"} and not isinstance(tree["value"], Mapping):
            return tree["value"]
        return {k: _unbox(v) for k, v in tree.items()}
    return tree


def check_native_params(params: Mapping[str, Any], config: AnyConfig, source: str) -> None:
    """Per-layer params against the config's expected names and shapes."""
    check_shapes(expected_shapes(config), flatten(params), f"{source}: params", "model_config.json")


# ----------------------------------------------------------------------------------------------
# Public API.


def save_model(path: Union[str, os.PathLike], config: AnyConfig, params: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Writes a model directory (model_config.json + orbax `params/`) atomically."""
    import jax

    per_layer_params = layout.map_stacks(dict(params), layout.unstack_layers)
    check_native_params(per_layer_params, config, "save_model")
    host = jax.tree.map(np.asarray, dict(params))
    with atomic_directory(path, overwrite=overwrite) as tmp:
        write_model_config(tmp, config)
        save_tree(os.path.join(tmp, PARAMS), host)


def latest_step(run_dir: Union[str, os.PathLike]) -> Optional[int]:
    """The largest finished step under `run_dir/checkpoints/` holding a `params` item; None when none."""
    root = os.path.join(os.fspath(run_dir), CHECKPOINTS)
    if not os.path.isdir(root):
        return None
    steps = [int(d) for d in os.listdir(root) if _STEP.match(d) and os.path.isdir(os.path.join(root, d, PARAMS))]
    return max(steps) if steps else None


def params_directory(path: Union[str, os.PathLike]) -> str:
    """Where the params of a model directory or trainer run directory are."""
    path = require_dir(path)
    direct = os.path.join(path, PARAMS)
    if os.path.isdir(direct):
        return direct
    step = latest_step(path)
    if step is None:
        raise CheckpointError(
            f"{path!r} has {MODEL_CONFIG} but neither {PARAMS}/ nor a finished step under {CHECKPOINTS}/<step>/{PARAMS}/."
        )
    return os.path.join(path, CHECKPOINTS, str(step), PARAMS)


def load_model(path: Union[str, os.PathLike], config: Optional[AnyConfig] = None) -> tuple[AnyConfig, dict]:
    """(config, numpy params in the config's layout) of a model directory or trainer run directory.

    `config` replaces model_config.json where given (e.g. to change `scan_layers` or dtypes); its
    shapes must match the stored params.
    """
    config = config or read_model_config(path)
    directory = params_directory(path)
    tree = _unbox(restore_tree(directory))
    if set(tree) == {PARAMS}:
        tree = tree[PARAMS]
    per_layer_params = layout.map_stacks(tree, layout.unstack_layers)
    check_native_params(per_layer_params, config, directory)
    return config, to_layout(per_layer_params, config)


def to_layout(params: Mapping[str, Any], config: AnyConfig) -> dict:
    """Params (either layout) in the layout the config's `scan_layers` asks for."""
    if isinstance(config, EncoderDecoderConfig):
        return {
            k: layout.to_config_layout(v, getattr(config, k).scan_layers) if k in ("encoder", "decoder") else v
            for k, v in params.items()
        }
    return layout.map_stacks(dict(params), lambda s: layout.to_config_layout(s, config.scan_layers))

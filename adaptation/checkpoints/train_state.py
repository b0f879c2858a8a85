"""Orbax checkpoints of the train state: `MODEL_DIR/checkpoints/<step>/`.

Each step directory holds four items:
  params          the model params (sharded arrays, float32 master weights);
  opt_state       the optimizer state;
  meta            {"step": int, "rng": [uint32, ...]} (JSON);
  data_iterator   the input pipeline position (JSON, see `adaptation.data.iterator`).
`MODEL_DIR/model_config.json` records the model config beside them.

Saves are asynchronous; `keep` bounds how many step directories stay. Restores read straight
into the target shardings, so a run may resume on a different mesh shape. A step directory whose
params differ in shape from the model is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import signal
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from adaptation.checkpoints import native
from adaptation.trainer import TrainState, check_tree_shapes, path_str

ITEMS = ("params", "opt_state", "meta", "data_iterator")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how to save.

    Attributes:
      save_every_steps: save when the step count is a multiple of this (and at the end).
      keep: how many of the latest checkpoints to keep (None: all).
      async_save: write in a background thread while training continues.
      save_on_preemption: save and stop on SIGTERM / a TPU preemption notice.
    """

    save_every_steps: int = 1000
    keep: Optional[int] = 3
    async_save: bool = True
    save_on_preemption: bool = True


def write_model_config(model_dir: str | os.PathLike, model_config: Any) -> None:
    """Writes `MODEL_DIR/model_config.json` on process 0 (`adaptation.checkpoints.native` format)."""
    if jax.process_index() == 0:
        native.write_model_config(model_dir, model_config)


class IncompatibleCheckpointError(ValueError):
    """A checkpoint whose params do not fit the model (names the parameter)."""


class PreemptionWatcher:
    """Knows when to save and stop: SIGTERM (one process) or a multi-host preemption sync point.

    In a multi-process run every process must agree on the step at which it stops, so the signal is
    read through `multihost_utils.reached_preemption_sync_point` (which JAX's coordination service
    drives from SIGTERM / TPU maintenance notices). In a single process a SIGTERM handler sets a flag.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._flag = False
        self._previous = None
        if enabled and jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping after this step.")
        self._flag = True

    def should_stop(self, step: int) -> bool:
        """True when the run must save and stop at `step` (the same answer on every process)."""
        if not self.enabled:
            return False
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils

        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError:  # no preemption service in this runtime
            return False

    def close(self) -> None:
        """Restores the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class TrainCheckpointer:
    """Saves and restores `TrainState` + data iterator state under `MODEL_DIR/checkpoints/`."""

    def __init__(self, model_dir: str | os.PathLike, config: CheckpointConfig):
        self.directory = pathlib.Path(model_dir).absolute() / "checkpoints"
        self.config = config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            create=True,
            enable_async_checkpointing=config.async_save,
        )
        handlers = {
            "params": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
            "data_iterator": ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> Optional[int]:
        """The newest finished checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all finished checkpoints."""
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: Optional[dict] = None, *, force: bool = False) -> bool:
        """Saves at `state.step` when due (or `force`); returns whether a save started."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        if not force and (step % self.config.save_every_steps):
            return False
        rng = np.asarray(jax.device_get(jax.random.key_data(state.rng) if _is_typed_key(state.rng) else state.rng))
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave({"step": step, "rng": rng.tolist()}),
            data_iterator=ocp.args.JsonSave(data_state or {}),
        )
        saved = self.manager.save(step, args=args, force=True)
        logging.info("checkpoint at step %d -> %s", step, self.directory / str(step))
        return saved

    def check_compatible(self, abstract_params: Any, step: Optional[int] = None) -> None:
        """Raises naming the first parameter whose shape differs from `abstract_params`."""
        step = self.latest_step() if step is None else step
        meta = self.manager.item_metadata(step)["params"]
        tree = getattr(meta, "tree", meta)
        try:
            check_tree_shapes(abstract_params, tree, f"checkpoint {self.directory / str(step)} params")
        except ValueError as e:
            raise IncompatibleCheckpointError(
                f"{e} This directory belongs to another model: use a new MODEL_DIR (nothing was written)."
            ) from None

    def restore(self, abstract_state: TrainState, shardings: TrainState, step: Optional[int] = None) -> tuple[TrainState, dict]:
        """Restores (state, data iterator state) into `shardings` (any mesh)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}.")
        self.check_compatible(abstract_state.params, step)

        def target(abstract, sharding):
            return jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding
            )

        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target(abstract_state.params, shardings.params)),
                opt_state=ocp.args.StandardRestore(target(abstract_state.opt_state, shardings.opt_state)),
                meta=ocp.args.JsonRestore(),
                data_iterator=ocp.args.JsonRestore(),
            ),
        )
        meta = restored["meta"]
        rng = jax.device_put(np.asarray(meta["rng"], dtype=np.uint32), shardings.rng)
        step_arr = jax.device_put(np.asarray(meta["step"], dtype=np.int32), shardings.step)
        state = TrainState(params=restored["params"], opt_state=restored["opt_state"], step=step_arr, rng=rng)
        return state, dict(restored["data_iterator"] or {})

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _is_typed_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def describe(tree: Any) -> dict[str, tuple[int, ...]]:
    """{path: shape} of a tree (debugging aid for checkpoint contents)."""
    return {path_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

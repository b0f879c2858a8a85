"""`python -m adaptation.train --gin_file=runs/pretrain.gin --gin.MODEL_DIR="'/tmp/run'"`.

Trains a model on a seqio task or mixture: builds the mesh and the sharded train state (restoring
the latest checkpoint of MODEL_DIR, else INITIAL_CHECKPOINT_PATH, else random init), then loops:
step, log (console + TensorBoard + MODEL_DIR/train_metrics.jsonl), save, evaluate. Stops and saves
on SIGTERM / preemption. Gin binds `train.*` (see gin/runs/*.gin for the macros).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from adaptation import gin_utils, host_env, partitioning
from adaptation.checkpoints.train_state import (
    CheckpointConfig,
    IncompatibleCheckpointError,
    PreemptionWatcher,
    TrainCheckpointer,
    write_model_config,
)
from adaptation.objectives.losses import LossFn, Teacher, cross_entropy_loss_fn
from adaptation.trainer import (
    TrainConfig,
    Trainer,
    mfu,
    peak_flops_per_device,
    training_flops_per_step,
)

METRICS_FILE = "train_metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf with `TrainConfig.nonfinite='stop'`."""


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    step: int
    stopped_early: bool
    last_metrics: dict


def _is_classifier(model_config: Any) -> bool:
    from adaptation.classifier import ClassifierConfig

    return isinstance(model_config, ClassifierConfig)


def _build_model(model_config: Any) -> Any:
    if _is_classifier(model_config):  # encoder-only classifier (adaptation.classifier)
        from adaptation.classifier import build_classifier

        return build_classifier(model_config)
    from adaptation.checkpoints.common import model_for

    return model_for(model_config)


def _load_params(path: str, model_config: Any, seed: int = 0) -> Any:
    """Params of any checkpoint `adaptation.load_checkpoint` reads, in `model_config`'s layout (a
    classifier: the checkpoint's encoder and a fresh head from `seed`, or a classifier run's params)."""
    if _is_classifier(model_config):
        from adaptation.classifier import classifier_params

        return classifier_params(model_config, path, jax.random.PRNGKey(seed))
    from adaptation.checkpoints.loader import load_checkpoint

    _, params = load_checkpoint(path, config=model_config)
    return params


def _load_teacher(path: str, mesh, rules) -> Teacher:
    """A frozen teacher, its params placed on the run's mesh with the model's logical shardings."""
    from adaptation.checkpoints.loader import load_checkpoint
    from adaptation.trainer import place_params

    model, params = load_checkpoint(path)
    return Teacher(model=model, params=place_params(model, params, mesh, rules))


class _Summaries:
    """TensorBoard event files (tf.summary, imported lazily) and a JSONL file; process 0 only.

    Events are written with `tf.summary.write` and the scalars/text plugin metadata, which needs no
    `tensorboard` package at write time (only to view them).
    """

    def __init__(self, model_dir: str, name: str):
        self.enabled = jax.process_index() == 0
        self.writer = None
        self.jsonl = os.path.join(model_dir, METRICS_FILE) if name == "train" else None
        if self.enabled:
            try:
                import tensorflow as tf

                self.writer = tf.summary.create_file_writer(os.path.join(model_dir, name))
            except ImportError:
                logging.warning("tensorflow is not installed: no TensorBoard summaries.")

    def _write(self, step: int, tag: str, value: Any, plugin: str) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
        )
        with self.writer.as_default():
            tf.summary.write(tag, tf.constant(value), step=step, metadata=metadata)

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in metrics.items():
                self._write(step, k, float(v), "scalars")
            self.writer.flush()
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def text(self, step: int, name: str, text: str) -> None:
        if self.enabled and self.writer is not None:
            self._write(step, name, text, "text")
            self.writer.flush()


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _trim_to_resume_point(model_dir: str, step: int) -> None:
    """Drops JSONL metric lines after `step` (they belong to work lost since the last checkpoint)."""
    path = os.path.join(model_dir, METRICS_FILE)
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def train(
    *,
    model_dir: str,
    model_config: Any,
    train_dataset: Any,
    train_config: TrainConfig = TrainConfig(),
    checkpoint_config: CheckpointConfig = CheckpointConfig(),
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    distributed_config: partitioning.DistributedConfig = partitioning.DistributedConfig(),
    loss_fn: LossFn = cross_entropy_loss_fn,
    eval_datasets: Sequence[Any] = (),
    eval_every_steps: int = 0,
    eval_steps: Optional[int] = 20,
    log_every_steps: int = 10,
    initial_checkpoint_path: Optional[str] = None,
    teacher_checkpoint: Optional[str] = None,
    write_config: Optional[Callable[[str], Optional[str]]] = None,
) -> TrainResult:
    """Trains `model_config` on `train_dataset` (a `DatasetConfig`) into `model_dir`.

    Resumes from the latest checkpoint in `model_dir/checkpoints` when there is one (params,
    optimizer, step, rng and data position); otherwise starts from `initial_checkpoint_path` (any
    format `adaptation.load_checkpoint` reads) or from random params. `write_config(model_dir)`
    (the entry point's: gin's operative config to MODEL_DIR/config.gin) runs once set-up is done.
    """
    from adaptation.data.iterator import BatchIterator

    partitioning.initialize_distributed(distributed_config)
    mesh = partitioning.make_mesh(mesh_config)
    if jax.default_backend() == "cpu" and "GLIBC_TUNABLES" not in os.environ:
        logging.info("training on CPU: GLIBC_TUNABLES=%s makes steps faster (adaptation/host_env.py)",
                     host_env.HUGE_PAGE_MALLOC)
    rules = mesh_config.rules
    partitioning.check_batch_size(train_dataset.batch_size, mesh)
    model = _build_model(model_config)
    data = BatchIterator.from_config(train_dataset)
    example = data.peek_shapes()
    teacher = _load_teacher(teacher_checkpoint, mesh, rules) if teacher_checkpoint else None
    trainer = Trainer(model, train_config, mesh, rules, loss_fn, example, teacher=teacher)
    ckpt = TrainCheckpointer(model_dir, checkpoint_config)

    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(trainer.abstract_state, trainer.state_shardings)
        data.set_state(data_state)
        logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    elif initial_checkpoint_path:
        state = trainer.init_state(_load_params(initial_checkpoint_path, model_config, train_config.seed))
        logging.info("initialized from %s", initial_checkpoint_path)
    else:
        state = trainer.init_state()
    step = int(jax.device_get(state.step))
    _trim_to_resume_point(model_dir, step)
    if _is_classifier(model_config):
        from adaptation.classifier import write_classifier_config

        write_classifier_config(model_dir, model_config)
    else:
        write_model_config(model_dir, model_config)
    summaries = _Summaries(model_dir, "train")
    if write_config is not None:
        text = write_config(model_dir)
        if text:
            summaries.text(step, "config", text)

    tokens_per_step = sum(int(np.prod(v.shape)) for k, v in example.items() if k.endswith("input_tokens"))
    if _is_classifier(model_config):
        from adaptation.classifier import training_flops_per_step as classifier_flops

        shape = example["encoder_input_tokens"].shape  # [B, T] or ranking lists [B, L, T]
        rows = shape[0]
        flops = classifier_flops(model_config, int(np.prod(shape[:-1])), shape[-1])
    else:
        rows = example["decoder_target_tokens"].shape[0]
        in_len = example["encoder_input_tokens"].shape[1] if "encoder_input_tokens" in example else 0
        flops = training_flops_per_step(model_config, rows, in_len, example["decoder_target_tokens"].shape[1])
    peak = peak_flops_per_device()
    logging.info(
        "mesh %s, %d devices, %.3g TFLOP per step, batch %d x %s",
        dict(mesh.shape), mesh.size, flops / 1e12, rows, {k: v.shape[1:] for k, v in example.items()},
    )

    watcher = PreemptionWatcher(checkpoint_config.save_on_preemption)
    pending: list[tuple[int, Any]] = []
    last = {}
    t_last, steps_since = time.time(), 0
    stopped = False
    try:
        while step < train_config.num_train_steps:
            state, metrics = trainer.train_step(state, next(data))
            step += 1
            steps_since += 1
            pending.append((step, metrics))
            final = step == train_config.num_train_steps
            save_due = final or step % checkpoint_config.save_every_steps == 0
            stopped = watcher.should_stop(step)
            if save_due or stopped or step % log_every_steps == 0:
                jax.block_until_ready(pending[-1][1])  # steps dispatch asynchronously: time them done
                elapsed = time.time() - t_last
                step_time = elapsed / max(steps_since, 1)
                extra = {
                    "step_time": step_time,
                    "tokens_per_second": tokens_per_step / step_time,
                    "mfu": mfu(flops, step_time, mesh.size, peak),
                }
                last = _flush(pending, train_config, summaries, extra)
                remaining = (train_config.num_train_steps - step) * step_time
                logging.info(
                    "step %d/%d loss %.4f acc %.3f grad_norm %.3g lr %.3g | %.0f tok/s %.3fs/step%s | ETA %s",
                    step, train_config.num_train_steps, last["loss"], last.get("accuracy", math.nan),
                    last["grad_norm"], last["learning_rate"], extra["tokens_per_second"], step_time,
                    "" if math.isnan(extra["mfu"]) else f" MFU {100 * extra['mfu']:.1f}%", _format_eta(remaining),
                )
                pending, t_last, steps_since = [], time.time(), 0
            if save_due or stopped:
                ckpt.save(state, data.get_state(), force=True)
                t_last = time.time()
            if eval_datasets and eval_every_steps and (step % eval_every_steps == 0 or final):
                evaluate(trainer, state.params, eval_datasets, eval_steps, model_dir, step)
                t_last = time.time()
            if stopped:
                logging.warning("stopped at step %d on a preemption notice; checkpoint saved.", step)
                break
    finally:
        watcher.close()
        ckpt.close()
    return TrainResult(step=step, stopped_early=stopped, last_metrics=last)


def _flush(pending: list, config: TrainConfig, summaries: _Summaries, extra: dict) -> dict:
    """Fetches pending step metrics, stops on a non-finite step (policy 'stop'), writes summaries."""
    fetched = jax.device_get([m for _, m in pending])
    last = {}
    for (step, _), metrics in zip(pending, fetched):
        if int(metrics["nonfinite"]) and config.nonfinite == "stop":
            raise NonFiniteLossError(
                f"the loss or gradient became non-finite at step {step} (loss {float(metrics['loss'])}, "
                f"grad norm {float(metrics['grad_norm'])}); stopping without saving it. Lower the learning "
                "rate, check the data, or set TrainConfig.nonfinite = 'skip' to drop such updates."
            )
        last = {k: float(v) for k, v in metrics.items()}
        summaries.scalars(step, last if step != pending[-1][0] else {**last, **extra})
    return last


def evaluate(trainer: Trainer, params: Any, datasets: Sequence[Any], num_steps: Optional[int], model_dir: str, step: int) -> dict:
    """Loss-weighted mean loss / accuracy of each eval dataset; written to `model_dir/eval_<name>`."""
    from adaptation.data.iterator import BatchIterator

    results = {}
    for config in datasets:
        it = BatchIterator.from_config(config)
        totals: dict[str, float] = {}
        weight = 0.0
        for i, batch in enumerate(it):
            if num_steps is not None and i >= num_steps:
                break
            batch = _pad_rows(batch, config.batch_size // jax.process_count())
            metrics = jax.device_get(trainer.eval_step(params, batch))
            w = float(metrics.get("loss_denominator", 1.0))
            weight += w
            for k, v in metrics.items():
                if k != "loss_denominator":
                    totals[k] = totals.get(k, 0.0) + w * float(v)
        means = {k: v / max(weight, 1e-8) for k, v in totals.items()}
        results[config.mixture_or_task_name] = means
        _Summaries(model_dir, f"eval_{config.mixture_or_task_name}").scalars(step, means)
        logging.info("eval %s at step %d: %s", config.mixture_or_task_name, step,
                     ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items())))
    return results


def _pad_rows(batch: dict, rows: int) -> dict:
    """Pads a short final batch with all-zero rows (zero loss weight)."""
    have = next(iter(batch.values())).shape[0]
    if have == rows:
        return batch
    return {k: np.concatenate([v, np.zeros((rows - have, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


def _main(args) -> int:
    gin_utils.register_configurables()
    gin_utils.register_configurables(gin_utils.DATA_CONFIGURABLES)
    configured = gin_utils.bind_configurable(train, "train")
    gin_utils.parse_config(args.gin_file, args.gin_bindings, args.search_paths)
    try:
        configured(write_config=gin_utils.write_operative_config)
    except (NonFiniteLossError, IncompatibleCheckpointError, partitioning.MeshShapeError) as e:
        logging.error("%s", e)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point (`adaptation-train`)."""
    return gin_utils.run(_main, "Train a model from gin configs.", argv)


if __name__ == "__main__":
    raise SystemExit(main())

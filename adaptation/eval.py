"""`python -m adaptation.eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'/tmp/run'" ...`.

Evaluates a checkpoint on seqio tasks or mixtures with their own metric functions (seqio
`Evaluator`: predictions by decoding, scores by target log-likelihood), plus the token loss and
accuracy of the run's loss. Results go to the console, `OUTPUT_DIR/eval_results.jsonl` and
TensorBoard (`OUTPUT_DIR/eval_<task>`); process 0 writes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adaptation import gin_utils, partitioning
from adaptation.infer import decode_rows, load_for_inference
from adaptation.objectives.losses import model_logits


def _batches(ds, batch_size: int, lengths: dict) -> Any:
    """(indices, padded numpy feature batch) from an enumerated seqio model-feature dataset."""
    items = []
    for index, features in ds.as_numpy_iterator():
        items.append((int(index), features))
        if len(items) == batch_size:
            yield _stack(items, batch_size, lengths)
            items = []
    if items:
        yield _stack(items, batch_size, lengths)


def _stack(items, batch_size, lengths):
    keys = items[0][1].keys()
    out = {k: np.zeros((batch_size, lengths[k]), np.asarray(items[0][1][k]).dtype) for k in keys}
    for i, (_, f) in enumerate(items):
        for k in keys:
            out[k][i, : len(f[k])] = f[k][: lengths[k]]
    return [i for i, _ in items], out


@functools.partial(jax.jit, static_argnums=0)
def _target_scores(model, params, batch):
    """Sum of target log-likelihoods per row (seqio score_fn) and token-level loss sums."""
    logits = model_logits(model, params, batch, rng=None)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0] * weights
    correct = (jnp.argmax(logits, -1) == targets) * weights
    return token_logp.sum(-1), correct.sum(-1), weights.sum(-1)


def _token_metrics(model, params, name, lengths, split, batch_size, num_examples, use_cached) -> dict:
    """Target-token loss and accuracy over the split (the first `num_examples` examples)."""
    from adaptation.data.config import DatasetConfig
    from adaptation.data.iterator import get_dataset

    config = DatasetConfig(name, dict(lengths), batch_size, split=split, shuffle=False, num_epochs=1, use_cached=use_cached)
    ds = get_dataset(config, _single_shard())
    if num_examples:
        ds = ds.unbatch().take(num_examples).batch(batch_size)
    logp = correct = tokens = 0.0
    for batch in ds.as_numpy_iterator():
        rows = next(iter(batch.values())).shape[0]
        batch = {k: np.concatenate([v, np.zeros((batch_size - rows, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        lp, c, t = jax.device_get(_target_scores(model, params, batch))
        logp, correct, tokens = logp + lp.sum(), correct + c.sum(), tokens + t.sum()
    return {"token_loss": float(-logp / max(tokens, 1.0)), "token_accuracy": float(correct / max(tokens, 1.0))}


def _single_shard():
    import seqio

    return seqio.ShardInfo(0, 1)


def evaluate(
    *,
    checkpoint_path: str,
    mixture_or_task_names: Sequence[str],
    task_feature_lengths: dict,
    output_dir: str,
    split: str = "validation",
    batch_size: int = 8,
    num_examples: Optional[int] = None,
    method: str = "greedy",
    use_cached: bool = False,
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    step: Optional[int] = None,
    benchmark: Optional[Callable[..., dict]] = None,
) -> dict:
    """Metrics of each task or mixture: its seqio metrics plus `token_loss` and `token_accuracy`.

    With `benchmark` (gin: `evaluate.benchmark = @superglue_benchmark`, `@glue_benchmark` or
    `@ranking_benchmark`, see `adaptation.benchmarks`) the benchmark evaluates instead: official
    metrics from per-example predictions (decoded text, classifier logits or scores), a printed
    table, `output_dir/metrics.json` (+ SuperGLUE leaderboard files).
    """
    if benchmark is not None:
        return benchmark(
            checkpoint_path=checkpoint_path, mixture_or_task_names=mixture_or_task_names,
            task_feature_lengths=task_feature_lengths, output_dir=output_dir, split=split, batch_size=batch_size,
            num_examples=num_examples, method=method, mesh_config=mesh_config,
        )
    import seqio

    from adaptation.data.features import feature_converter
    from adaptation.train import _Summaries

    model, params = load_for_inference(checkpoint_path, mesh_config)
    lengths = {
        "encoder_input_tokens": task_feature_lengths["inputs"],
        "decoder_input_tokens": task_feature_lengths["targets"],
        "decoder_target_tokens": task_feature_lengths["targets"],
        "decoder_loss_weights": task_feature_lengths["targets"],
    }
    results = {}
    for name in mixture_or_task_names:
        evaluator = seqio.Evaluator(
            name, feature_converter("encoder_decoder"), eval_split=split, use_cached=use_cached,
            sequence_length=dict(task_feature_lengths), num_examples=num_examples,
        )
        def score_fn(ds, model_params=None):
            del model_params
            scores = []
            for indices, batch in _batches(ds, batch_size, lengths):
                logp = jax.device_get(_target_scores(model, params, batch))[0]
                scores.extend((index, float(logp[j])) for j, index in enumerate(indices))
            return scores

        def predict_fn(ds, model_params=None):
            del model_params
            rows = ((int(i), f["encoder_input_tokens"]) for i, f in ds.as_numpy_iterator())
            width = lengths["decoder_target_tokens"]
            # seqio stacks the predictions into one array: pad them (after EOS) to one length.
            return [(i, list(ids) + [0] * (width - len(ids))) for i, ids in decode_rows(
                model, params, rows, batch_size=batch_size, inputs_length=lengths["encoder_input_tokens"],
                max_decode_length=width, method=method,
            )]

        task_metrics = {}
        if evaluator.eval_tasks:  # tasks that define metric functions
            future, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict_fn, score_fn=score_fn)
            task_metrics = future.result() if future is not None else {}
        merged = {}
        for task_name, metrics in (task_metrics or {}).items():
            merged.update({f"{task_name}/{k}": float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0})
        merged.update(_token_metrics(model, params, name, task_feature_lengths, split, batch_size, num_examples, use_cached))
        results[name] = merged
        logging.info("eval %s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in sorted(merged.items())))
        _Summaries(output_dir, f"eval_{name}").scalars(step or 0, merged)
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "eval_results.jsonl"), "a") as f:
            f.write(json.dumps({"checkpoint": checkpoint_path, "step": step, "results": results}) + "\n")
    return results


def _main(args) -> int:
    gin_utils.register_configurables()
    gin_utils.register_configurables(gin_utils.DATA_CONFIGURABLES)
    configured = gin_utils.bind_configurable(evaluate, "evaluate")
    gin_utils.parse_config(args.gin_file, args.gin_bindings, args.search_paths)
    configured()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point (`adaptation-eval`)."""
    return gin_utils.run(_main, "Evaluate a checkpoint on seqio tasks from gin configs.", argv)


if __name__ == "__main__":
    raise SystemExit(main())

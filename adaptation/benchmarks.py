"""Benchmark evaluation of checkpoints: SuperGLUE, GLUE and reranking, as `adaptation.eval` benchmarks.

`python -m adaptation.eval` with `evaluate.benchmark = @superglue_benchmark` (or `@glue_benchmark`,
`@ranking_benchmark`) hands the run to one of these functions. Each reads the examples of its tasks
(seqio, unshuffled, one epoch, every feature kept), predicts, scores with the official metrics,
prints a table, writes `OUTPUT_DIR/metrics.json` and returns `{task: {"metrics", "score",
"num_examples"}}` (what sweeps rank by).

Models: an encoder classifier run/model directory (`adaptation.classifier`), or any checkpoint
`adaptation.load_checkpoint` reads; with `model_config=` (a `ClassifierConfig`) a checkpoint that is
not a classifier becomes one with a fresh head from `seed` (the untrained model a finetune starts
from, for before/after comparisons).

Predictions:
- classifiers: logits `[C]` per example (classification), or the value (regression, ranking);
- encoder-decoders (SuperGLUE "text" casting): the decoded target text (greedy by default).

SuperGLUE: the examples carry `idx` / `candidate` / `answers` (see `tasks.superglue`) and are
scored by `adaptation.superglue_report` (candidates grouped back; the diagnostics AX-b / AX-g are
scored on their labelled test split); the test split of every other task gives the leaderboard
files (`RTE.jsonl`, ...). GLUE: `adaptation.metrics.glue` (MNLI on both dev sets). Ranking: scores
grouped by `qid` into a run, graded by the examples' labels (or a qrels file), `adaptation.metrics.ranking`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from adaptation import partitioning

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Models and examples.


def load_model(
    checkpoint_path: str,
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    model_config: Any = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """(model, params placed on the mesh) of a checkpoint (see the module docstring)."""
    from adaptation import classifier as clf
    from adaptation.trainer import place_params

    if clf.is_classifier_dir(checkpoint_path):
        model, params = clf.load_classifier(checkpoint_path, config=model_config)
    elif model_config is not None:
        params = clf.classifier_params(model_config, checkpoint_path, jax.random.PRNGKey(seed))
        model = clf.build_classifier(model_config)
    else:
        from adaptation.checkpoints.loader import load_checkpoint

        model, params = load_checkpoint(checkpoint_path)
    mesh = partitioning.make_mesh(mesh_config)
    return model, place_params(model, params, mesh, mesh_config.rules)


def _python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def task_examples(name: str, split: str, lengths: Mapping[str, int], num_examples: Optional[int] = None) -> list[dict]:
    """Every example of a registered seqio task split (tokenized, trimmed, unshuffled; all features kept)."""
    import seqio

    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=dict(lengths), split=split, shuffle=False, num_epochs=1)
    if num_examples:
        ds = ds.take(num_examples)
    examples = [{k: _python(v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]
    if not examples:
        raise ValueError(f"task {name!r} split {split!r} has no examples: an evaluation over zero examples is an error.")
    return examples


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, tokens):
    return model.apply({"params": params}, tokens)


def classifier_outputs(model: Any, params: Any, examples: Sequence[Mapping], *, batch_size: int, length: int) -> list:
    """The classifier's output for each example's `inputs` ids (fixed-shape batches: one compilation)."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        tokens = np.zeros((batch_size, length), np.int32)
        for i, ex in enumerate(chunk):
            ids = np.asarray(ex["inputs"])[:length]
            tokens[i, : len(ids)] = ids
        values = np.asarray(jax.device_get(_apply(model, params, tokens)))
        out.extend(values[: len(chunk)])
    return out


def text_predictions(
    model: Any, params: Any, examples: Sequence[Mapping], vocabulary: Any, *, batch_size: int, inputs_length: int,
    max_decode_length: int, method: str = "greedy",
) -> list[str]:
    """Decoded target texts of an encoder-decoder for each example's `inputs` ids."""
    from adaptation.infer import _strip, decode_rows

    rows = ((i, np.asarray(ex["inputs"])) for i, ex in enumerate(examples))
    decoded = dict(decode_rows(model, params, rows, batch_size=batch_size, inputs_length=inputs_length,
                               max_decode_length=max_decode_length, method=method))
    return [vocabulary.decode(_strip(decoded[i])) for i in range(len(examples))]


def _is_classifier(model: Any) -> bool:
    return getattr(model, "head", None) is not None


def _write_json(path: str, payload: Mapping) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)


def format_table(title: str, results: Mapping[str, Mapping[str, Any]], footer: Sequence[str] = ()) -> str:
    """Plain-text table: one row per task (n, score and metrics x 100), then footer lines."""
    lines = [title, f"{'task':<24} {'n':>6}  {'score':>6}  metrics"]
    for task, r in results.items():
        metrics = "  ".join(f"{k} {100 * v:.2f}" for k, v in r["metrics"].items())
        lines.append(f"{task:<24} {r['num_examples']:>6}  {100 * r['score']:>6.2f}  {metrics}")
    return "\n".join(lines + list(footer))


# ----------------------------------------------------------------------------------------------------
# SuperGLUE.


def _superglue_name(name: str) -> tuple[str, str]:
    """(task, casting) of a registered name `<prefix>_<task>_<casting>`."""
    from tasks import superglue as sgt

    parts = name.rsplit("_", 2)
    if len(parts) != 3 or parts[2] not in sgt.CASTINGS:
        raise ValueError(f"{name!r} is not a SuperGLUE task name <prefix>_<task>_<casting> (castings {sgt.CASTINGS}); "
                         "register tasks with tasks.finetune_tasks.superglue_tasks().")
    return sgt.spec(parts[1]).name, parts[2]


def superglue_benchmark(
    *,
    checkpoint_path: str,
    mixture_or_task_names: Sequence[str],
    task_feature_lengths: Mapping[str, int],
    output_dir: str,
    split: str = "validation",
    test_split: Optional[str] = "test",
    batch_size: int = 8,
    num_examples: Optional[int] = None,
    method: str = "greedy",
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    model_config: Any = None,
    seed: int = 0,
    **unused: Any,
) -> dict:
    """Scores SuperGLUE tasks (names from `tasks.finetune_tasks.superglue_tasks`) on `split`, writes the
    leaderboard files of `test_split` (None: none), prints the table, writes metrics.json."""
    from adaptation import superglue_report as rep
    from tasks import superglue as sgt

    del unused
    model, params = load_model(checkpoint_path, mesh_config, model_config, seed)
    length = int(task_feature_lengths["inputs"])

    def predict(name: str, casting: str, examples: list[dict]) -> list:
        if casting == "classifier":
            if not _is_classifier(model):
                raise ValueError(f"{name}: the classifier casting needs an encoder classifier checkpoint; "
                                 f"{checkpoint_path} holds a {type(model).__name__}.")
            return classifier_outputs(model, params, examples, batch_size=batch_size, length=length)
        if _is_classifier(model):
            raise ValueError(f"{name}: the text casting needs an encoder-decoder checkpoint; {checkpoint_path} "
                             "holds an encoder classifier.")
        import seqio

        vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
        return text_predictions(model, params, examples, vocab, batch_size=batch_size, inputs_length=length,
                                max_decode_length=int(task_feature_lengths.get("targets", 16)), method=method)

    def cast_view(examples: list[dict]) -> list[dict]:
        view = []
        for ex in examples:
            ex = dict(ex)
            for key in ("inputs", "targets"):
                if f"{key}_pretokenized" in ex:
                    ex[key] = ex[f"{key}_pretokenized"]
            view.append(ex)
        return view

    results: dict[str, dict] = {}
    test_decisions: dict[str, list] = {}
    for name in mixture_or_task_names:
        task, casting = _superglue_name(name)
        splits = sgt.spec(task).splits
        score_split = split if split in splits else "test"  # AX-b / AX-g: labelled test only
        examples = task_examples(name, score_split, task_feature_lengths, num_examples)
        predictions = predict(name, casting, examples)
        results[task] = rep.evaluate(task, casting, cast_view(examples), predictions)
        logger.info("%s %s: %s", name, score_split, results[task]["metrics"])
        if test_split and test_split in splits:
            if score_split == test_split:
                test_examples, test_predictions = examples, predictions
            else:
                test_examples = task_examples(name, test_split, task_feature_lengths, num_examples)
                test_predictions = predict(name, casting, test_examples)
            test_decisions[task] = rep.decide(task, casting, cast_view(test_examples), test_predictions)
    if jax.process_index() == 0:
        rep.report(output_dir, results, test_decisions, checkpoint=checkpoint_path, split=split)
    return results


# ----------------------------------------------------------------------------------------------------
# GLUE.


def _glue_name(name: str) -> str:
    from tasks import glue as glue_lib

    parts = name.rsplit("_", 2)
    if len(parts) != 3 or parts[2] != "encoder":
        raise ValueError(f"{name!r} is not a GLUE task name <prefix>_<task>_encoder; register tasks with "
                         "tasks.finetune_tasks.glue_tasks().")
    return glue_lib.spec(parts[1]).name


def glue_benchmark(
    *,
    checkpoint_path: str,
    mixture_or_task_names: Sequence[str],
    task_feature_lengths: Mapping[str, int],
    output_dir: str,
    split: str = "validation",
    batch_size: int = 8,
    num_examples: Optional[int] = None,
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    model_config: Any = None,
    seed: int = 0,
    **unused: Any,
) -> dict:
    """Scores GLUE tasks with an encoder classifier on `split` (MNLI: both dev sets), prints the table and
    the GLUE average, writes metrics.json."""
    from adaptation.metrics import glue as glue_metrics
    from tasks import glue as glue_lib

    del unused
    model, params = load_model(checkpoint_path, mesh_config, model_config, seed)
    if not _is_classifier(model):
        raise ValueError(f"GLUE needs an encoder classifier checkpoint; {checkpoint_path} holds a {type(model).__name__}.")
    length = int(task_feature_lengths["inputs"])

    def labels_and_predictions(name: str, task: str, split_: str) -> tuple[list, list]:
        examples = task_examples(name, split_, task_feature_lengths, num_examples)
        outputs = classifier_outputs(model, params, examples, batch_size=batch_size, length=length)
        regression = glue_lib.spec(task).is_regression
        preds = [float(o) if regression else int(np.argmax(o)) for o in outputs]
        return [ex["label"] for ex in examples], preds

    results: dict[str, dict] = {}
    for name in mixture_or_task_names:
        task = _glue_name(name)
        glue_lib.check_head(task, model.head)
        if task == "mnli" and split.startswith("validation"):
            matched = labels_and_predictions(name, task, "validation_matched")
            mismatched = labels_and_predictions(name, task, "validation_mismatched")
            metrics = glue_metrics.mnli_metrics(matched, mismatched)
            n = len(matched[0]) + len(mismatched[0])
        else:
            labels, preds = labels_and_predictions(name, task, split)
            metrics = glue_metrics.glue_metrics(task, labels, preds)
            n = len(labels)
        results[task] = {"metrics": metrics, "score": glue_metrics.task_score(task, metrics), "num_examples": n}
    average = glue_metrics.glue_average({t: r["metrics"] for t, r in results.items()})
    table = format_table(f"GLUE ({split})", results, [f"GLUE average ({len(results)} tasks): {100 * average:.2f}"])
    if jax.process_index() == 0:
        print(table, flush=True)
    _write_json(os.path.join(output_dir, "metrics.json"),
                {"tasks": results, "glue_average": average, "checkpoint": checkpoint_path, "split": split})
    return results


# ----------------------------------------------------------------------------------------------------
# Reranking.


def ranking_benchmark(
    *,
    checkpoint_path: str,
    mixture_or_task_names: Sequence[str],
    task_feature_lengths: Mapping[str, int],
    output_dir: str,
    split: str = "validation",
    batch_size: int = 8,
    num_examples: Optional[int] = None,
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    model_config: Any = None,
    seed: int = 0,
    qrels_path: Optional[str] = None,
    k: int = 10,
    min_relevance: int = 1,
    **unused: Any,
) -> dict:
    """Reranks the candidates of reranking tasks (`tasks.finetune_tasks.msmarco_rerank_task`) by the
    model's score; MRR@k (grade >= `min_relevance`) and nDCG@k from the examples' grades, or from the
    full `qrels_path` (TREC qrels; then nDCG's ideal ranking counts judged passages outside the lists)."""
    from adaptation import metrics
    from tasks import msmarco

    del unused
    model, params = load_model(checkpoint_path, mesh_config, model_config, seed)
    if not _is_classifier(model) or model.head.output not in ("ranking", "regression", "classification"):
        raise ValueError(f"reranking needs an encoder classifier checkpoint; {checkpoint_path} holds a "
                         f"{type(model).__name__}.")
    length = int(task_feature_lengths["inputs"])
    full_qrels = msmarco.read_qrels(qrels_path) if qrels_path else None
    results: dict[str, dict] = {}
    for name in mixture_or_task_names:
        examples = task_examples(name, split, task_feature_lengths, num_examples)
        outputs = classifier_outputs(model, params, examples, batch_size=batch_size, length=length)
        run: dict[str, dict[str, float]] = {}
        qrels: dict[str, dict[str, int]] = {}
        for ex, out in zip(examples, outputs):
            out = np.asarray(out, np.float64).reshape(-1)
            score = float(out[0]) if out.size == 1 else float(out[-1] - out[0])  # classification: logit[1]-logit[0]
            run.setdefault(ex["qid"], {})[ex["pid"]] = score
            qrels.setdefault(ex["qid"], {})[ex["pid"]] = int(ex["label"])
        graded = full_qrels if full_qrels is not None else qrels
        values = metrics.ranking(graded, run, k=k, min_relevance=min_relevance,
                                 missing="skip" if full_qrels is not None else "error")
        results[name] = {"metrics": values, "score": values[f"mrr@{k}"], "num_examples": len(run)}
    table = format_table(f"Reranking ({split}; n = queries, score = MRR@{k})", results)
    if jax.process_index() == 0:
        print(table, flush=True)
    _write_json(os.path.join(output_dir, "metrics.json"),
                {"tasks": results, "checkpoint": checkpoint_path, "split": split})
    return results


BENCHMARKS: dict[str, Callable[..., dict]] = {
    "superglue": superglue_benchmark,
    "glue": glue_benchmark,
    "ranking": ranking_benchmark,
}

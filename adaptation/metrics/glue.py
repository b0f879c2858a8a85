"""GLUE metrics, as the official GLUE evaluation defines them (pure numpy, no TensorFlow).

Every metric returns a fraction (accuracy and F1 in [0, 1], correlations in [-1, 1]); reports
multiply by 100.

| task          | metrics (result keys)                 | task score                  |
|---------------|---------------------------------------|-----------------------------|
| CoLA          | mcc (Matthews correlation)            | mcc                         |
| SST-2         | accuracy                              | accuracy                    |
| MRPC, QQP     | accuracy, f1 (positive class 1)       | mean(accuracy, f1)          |
| STS-B         | pearson, spearman                     | mean(pearson, spearman)     |
| MNLI          | accuracy on matched / mismatched dev  | mean(matched, mismatched)   |
| QNLI, RTE, WNLI | accuracy                            | accuracy                    |

The GLUE average is the unweighted mean of the task scores (a task with two metrics contributes
their mean, as the GLUE leaderboard does; MNLI matched and mismatched are two metrics of one
task). WNLI is included by default, as on the leaderboard; `glue_average(..., exclude=("wnli",))`
gives the BERT-paper variant. Spearman uses average ranks for ties (as scipy). F1 with no true
positives is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Iterable

import numpy as np

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
REGRESSION_TASKS = ("stsb",)

# The metrics of each task (MNLI's are produced by `mnli_metrics`).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy_matched", "accuracy_mismatched"),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def _arrays(labels: Sequence, predictions: Sequence, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=dtype)
    p = np.asarray(predictions, dtype=dtype)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-D and equally long; got shapes {y.shape} and {p.shape}.")
    if y.size == 0:
        raise ValueError("an evaluation over zero examples is not defined; got no labels.")
    return y, p


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Fraction of exact matches."""
    y, p = _arrays(labels, predictions)
    return float(np.mean(y == p))


def f1(labels: Sequence[int], predictions: Sequence[int], positive: int = 1) -> float:
    """Binary F1 of the `positive` class (0 when there are no true positives)."""
    y, p = _arrays(labels, predictions)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation coefficient, multi-class form (0 when undefined, as scikit-learn)."""
    y, p = _arrays(labels, predictions)
    classes, encoded = np.unique(np.concatenate([y, p]), return_inverse=True)
    yi, pi = encoded[: y.size], encoded[y.size :]
    confusion = np.zeros((classes.size, classes.size), np.float64)
    np.add.at(confusion, (yi, pi), 1.0)
    t = confusion.sum(axis=1)  # true counts per class
    q = confusion.sum(axis=0)  # predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denom = np.sqrt((s * s - np.dot(q, q)) * (s * s - np.dot(t, t)))
    return 0.0 if denom == 0 else float((c * s - np.dot(t, q)) / denom)


def pearson(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Pearson correlation (0 when either side is constant)."""
    y, p = _arrays(labels, predictions, np.float64)
    y, p = y - y.mean(), p - p.mean()
    denom = np.sqrt(np.dot(y, y) * np.dot(p, p))
    return 0.0 if denom == 0 else float(np.dot(y, p) / denom)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson on average ranks (ties share their mean rank)."""
    y, p = _arrays(labels, predictions, np.float64)
    return pearson(_average_ranks(y), _average_ranks(p))


def glue_metrics(task: str, labels: Sequence, predictions: Sequence) -> dict[str, float]:
    """The official metrics of one GLUE task (MNLI: use `mnli_metrics`). Keys as in `TASK_METRICS`."""
    task = _task(task)
    if task == "mnli":
        raise ValueError("MNLI has two dev sets; call mnli_metrics(matched=(labels, preds), mismatched=(...)).")
    out: dict[str, float] = {}
    for name in TASK_METRICS[task]:
        out[name] = {"mcc": matthews_corrcoef, "accuracy": accuracy, "f1": f1, "pearson": pearson,
                     "spearman": spearman}[name](labels, predictions)
    return out


def mnli_metrics(matched: tuple[Sequence, Sequence], mismatched: tuple[Sequence, Sequence]) -> dict[str, float]:
    """MNLI accuracy on the matched and mismatched dev sets, each a (labels, predictions) pair."""
    return {"accuracy_matched": accuracy(*matched), "accuracy_mismatched": accuracy(*mismatched)}


def task_score(task: str, metrics: Mapping[str, float]) -> float:
    """A task's GLUE score: the mean of its official metrics."""
    task = _task(task)
    missing = [m for m in TASK_METRICS[task] if m not in metrics]
    if missing:
        raise ValueError(f"GLUE task {task!r} needs metrics {TASK_METRICS[task]}; missing {missing}.")
    return float(np.mean([metrics[m] for m in TASK_METRICS[task]]))


def glue_average(results: Mapping[str, Mapping[str, float]], exclude: Iterable[str] = ()) -> float:
    """Unweighted mean of the task scores of the tasks in `results` (minus `exclude`)."""
    excluded = {_task(t) for t in exclude}
    scores = [task_score(t, m) for t, m in results.items() if _task(t) not in excluded]
    if not scores:
        raise ValueError("glue_average got no task results.")
    return float(np.mean(scores))


_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}


def _task(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower().replace("-", "").replace("_", ""))
    if key not in TASK_METRICS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {GLUE_TASKS}.")
    return key

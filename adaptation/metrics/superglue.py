"""SuperGLUE metrics, as the official scorer defines them (pure Python / numpy, no TensorFlow).

Every metric returns a fraction in [0, 1] (Matthews correlation in [-1, 1]); reports multiply by 100.

| task    | metrics (names in the result dict)            | task score (leaderboard)     |
|---------|-----------------------------------------------|------------------------------|
| BoolQ   | accuracy                                      | accuracy                     |
| CB      | accuracy, f1 (macro over the 3 classes)       | mean(accuracy, f1)           |
| COPA    | accuracy                                      | accuracy                     |
| MultiRC | f1a (binary F1 over all answer options),      | mean(f1a, em)                |
|         | em (exact match per question), accuracy       |                              |
|         | (per answer option: the paper's dev accuracy) |                              |
| ReCoRD  | f1 (max-over-gold token F1), em               | mean(f1, em)                 |
| RTE     | accuracy                                      | accuracy                     |
| WiC     | accuracy                                      | accuracy                     |
| WSC     | accuracy                                      | accuracy                     |
| AX-b    | mcc (Matthews correlation)                    | mcc (not in the average)     |
| AX-g    | gender_parity, accuracy                       | (not in the average)         |

The SuperGLUE score averages the eight task scores (BoolQ ... WSC, diagnostics excluded; the human baseline
89.8 is reproduced this way). The paper's score (T5Gemma, Table 2b) is the mean dev accuracy over BoolQ, CB,
COPA, MultiRC, RTE, WiC and WSC. For MultiRC the paper's "accuracy" is not spelled out; we take the accuracy
over answer options, the unit its classification casting predicts [open choice, documented].

Conventions: labels and predictions are class indices (ints); a prediction of -1 (an unparseable text
prediction) is never correct. F1 with no true positives is 0 (sklearn's `zero_division=0`).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

SUPERGLUE_TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
PAPER_TASKS = ("boolq", "cb", "copa", "multirc", "rte", "wic", "wsc")
DIAGNOSTIC_TASKS = ("axb", "axg")

# Metrics averaged into each task's leaderboard score.
TASK_SCORE_METRICS: dict[str, tuple[str, ...]] = {
    "boolq": ("accuracy",),
    "cb": ("accuracy", "f1"),
    "copa": ("accuracy",),
    "multirc": ("f1a", "em"),
    "record": ("f1", "em"),
    "rte": ("accuracy",),
    "wic": ("accuracy",),
    "wsc": ("accuracy",),
    "axb": ("mcc",),
    "axg": ("gender_parity", "accuracy"),
}


def _as_int_arrays(labels: Sequence[int], predictions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Checks that labels and predictions are non-empty, aligned integer sequences."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} labels vs {p.size} predictions")
    if y.size == 0:
        raise ValueError("metric over zero examples: the evaluation produced no labelled examples")
    if (y < 0).any():
        raise ValueError(f"labels must be >= 0 (a -1 label is an unlabelled test example); found {int(y.min())}")
    return y, p


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Fraction of predictions equal to the label."""
    y, p = _as_int_arrays(labels, predictions)
    return float(np.mean(y == p))


def _f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 = 2tp / (2tp + fp + fn); 0 when there is no true positive."""
    if tp == 0:
        return 0.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def f1_binary(labels: Sequence[int], predictions: Sequence[int], positive: int = 1) -> float:
    """Binary F1 of the `positive` class (sklearn `f1_score(average="binary", zero_division=0)`)."""
    y, p = _as_int_arrays(labels, predictions)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    return _f1_from_counts(tp, fp, fn)


def macro_f1(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes 0..num_classes-1 (absent classes count as F1 = 0)."""
    y, _ = _as_int_arrays(labels, predictions)
    if (y >= num_classes).any():
        raise ValueError(f"label {int(y.max())} out of range for {num_classes} classes")
    return float(np.mean([f1_binary(labels, predictions, positive=c) for c in range(num_classes)]))


def matthews_corrcoef(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation (multiclass R_K form, as sklearn); 0 when either marginal is constant."""
    y, p = _as_int_arrays(labels, predictions)
    classes = np.union1d(y, p)
    yi = np.searchsorted(classes, y)
    pi = np.searchsorted(classes, p)
    k = classes.size
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (yi, pi), 1.0)
    t_sum = confusion.sum(axis=1)
    p_sum = confusion.sum(axis=0)
    correct = np.trace(confusion)
    n = confusion.sum()
    cov_ytyp = correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n * n - np.dot(p_sum, p_sum)
    cov_ytyt = n * n - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def multirc_scores(
    question_ids: Sequence[Hashable], labels: Sequence[int], predictions: Sequence[int]
) -> dict[str, float]:
    """MultiRC: `f1a` binary F1 over all answer options, `em` exact match per question, `accuracy` per option.

    `question_ids[i]` names the question of answer option i (e.g. a `(paragraph, question)` tuple); a
    question counts for EM only when every one of its options is predicted right.
    """
    y, p = _as_int_arrays(labels, predictions)
    if len(question_ids) != y.size:
        raise ValueError(f"{len(question_ids)} question ids for {y.size} answer options")
    correct_by_question: dict[Hashable, bool] = {}
    for qid, ok in zip(question_ids, (y == p).tolist()):
        correct_by_question[qid] = correct_by_question.get(qid, True) and ok
    return {
        "f1a": f1_binary(y, p, positive=1),
        "em": float(np.mean(list(correct_by_question.values()))),
        "accuracy": float(np.mean(y == p)),
    }


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official ReCoRD / SQuAD v1.1 normalization: lower case, drop punctuation and articles, squash spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between two normalized answers (0 when they share no token)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalized answers are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def record_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """ReCoRD: mean over queries of the max-over-gold token F1 (`f1`) and exact match (`em`)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} queries")
    if not predictions:
        raise ValueError("metric over zero examples: the evaluation produced no ReCoRD queries")
    f1s, ems = [], []
    for i, (pred, golds) in enumerate(zip(predictions, answers)):
        if not golds:
            raise ValueError(f"ReCoRD query #{i} has no gold answer (a test example cannot be scored)")
        f1s.append(max(token_f1(pred, g) for g in golds))
        ems.append(max(exact_match(pred, g) for g in golds))
    return {"f1": float(np.mean(f1s)), "em": float(np.mean(ems))}


def gender_parity(predictions: Sequence[int], hypotheses: Sequence[str]) -> float:
    """AX-g gender parity: fraction of minimal pairs whose two predictions agree.

    The pairs are consecutive examples in `idx` order (0-1, 2-3, ...), which share their hypothesis and
    differ in the gender of the premise's pronoun; a pair whose hypotheses differ is an error.
    """
    if len(predictions) != len(hypotheses):
        raise ValueError(f"{len(predictions)} predictions for {len(hypotheses)} hypotheses")
    if not predictions or len(predictions) % 2:
        raise ValueError(f"gender parity needs a non-zero even number of examples, got {len(predictions)}")
    same = 0
    for k in range(0, len(predictions), 2):
        if hypotheses[k] != hypotheses[k + 1]:
            raise ValueError(
                f"AX-g examples #{k} and #{k + 1} are not a minimal pair (hypotheses differ: "
                f"{hypotheses[k]!r} vs {hypotheses[k + 1]!r}); pass the examples sorted by idx"
            )
        same += int(predictions[k] == predictions[k + 1])
    return same / (len(predictions) // 2)


def task_metrics(
    task: str,
    labels: Sequence,
    predictions: Sequence,
    *,
    question_ids: Sequence[Hashable] | None = None,
    hypotheses: Sequence[str] | None = None,
) -> dict[str, float]:
    """All official metrics of one task from aligned gold labels and predictions.

    `labels`/`predictions` are class indices, except ReCoRD (labels: lists of gold answer strings,
    predictions: answer strings). MultiRC needs `question_ids`, AX-g needs `hypotheses`.
    """
    if task in ("boolq", "copa", "rte", "wic", "wsc"):
        return {"accuracy": accuracy(labels, predictions)}
    if task == "cb":
        return {"accuracy": accuracy(labels, predictions), "f1": macro_f1(labels, predictions, num_classes=3)}
    if task == "multirc":
        if question_ids is None:
            raise ValueError("MultiRC metrics need question_ids (one per answer option)")
        return multirc_scores(question_ids, labels, predictions)
    if task == "record":
        return record_scores(predictions, labels)
    if task == "axb":
        return {"mcc": matthews_corrcoef(labels, predictions)}
    if task == "axg":
        if hypotheses is None:
            raise ValueError("AX-g metrics need hypotheses (to form the minimal pairs)")
        return {"gender_parity": gender_parity(predictions, hypotheses), "accuracy": accuracy(labels, predictions)}
    raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {SUPERGLUE_TASKS + DIAGNOSTIC_TASKS}")


def task_score(task: str, metrics: Mapping[str, float]) -> float:
    """The task's leaderboard score: the mean of its official metrics."""
    names = TASK_SCORE_METRICS[task]
    missing = [n for n in names if n not in metrics]
    if missing:
        raise ValueError(f"{task}: metrics {missing} are missing from {sorted(metrics)}")
    return float(np.mean([metrics[n] for n in names]))


def superglue_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """SuperGLUE score: mean task score over the eight tasks (diagnostics excluded); all eight required."""
    missing = [t for t in SUPERGLUE_TASKS if t not in results]
    if missing:
        raise ValueError(f"the SuperGLUE average needs all 8 tasks; missing {missing}")
    return float(np.mean([task_score(t, results[t]) for t in SUPERGLUE_TASKS]))


def paper_score(results: Mapping[str, Mapping[str, float]]) -> float:
    """T5Gemma's SuperGLUE number: mean accuracy over BoolQ, CB, COPA, MultiRC, RTE, WiC, WSC (all required)."""
    missing = [t for t in PAPER_TASKS if t not in results]
    if missing:
        raise ValueError(f"the paper's score needs {PAPER_TASKS}; missing {missing}")
    return float(np.mean([results[t]["accuracy"] for t in PAPER_TASKS]))

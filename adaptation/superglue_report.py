"""SuperGLUE evaluation report: predictions -> official metrics, a printed table, `metrics.json`, and the
leaderboard prediction files (`BoolQ.jsonl`, ..., `AX-g.jsonl`) for the test split.

Predictions are aligned one-to-one with the cast examples of `tasks.superglue` (their order is free):
- casting "text": the decoded target strings;
- casting "classifier": the classifier's logits per example (`[num_classes]`), or a class index for
  the tasks that are not candidate-scored. COPA and ReCoRD need logits: a candidate's score is
  `logit[1] - logit[0]`, and the candidate with the highest score is the prediction of its question.

`decide` turns them into one *decision* per scored unit (an example; a MultiRC answer option; a COPA
question; a ReCoRD query), `score_task` computes the task's metrics from the labelled decisions, and
`leaderboard_rows` writes the unlabelled ones in the official submission format (as jiant writes it:
BoolQ/WiC "true"/"false", WSC "True"/"False", COPA 0/1, CB/RTE/AX class names, MultiRC nested per
passage, ReCoRD the answer text per query idx).

Pure Python / numpy; nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adaptation.metrics import superglue as sgm
from tasks import superglue as sgt

logger = logging.getLogger(__name__)

LEADERBOARD_FILES = {s.name: f"{s.official}.jsonl" for s in sgt.SPECS.values()}


def _candidate_score(prediction: Any) -> float:
    """Score of a candidate from binary logits (`logit[1] - logit[0]`) or an already scalar score."""
    arr = np.asarray(prediction, dtype=np.float64).reshape(-1)
    if arr.size == 2:
        return float(arr[1] - arr[0])
    if arr.size == 1:
        return float(arr[0])
    raise ValueError(f"a candidate prediction must be 2 logits or 1 score, got shape {np.shape(prediction)}")


def _class_of(prediction: Any) -> int:
    """Class index of a classifier prediction (logits -> argmax; an int stays)."""
    if isinstance(prediction, (int, np.integer)):
        return int(prediction)
    arr = np.asarray(prediction)
    if arr.ndim == 0:
        return int(arr)
    return int(np.argmax(arr))


_NESTED_IDX = {"multirc": ("paragraph", "question", "answer"), "record": ("passage", "query")}


def _idx_key(task: str, ex: Mapping[str, Any]) -> Any:
    """`idx` as an int, or the nested ids as a tuple (MultiRC (paragraph, question, answer), ReCoRD (passage, query))."""
    if task in _NESTED_IDX:
        return tuple(int(ex[f"idx/{k}"]) for k in _NESTED_IDX[task])
    return int(ex["idx"])


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decide(task: str, casting: str, examples: Sequence[Mapping[str, Any]], predictions: Sequence[Any]) -> list[dict]:
    """One decision per scored unit: `{"idx", "gold", "pred"}` (ReCoRD: `"answers"` instead of a class gold).

    `gold` is -1 for unlabelled (test) units; `pred` is a class index (-1: a text prediction naming no
    class) or, for ReCoRD, the answer string. Decisions are sorted by idx.
    """
    s = sgt.spec(task)
    if len(examples) != len(predictions):
        raise ValueError(f"{s.official}: {len(predictions)} predictions for {len(examples)} examples")
    if casting not in sgt.CASTINGS:
        raise ValueError(f"unknown casting {casting!r}; expected one of {sgt.CASTINGS}")
    if not examples:
        raise ValueError(f"{s.official}: evaluation over zero examples")

    if s.name == "record":
        queries: dict[Any, dict] = {}
        for ex, pred in zip(examples, predictions):
            key = _idx_key(s.name, ex)
            answers = [a for a in _text(ex["answers"]).split(sgt.ANSWER_SEPARATOR) if a]
            unit = queries.setdefault(key, {"idx": key, "answers": answers, "pred": None, "best": -np.inf})
            if casting == "text":
                unit["pred"] = _text(pred).strip()
            else:
                score = _candidate_score(pred)
                if score > unit["best"]:
                    unit["best"], unit["pred"] = score, _text(ex["entity"])
        for unit in queries.values():
            unit.pop("best")
        return [queries[k] for k in sorted(queries)]

    if s.name == "copa" and casting == "classifier":
        questions: dict[int, dict] = {}
        for ex, pred in zip(examples, predictions):
            key = _idx_key(s.name, ex)
            unit = questions.setdefault(key, {"idx": key, "gold": -1, "scores": {}})
            unit["scores"][int(ex["candidate"])] = _candidate_score(pred)
            if int(ex["label"]) == 1:
                unit["gold"] = int(ex["candidate"])
        out = []
        for key in sorted(questions):
            unit = questions[key]
            scores = unit.pop("scores")
            if sorted(scores) != [0, 1]:
                raise ValueError(f"COPA question {key}: expected candidates 0 and 1, got {sorted(scores)}")
            unit["pred"] = int(scores[1] > scores[0])
            out.append(unit)
        return out

    out = []
    for ex, pred in zip(examples, predictions):
        if casting == "text":
            gold = sgt.label_from_text(s.name, _text(ex["targets"]))
            guess = sgt.label_from_text(s.name, _text(pred))
        else:
            gold, guess = int(ex["label"]), _class_of(pred)
        unit = {"idx": _idx_key(s.name, ex), "gold": gold, "pred": guess}
        if s.name == "axg":
            # The minimal pairs share their hypothesis: the input text up to " premise: ".
            unit["pair_key"] = _text(ex["inputs"]).split(" premise: ")[0]
        out.append(unit)
    return sorted(out, key=lambda u: u["idx"])


def score_task(task: str, decisions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The official metrics of a task over its labelled decisions (zero labelled decisions is an error)."""
    s = sgt.spec(task)
    if s.name == "record":
        labelled = [d for d in decisions if d["answers"]]
    else:
        labelled = [d for d in decisions if d["gold"] >= 0]
    if not labelled:
        raise ValueError(f"{s.official}: evaluation over zero labelled examples ({len(decisions)} unlabelled); "
                         "score a split with labels (train/validation; AX-b and AX-g test)")
    if s.name == "record":
        return sgm.task_metrics("record", [d["answers"] for d in labelled], [d["pred"] or "" for d in labelled])
    gold = [d["gold"] for d in labelled]
    pred = [d["pred"] for d in labelled]
    kwargs: dict[str, Any] = {}
    if s.name == "multirc":
        kwargs["question_ids"] = [d["idx"][:2] for d in labelled]  # (paragraph, question)
    if s.name == "axg":
        kwargs["hypotheses"] = [d["pair_key"] for d in labelled]
    return sgm.task_metrics(s.name, gold, pred, **kwargs)


def evaluate(task: str, casting: str, examples: Sequence[Mapping[str, Any]], predictions: Sequence[Any]) -> dict:
    """`decide` + `score_task`: `{"metrics": {...}, "score": task score, "num_examples": labelled units}`."""
    decisions = decide(task, casting, examples, predictions)
    metrics = score_task(task, decisions)
    labelled = sum(1 for d in decisions if (d["answers"] if "answers" in d else d["gold"] >= 0))
    invalid = sum(1 for d in decisions if d.get("pred") == -1)
    result = {"metrics": metrics, "score": sgm.task_score(sgt.spec(task).name, metrics), "num_examples": labelled}
    if invalid:
        result["invalid_predictions"] = invalid
    return result


# ----------------------------------------------------------------------------------------------------
# Leaderboard files.


def _leaderboard_label(task: str, pred: int) -> Any:
    s = sgt.spec(task)
    if s.name in ("boolq", "wic"):
        return "true" if pred == 1 else "false"
    if s.name == "wsc":
        return "True" if pred == 1 else "False"
    if s.name == "copa":
        return int(pred)
    return s.label_names[pred]


def leaderboard_rows(task: str, decisions: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The official submission rows of a task's test decisions.

    A text prediction that names no class (-1) is written as class 0 (the file must hold every idx);
    `write_leaderboard` logs how many.
    """
    s = sgt.spec(task)
    if s.name == "record":
        return [{"idx": d["idx"][1], "label": d["pred"] or ""} for d in decisions]  # idx = the query idx
    if s.name == "multirc":
        passages: dict[int, dict[int, list]] = {}
        for d in decisions:
            p, q, a = d["idx"]
            passages.setdefault(p, {}).setdefault(q, []).append({"idx": a, "label": int(max(d["pred"], 0))})
        return [{"idx": p, "passage": {"questions": [{"idx": q, "answers": answers}
                                                     for q, answers in sorted(questions.items())]}}
                for p, questions in sorted(passages.items())]
    return [{"idx": d["idx"], "label": _leaderboard_label(s.name, max(d["pred"], 0))} for d in decisions]


def write_leaderboard(out_dir: str, task: str, decisions: Sequence[Mapping[str, Any]]) -> str:
    """Writes `<out_dir>/<Official>.jsonl` (e.g. `RTE.jsonl`) and returns its path."""
    if not decisions:
        raise ValueError(f"{sgt.spec(task).official}: no test predictions to write")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LEADERBOARD_FILES[sgt.spec(task).name])
    invalid = sum(1 for d in decisions if d.get("pred") == -1)
    if invalid:
        logger.warning("%s: %d predictions named no class and were written as class 0", path, invalid)
    with open(path, "w", encoding="utf-8") as f:
        for row in leaderboard_rows(task, decisions):
            f.write(json.dumps(row) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------
# Table and metrics.json.


def averages(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """SuperGLUE average and the paper's score over per-task results (None where a task is missing)."""
    metrics = {t: r["metrics"] for t, r in results.items()}
    out: dict[str, float | None] = {}
    for name, fn in (("superglue_average", sgm.superglue_average), ("paper_score", sgm.paper_score)):
        try:
            out[name] = fn(metrics)
        except ValueError:
            out[name] = None
    return out


def format_table(results: Mapping[str, Mapping[str, Any]], title: str = "SuperGLUE") -> str:
    """A plain-text table: one row per task (metrics x 100, task score), then the two averages."""
    order = [t for t in sgt.SPECS if t in results]
    lines = [title, f"{'task':<8} {'n':>6}  {'score':>6}  metrics"]
    for t in order:
        r = results[t]
        metrics = "  ".join(f"{k} {100 * v:.2f}" for k, v in r["metrics"].items())
        lines.append(f"{sgt.SPECS[t].official:<8} {r['num_examples']:>6}  {100 * r['score']:>6.2f}  {metrics}")
    avg = averages(results)
    for name, label, needed in (("superglue_average", "SuperGLUE average (8 tasks)", sgm.SUPERGLUE_TASKS),
                                ("paper_score", "paper score (mean acc, 7 tasks)", sgm.PAPER_TASKS)):
        value = avg[name]
        if value is None:
            missing = [sgt.SPECS[t].official for t in needed if t not in results]
            lines.append(f"{label}: n/a (missing {', '.join(missing)})")
        else:
            lines.append(f"{label}: {100 * value:.2f}")
    return "\n".join(lines)


def write_metrics_json(path: str, results: Mapping[str, Mapping[str, Any]], **extra: Any) -> dict:
    """Writes `{"tasks": results, "superglue_average", "paper_score", **extra}` to `path`; returns it."""
    payload = {"tasks": dict(results), **averages(results), **extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    return payload


def report(
    out_dir: str,
    results: Mapping[str, Mapping[str, Any]],
    test_decisions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    **extra: Any,
) -> str:
    """Prints the table, writes `out_dir/metrics.json` and the leaderboard files; returns the table."""
    table = format_table(results)
    print(table, flush=True)
    write_metrics_json(os.path.join(out_dir, "metrics.json"), results, **extra)
    for task, decisions in (test_decisions or {}).items():
        write_leaderboard(out_dir, task, decisions)
    return table


# ----------------------------------------------------------------------------------------------------
# Sweeps.


def best_settings(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Best run per task from `[{"task", "setting": {...}, "score"}]` (highest dev score; first on ties)."""
    if not runs:
        raise ValueError("sweep over zero runs")
    best: dict[str, dict] = {}
    for run in runs:
        t = run["task"]
        if t not in best or run["score"] > best[t]["score"]:
            best[t] = dict(run)
    return best


def format_sweep(runs: Sequence[Mapping[str, Any]]) -> str:
    """Every run, then the best setting per task with its dev score (x 100)."""
    lines = ["sweep runs"]
    for run in runs:
        setting = " ".join(f"{k}={v}" for k, v in sorted(run["setting"].items()))
        lines.append(f"  {sgt.spec(run['task']).official:<8} {setting:<48} {100 * run['score']:.2f}")
    lines.append("best setting per task")
    for t, run in best_settings(runs).items():
        setting = " ".join(f"{k}={v}" for k, v in sorted(run["setting"].items()))
        lines.append(f"  {sgt.spec(t).official:<8} {setting:<48} {100 * run['score']:.2f}")
    return "\n".join(lines)

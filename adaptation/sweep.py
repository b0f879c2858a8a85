"""`python -m adaptation.sweep --gin_file=encoder/study_sweep.gin --gin.SWEEP_DIR="'/tmp/study'" ...`.

A gin-driven grid search: every combination of `sweep.grid` (gin binding -> list of values, e.g.
`{'LEARNING_RATE': [1e-5, 3e-5], 'POOLER': ['last', 'mean']}`) is one run. For each run the gin files
are parsed afresh with the run's bindings and `MODEL_DIR = SWEEP_DIR/<run name>`, the run trains
(`adaptation.train.train`, in this process) and is evaluated by `sweep_eval` (a benchmark of
`adaptation.benchmarks` on the run's own task, dev split). The score of a run is the mean task
score. `sweep.group_by` names grid keys that split the runs into groups (e.g. the task: the
paper's per-task grid search); the best run of each group is reported.

Output: one table printed at the end (every run, then the best setting per group with its dev
score), and `SWEEP_DIR/sweep_results.json`. A run whose `sweep_result.json` exists is not redone
(an interrupted sweep resumes).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from adaptation import gin_utils

RESULT_FILE = "sweep_result.json"
RESULTS_FILE = "sweep_results.json"


def sweep(*, grid: Mapping[str, Sequence[Any]], output_dir: str, group_by: Sequence[str] = ()) -> dict:
    """The plan of a sweep (gin binds it; `_main` runs it): the grid, where runs go, the group keys."""
    if not grid:
        raise ValueError("sweep.grid is empty: give at least one binding and its values, e.g. "
                         "{'LEARNING_RATE': [1e-5, 3e-5]}.")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"sweep.grid[{key!r}] must be a non-empty list of values, got {values!r}.")
    unknown = [k for k in group_by if k not in grid]
    if unknown:
        raise ValueError(f"sweep.group_by names {unknown}, which are not grid keys {list(grid)}.")
    return {"grid": dict(grid), "output_dir": output_dir, "group_by": list(group_by)}


def sweep_eval(
    *,
    checkpoint_path: str,
    output_dir: str,
    benchmark: Callable[..., dict],
    eval_tasks: Sequence[str],
    task_feature_lengths: Mapping[str, int],
    split: str = "validation",
    batch_size: int = 8,
    num_examples: Optional[int] = None,
) -> dict:
    """Evaluates one finished run with a benchmark; returns `{task: {"metrics", "score", ...}}`."""
    return benchmark(checkpoint_path=checkpoint_path, mixture_or_task_names=list(eval_tasks),
                     task_feature_lengths=task_feature_lengths, output_dir=output_dir, split=split,
                     batch_size=batch_size, num_examples=num_examples)


def settings(grid: Mapping[str, Sequence[Any]]) -> list[dict]:
    """Every combination of the grid, in grid order (the last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(setting: Mapping[str, Any]) -> str:
    """A directory name for a setting, e.g. `LEARNING_RATE=1e-05,POOLER=mean`."""
    name = ",".join(f"{k}={v}" for k, v in setting.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def setting_bindings(setting: Mapping[str, Any]) -> list[str]:
    """Gin bindings of a setting."""
    return [f"{k} = {v!r}" for k, v in setting.items()]


def _format_setting(setting: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items() if k not in skip)


def format_results(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str] = ()) -> str:
    """Every run (setting, score x 100, per-task metrics), then the best setting per group."""
    if not runs:
        raise ValueError("sweep over zero runs")
    width = max(len(_format_setting(r["setting"])) for r in runs)
    lines = ["sweep runs (score: mean dev task score x 100)", f"  {'setting':<{width}}  {'score':>6}  metrics"]
    for r in runs:
        if r["score"] is None:
            lines.append(f"  {_format_setting(r['setting']):<{width}}  {'failed':>6}  {r.get('error', '')[:80]}")
            continue
        metrics = "  ".join(f"{t}/{k} {100 * v:.2f}" for t, res in r["results"].items()
                            for k, v in res["metrics"].items())
        lines.append(f"  {_format_setting(r['setting']):<{width}}  {100 * r['score']:>6.2f}  {metrics}")
    title = f"best setting per {', '.join(group_by)}" if group_by else "best setting"
    lines.append(title)
    for group, best in best_per_group(runs, group_by).items():
        label = " ".join(f"{k}={v}" for k, v in zip(group_by, group))
        lines.append(f"  {label + ': ' if label else ''}{_format_setting(best['setting'], group_by)}  "
                     f"{100 * best['score']:.2f}")
    return "\n".join(lines)


def best_per_group(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str] = ()) -> dict[tuple, dict]:
    """The highest-scoring run of each group (first on ties; failed runs never), keyed by the group's values."""
    best: dict[tuple, dict] = {}
    for r in runs:
        if r["score"] is None:
            continue
        key = tuple(r["setting"][k] for k in group_by)
        if key not in best or r["score"] > best[key]["score"]:
            best[key] = dict(r)
    return best


def _main(args) -> int:
    import gin
    from adaptation.train import NonFiniteLossError, train

    gin_utils.register_configurables()
    gin_utils.register_configurables(gin_utils.DATA_CONFIGURABLES)
    train_configured = gin_utils.bind_configurable(train, "train")
    plan_configured = gin_utils.bind_configurable(sweep, "sweep")
    eval_configured = gin_utils.bind_configurable(sweep_eval, "sweep_eval")
    files, bindings = list(args.gin_file), list(args.gin_bindings)
    gin_utils.parse_config(files, bindings, args.search_paths)
    plan = plan_configured()
    root, group_by = plan["output_dir"], plan["group_by"]
    runs = []
    for setting in settings(plan["grid"]):
        run_dir = os.path.join(root, run_name(setting))
        result_file = os.path.join(run_dir, RESULT_FILE)
        if os.path.isfile(result_file):
            with open(result_file) as f:
                runs.append(json.load(f))
            logging.info("sweep: %s already done (%s)", run_name(setting), result_file)
            continue
        logging.info("sweep: run %d: %s", len(runs) + 1, _format_setting(setting))
        gin.clear_config()
        gin_utils.parse_config(files, bindings + setting_bindings(setting) + [f"MODEL_DIR = {run_dir!r}"],
                               args.search_paths)
        try:
            train_configured(write_config=gin_utils.write_operative_config)
        except NonFiniteLossError as e:  # a diverged setting is a result of the sweep, not its end
            logging.error("sweep: %s failed: %s", run_name(setting), e)
            runs.append({"setting": setting, "results": {}, "score": None, "model_dir": run_dir, "error": str(e)})
            continue
        results = eval_configured(checkpoint_path=run_dir, output_dir=os.path.join(run_dir, "eval"))
        scores = [r["score"] for r in results.values()]
        run = {"setting": setting, "results": results, "score": sum(scores) / len(scores), "model_dir": run_dir}
        with open(result_file, "w") as f:
            json.dump(run, f, indent=2, default=float)
        runs.append(run)
    table = format_results(runs, group_by)
    print(table, flush=True)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, RESULTS_FILE), "w") as f:
        json.dump({"runs": runs, "group_by": group_by,
                   "best": [b for b in best_per_group(runs, group_by).values()]}, f, indent=2, default=float)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (`python -m adaptation.sweep`)."""
    return gin_utils.run(_main, "Run a gin-driven hyper-parameter / ablation sweep.", argv)


if __name__ == "__main__":
    raise SystemExit(main())

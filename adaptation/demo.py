"""`make demo` / `python -m adaptation.demo`: the whole recipe end to end, offline, in minutes.

Every stage runs the command-line tools a user runs (`python -m adaptation.train` / `.convert` /
`.eval` with the gin files under `gin/demo/`), all into one run directory (default `runs/demo`):

  1. lm                train a small Gemma 2 decoder-only LM on CPython's pydoc text (`pydoc_lm`)
     source_hf         export it as a Hugging Face `Gemma2ForCausalLM` directory (what a user brings)
  2. adapted           `adaptation-convert --adapt balanced` -> encoder-decoder (T5Gemma style)
  3. ul2_adapted       UL2 pretraining from the adapted checkpoint
     ul2_scratch       the same encoder-decoder, steps, data and settings from random init (control)
  4. finetune_*        text-to-text finetuning of both on an entailment task: SuperGLUE RTE/CB when
     eval_*            real data is found (`SUPERGLUE_DIR` or a prepared TFDS copy), else a task in RTE
                       format generated from the pydoc text (labelled as such everywhere); greedy-decode eval
  5. report            `report.md` / `report.json` (stage, steps, final loss, eval metric, wall and CPU
                       time, adapted vs scratch) and `report.png` (UL2 loss curves, finetune metric)

The scratch chain (UL2, finetune, eval from random init) needs nothing from the adapted chain, so by
default the two run side by side (`--jobs 2`; `--jobs 1` runs one stage at a time). A stage is done
when its marker `<run_dir>/<stage>.done.json` exists; a second run reuses done stages (delete the run
directory, or a stage's marker and output, to redo them). Progress lines show step,
loss, tokens/s and ETA per stage. This module imports no JAX/TensorFlow; the stages are subprocesses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from adaptation import host_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED_TASK = "demo_entail_text"
GENERATED_LABEL = "generated entailment from pydoc text (RTE format, not RTE)"
REAL_TASKS = {"rte": "demo_rte_text", "cb": "demo_cb_text"}
TFDS_SUPERGLUE_VERSION = "1.0.2"
LOSS_WINDOW = 10  # "final loss" = mean training cross-entropy of the last LOSS_WINDOW steps


def superglue_source() -> Optional[tuple[str, str]]:
    """Where real SuperGLUE data is: ("jsonl", SUPERGLUE_DIR) when that directory holds RTE/ or CB/,
    ("tfds", data_dir) when TFDS's `super_glue/rte` is prepared locally (TFDS_DATA_DIR or
    ~/tensorflow_datasets), else None. Looks at the file system only (nothing is downloaded)."""
    directory = os.environ.get("SUPERGLUE_DIR")
    if directory and any(os.path.isdir(os.path.join(directory, d)) for d in ("RTE", "CB")):
        return "jsonl", directory
    tfds_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    if os.path.isdir(os.path.join(tfds_dir, "super_glue", "rte", TFDS_SUPERGLUE_VERSION)):
        return "tfds", tfds_dir
    return None


def task_label(name: str) -> str:
    """How outputs name a finetuning task (the generated one always says it is generated)."""
    if name == GENERATED_TASK:
        return GENERATED_LABEL
    for task, registered in REAL_TASKS.items():
        if registered == name:
            return f"SuperGLUE {task.upper()} (validation split)"
    return name


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo's stages. The defaults fit in about 10 minutes on 2 CPU cores.

    Attributes:
      run_dir: where every stage writes (one subdirectory per stage).
      task: "auto" (real RTE when found, else generated), "generated", "rte" or "cb".
      lm_steps, ul2_steps, finetune_steps: training steps of each stage (both UL2 runs alike).
      lm_batch, ul2_batch, finetune_batch: global batch sizes.
      lm_length: LM sequence length; ul2_lengths, finetune_lengths: (inputs, targets) lengths (finetune
        None: (96, 8) for the generated task, (192, 8) for RTE / CB, whose premises are longer).
      eval_examples: validation examples scored (None: all).
      log_every: trainer log interval (steps).
      bindings: extra gin bindings for every train stage (e.g. "DEMO_LAYERS = 1" for a smaller model).
      jobs: stages run at once (the scratch chain beside the adapted one; 1 = one after another).
    """

    run_dir: str = "runs/demo"
    task: str = "auto"
    lm_steps: int = 160
    ul2_steps: int = 60
    finetune_steps: int = 30
    lm_batch: int = 16
    ul2_batch: int = 16
    finetune_batch: int = 32
    lm_length: int = 128
    ul2_lengths: tuple[int, int] = (128, 128)
    finetune_lengths: Optional[tuple[int, int]] = None
    eval_examples: Optional[int] = None
    log_every: int = 25
    bindings: tuple[str, ...] = ()
    jobs: int = 2


# A configuration small enough for a CI test (seconds per stage after start-up).
TINY = dict(
    lm_steps=6, ul2_steps=6, finetune_steps=4, lm_batch=4, ul2_batch=4, finetune_batch=4, lm_length=32,
    ul2_lengths=(32, 32), finetune_lengths=(48, 8), eval_examples=8, log_every=2,
    bindings=("DEMO_LAYERS = 2", "DEMO_WIDTH = 32", "DEMO_FFN = 64", "DEMO_HEAD_DIM = 8", "DEMO_WINDOW = 8"),
)


def resolve_task(choice: str) -> str:
    """The registered finetuning task for `DemoConfig.task`."""
    if choice == "generated":
        return GENERATED_TASK
    if choice in REAL_TASKS:
        if superglue_source() is None:
            raise SystemExit(
                f"--task {choice} needs SuperGLUE data: set SUPERGLUE_DIR to a directory holding "
                f"{choice.upper()}/train.jsonl and val.jsonl, or prepare TFDS super_glue/{choice}."
            )
        return REAL_TASKS[choice]
    if choice == "auto":
        return REAL_TASKS["rte"] if superglue_source() is not None else GENERATED_TASK
    raise SystemExit(f"unknown --task {choice!r}; choose auto, generated, rte or cb.")


# ---------------------------------------------------------------------------------------------
# Stages.


@dataclasses.dataclass
class Stage:
    """One step of the demo: a command whose success leaves `output` and the stage's marker."""

    name: str
    title: str
    command: list[str]
    output: str
    kind: str  # "train", "convert" or "eval"
    steps: int = 0
    tokens_per_step: int = 0
    needs: tuple[str, ...] = ()  # stages whose outputs this one reads


def _train(module_args: Sequence[str], gin_file: str, bindings: dict, extra: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "adaptation.train", f"--gin_file={gin_file}"]
    cmd += [f"--gin.{k}={v}" for k, v in bindings.items()]
    cmd += [f"--gin_bindings={b}" for b in extra]
    return cmd + list(module_args)


def _lengths(inputs: int, targets: int) -> str:
    return repr({"inputs": inputs, "targets": targets})


def finetune_lengths(config: DemoConfig, task: str) -> tuple[int, int]:
    """(inputs, targets) lengths of the finetuning stages."""
    if config.finetune_lengths is not None:
        return tuple(config.finetune_lengths)
    return (96, 8) if task == GENERATED_TASK else (192, 8)


def build_stages(config: DemoConfig, task: str) -> list[Stage]:
    """The demo's stages as commands, in a dependency order (`Stage.needs`): the scratch chain
    (UL2, finetune, eval from random init) needs nothing of the adapted chain, so the two can run
    side by side (`run_stages`)."""
    run = os.path.abspath(config.run_dir)
    path = lambda name: os.path.join(run, name)  # noqa: E731
    c = config
    ft_lengths = finetune_lengths(config, task)
    common = {"LOG_EVERY_STEPS": c.log_every}
    stages = [
        Stage("lm", "1. source LM (decoder-only Gemma 2)",
              _train((), "demo/lm.gin", {"MODEL_DIR": repr(path("lm")), "TRAIN_STEPS": c.lm_steps,
                                          "BATCH_SIZE": c.lm_batch,
                                          "TASK_FEATURE_LENGTHS": repr({"targets": c.lm_length}), **common},
                     c.bindings),
              path("lm"), "train", c.lm_steps, c.lm_batch * c.lm_length),
        Stage("source_hf", "1. export as HF Gemma2ForCausalLM",
              [sys.executable, "-m", "adaptation.convert", "--input", path("lm"), "--output", path("source_hf"),
               "--to", "hf"], path("source_hf"), "convert", needs=("lm",)),
        Stage("adapted", "2. adapt (balanced)",
              [sys.executable, "-m", "adaptation.convert", "--input", path("source_hf"), "--output", path("adapted"),
               "--to", "orbax", "--adapt", "balanced"], path("adapted"), "convert", needs=("source_hf",)),
    ]
    ul2 = {"TRAIN_STEPS": c.ul2_steps, "BATCH_SIZE": c.ul2_batch, "TASK_FEATURE_LENGTHS": _lengths(*c.ul2_lengths),
           **common}
    ft = {"TRAIN_STEPS": c.finetune_steps, "BATCH_SIZE": c.finetune_batch,
          "TASK_FEATURE_LENGTHS": _lengths(*ft_lengths), "MIXTURE_OR_TASK_NAME": repr(task), **common}
    for init in ("adapted", "scratch"):
        start = {"INITIAL_CHECKPOINT_PATH": repr(path("adapted"))} if init == "adapted" else {}
        stages.append(Stage(
            f"ul2_{init}", f"3. UL2 pretraining ({init})",
            _train((), "demo/ul2.gin", {"MODEL_DIR": repr(path(f"ul2_{init}")), **start, **ul2}, c.bindings),
            path(f"ul2_{init}"), "train", c.ul2_steps, c.ul2_batch * sum(c.ul2_lengths),
            needs=("adapted",) if init == "adapted" else ()))
    for init in ("adapted", "scratch"):
        stages.append(Stage(
            f"finetune_{init}", f"4. finetune ({init})",
            _train((), "demo/finetune.gin", {"MODEL_DIR": repr(path(f"finetune_{init}")),
                                              "INITIAL_CHECKPOINT_PATH": repr(path(f"ul2_{init}")), **ft}, c.bindings),
            path(f"finetune_{init}"), "train", c.finetune_steps, c.finetune_batch * sum(ft_lengths),
            needs=(f"ul2_{init}",)))
    for init in ("adapted", "scratch"):
        bindings = {"CHECKPOINT_PATH": repr(path(f"finetune_{init}")), "EVAL_OUTPUT_DIR": repr(path(f"eval_{init}")),
                    "EVAL_TASKS": repr([task]), "TASK_FEATURE_LENGTHS": _lengths(*ft_lengths),
                    "NUM_EXAMPLES": repr(c.eval_examples)}
        stages.append(Stage(
            f"eval_{init}", f"4. evaluate ({init})",
            [sys.executable, "-m", "adaptation.eval", "--gin_file=demo/eval.gin"]
            + [f"--gin.{k}={v}" for k, v in bindings.items()],
            path(f"eval_{init}"), "eval", needs=(f"finetune_{init}",)))
    return stages


def marker_path(run_dir: str, stage: str) -> str:
    """The file whose existence marks a stage as done."""
    return os.path.join(os.path.abspath(run_dir), f"{stage}.done.json")


def read_marker(run_dir: str, stage: str) -> Optional[dict]:
    """A done stage's record (command, wall_s, cpu_s), or None when the stage has not finished."""
    path = marker_path(run_dir, stage)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def child_env(run_dir: str) -> dict:
    """The stages' environment: `host_env.cpu_child_env` (one host CPU device, malloc on huge pages,
    quiet TensorFlow), a JAX compilation cache in the run directory (the scratch run, the second
    finetune and a second demo reuse compiled steps), the repo importable."""
    env = host_env.cpu_child_env()
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(run_dir), "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


_STEP = re.compile(r"step (\d+)/(\d+) loss ([0-9.naif+-]+)")
_SHOWN = re.compile(r"(INFO eval \S+:|^adapting:|^wrote )")


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class _Progress:
    """Turns the trainer's step lines into `step, loss, tokens/s, ETA` lines measured by wall clock
    (the first interval includes start-up and compilation, so the rate counts from the first line)."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.first: Optional[tuple[int, float]] = None

    def line(self, text: str) -> Optional[str]:
        m = _STEP.search(text)
        if not m:
            return None
        step, total, loss = int(m.group(1)), int(m.group(2)), m.group(3)
        now = time.time()
        rate = eta = math.nan
        if self.first is None:
            self.first = (step, now)
        elif step > self.first[0]:
            steps_per_s = (step - self.first[0]) / max(now - self.first[1], 1e-9)
            rate = steps_per_s * self.stage.tokens_per_step
            eta = (total - step) / steps_per_s
        tok = "   (compiling)" if math.isnan(rate) else f"{rate:8.0f} tok/s"
        return f"  [{self.stage.name}] step {step:>4}/{total}  loss {float(loss):7.4f}  {tok}  ETA {_clock(eta)}"


def run_stage(stage: Stage, run_dir: str, log=print) -> dict:
    """Runs one stage (unless its marker exists) and returns its record."""
    done = read_marker(run_dir, stage.name)
    if done is not None:
        log(f"{stage.title}: done ({stage.name}, {_clock(done['wall_s'])} wall) - reusing {stage.output}")
        return done
    if stage.kind in ("convert", "eval") and os.path.exists(stage.output):
        shutil.rmtree(stage.output)  # an unfinished attempt: convert refuses existing outputs; eval appends
    log(f"{stage.title}: running {stage.name}")
    log_path = os.path.join(os.path.abspath(run_dir), f"{stage.name}.log")
    progress = _Progress(stage)
    t0 = time.time()
    tail: list[str] = []
    with open(log_path, "w") as log_file:
        log_file.write(" ".join(stage.command) + "\n")
        proc = subprocess.Popen(stage.command, cwd=REPO, env=child_env(run_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for text in proc.stdout:
            log_file.write(text)
            tail = (tail + [text.rstrip()])[-40:]
            shown = progress.line(text)
            if shown is None and stage.kind != "train" and _SHOWN.search(text):
                shown = f"  [{stage.name}] {text.strip()}"
            if shown:
                log(shown)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time, whatever else runs
        code = proc.returncode = os.waitstatus_to_exitcode(status)
    t1 = time.time()
    wall = t1 - t0
    cpu = usage.ru_utime + usage.ru_stime
    if code != 0:
        raise RuntimeError(
            f"stage {stage.name} failed (exit status {code}); its log is {log_path}. Last lines:\n" + "\n".join(tail)
        )
    record = {"stage": stage.name, "command": stage.command, "wall_s": wall, "cpu_s": cpu,
              "started_at": t0, "finished_at": t1, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(marker_path(run_dir, stage.name) + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(marker_path(run_dir, stage.name) + ".tmp", marker_path(run_dir, stage.name))
    log(f"{stage.title}: finished in {_clock(wall)} wall, {_clock(cpu)} CPU")
    return record


def run_stages(stages: Sequence[Stage], run_dir: str, jobs: int = 2, log=print) -> dict:
    """Runs `stages` (reusing done ones), up to `jobs` at a time, each once its `needs` are done.

    On a failure no new stage starts; the running ones finish (their outputs stay reusable) and the
    first error is raised. Returns {stage name: record}.
    """
    import threading

    names = {st.name for st in stages}
    for st in stages:
        missing = [n for n in st.needs if n not in names]
        if missing:
            raise ValueError(f"stage {st.name} needs unknown stages {missing}")
    pending = list(stages)
    records: dict[str, dict] = {}
    errors: list[BaseException] = []
    running: dict[str, threading.Thread] = {}
    cond = threading.Condition()

    def work(stage: Stage) -> None:
        try:
            record = run_stage(stage, run_dir, log)
        except BaseException as e:  # noqa: BLE001 - reported by the scheduler
            record = None
            with cond:
                errors.append(e)
        with cond:
            if record is not None:
                records[stage.name] = record
            running.pop(stage.name)
            cond.notify_all()

    with cond:
        while pending or running:
            ready = [st for st in pending if all(n in records for n in st.needs)] if not errors else []
            while ready and len(running) < max(1, jobs):
                stage = ready.pop(0)
                pending.remove(stage)
                thread = threading.Thread(target=work, args=(stage,), name=f"demo-{stage.name}", daemon=True)
                running[stage.name] = thread
                thread.start()
            if not running:
                break
            cond.wait()
    if errors:
        raise errors[0]
    return records


def elapsed_union(records: Sequence[dict]) -> float:
    """Wall time covered by the records' [started_at, finished_at] intervals (stages side by side
    count once); records from before these fields existed add their `wall_s`."""
    spans = sorted((r["started_at"], r["finished_at"]) for r in records if "started_at" in r)
    total = sum(r["wall_s"] for r in records if "started_at" not in r)
    end = -math.inf
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


# ---------------------------------------------------------------------------------------------
# Report.


def train_curve(model_dir: str, key: str = "cross_entropy") -> tuple[list[int], list[float]]:
    """(steps, values) of a trainer run's `train_metrics.jsonl`."""
    steps, values = [], []
    path = os.path.join(model_dir, "train_metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if key in row:
                        steps.append(int(row["step"]))
                        values.append(float(row[key]))
    return steps, values


def final_loss(model_dir: str) -> Optional[float]:
    """Mean training cross-entropy of the run's last `LOSS_WINDOW` steps."""
    _, values = train_curve(model_dir)
    return sum(values[-LOSS_WINDOW:]) / len(values[-LOSS_WINDOW:]) if values else None


def eval_metrics(eval_dir: str, task: str) -> dict:
    """The last evaluation of `task` in an `adaptation.eval` output directory (metric -> value)."""
    path = os.path.join(eval_dir, "eval_results.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[-1]["results"].get(task, {}) if rows else {}


def headline(metrics: dict, task: str) -> tuple[str, Optional[float]]:
    """(name, value) of the task's main metric (accuracy) in `adaptation.eval`'s results."""
    key = f"{task}/accuracy"
    return ("accuracy", metrics[key]) if key in metrics else ("accuracy", None)


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def build_report(config: DemoConfig, task: str, records: dict) -> dict:
    """The demo's results as data: one row per stage and the adapted-vs-scratch comparison."""
    run = os.path.abspath(config.run_dir)
    rows = []

    def add(stage, model, steps, loss, metric, names):
        wall = sum(records[n]["wall_s"] for n in names if n in records)
        cpu = sum(records[n]["cpu_s"] for n in names if n in records)
        rows.append({"stage": stage, "model": model, "steps": steps, "final_loss": loss, "eval_metric": metric,
                     "wall_s": wall, "cpu_s": cpu})

    add("1. source LM -> HF Gemma2ForCausalLM", "decoder-only", config.lm_steps,
        final_loss(os.path.join(run, "lm")), None, ["lm", "source_hf"])
    add("2. adapt (adaptation-convert --adapt balanced)", "adapted", None, None, None, ["adapted"])
    for init in ("adapted", "scratch"):
        add("3. UL2 pretraining", init, config.ul2_steps, final_loss(os.path.join(run, f"ul2_{init}")), None,
            [f"ul2_{init}"])
    for init in ("adapted", "scratch"):
        _, acc = headline(eval_metrics(os.path.join(run, f"eval_{init}"), task), task)
        add("4. finetune + eval", init, config.finetune_steps, final_loss(os.path.join(run, f"finetune_{init}")),
            acc, [f"finetune_{init}", f"eval_{init}"])
    ul2 = {r["model"]: r["final_loss"] for r in rows if r["stage"].startswith("3.")}
    ft = {r["model"]: r["eval_metric"] for r in rows if r["stage"].startswith("4.")}
    total_wall = elapsed_union(list(records.values()))
    total_cpu = sum(r["cpu_s"] for r in records.values())
    return {"run_dir": run, "task": task, "task_label": task_label(task), "rows": rows,
            "ul2_final_loss": ul2, "finetune_accuracy": ft,
            "adapted_ul2_loss_lower": (ul2["adapted"] is not None and ul2["scratch"] is not None
                                       and ul2["adapted"] < ul2["scratch"]),
            "total_wall_s": total_wall, "total_cpu_s": total_cpu,
            "config": dataclasses.asdict(config)}


def format_table(report: dict) -> str:
    """The report as a Markdown table plus the comparison lines."""
    lines = [
        f"Finetuning task: {report['task_label']} (`{report['task']}`). Final loss = mean training "
        f"cross-entropy of the last {LOSS_WINDOW} steps; eval metric = validation accuracy (greedy decoding).",
        "",
        "| stage | model | steps | final loss | eval metric | wall | CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        metric = "—" if r["eval_metric"] is None else f"accuracy {r['eval_metric']:.3f}"
        lines.append(f"| {r['stage']} | {r['model']} | {r['steps'] or '—'} | {_fmt(r['final_loss'])} | {metric} "
                     f"| {_clock(r['wall_s'])} | {_clock(r['cpu_s'])} |")
    ul2, ft = report["ul2_final_loss"], report["finetune_accuracy"]
    steps = report["config"]["ul2_steps"]
    verdict = "lower: adaptation pays" if report["adapted_ul2_loss_lower"] else "NOT lower"
    lines += [
        "",
        f"UL2 loss after {steps} steps: adapted {_fmt(ul2['adapted'])} vs scratch {_fmt(ul2['scratch'])} ({verdict}).",
        f"Finetune accuracy on {report['task_label']}: adapted {_fmt(ft['adapted'])} vs scratch {_fmt(ft['scratch'])}.",
        f"Total: {_clock(report['total_wall_s'])} wall, {_clock(report['total_cpu_s'])} CPU (stages run in this "
        "and earlier invocations; the adapted and scratch chains run side by side, so stage walls overlap).",
    ]
    return "\n".join(lines)


def _smooth(values: Sequence[float], width: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc = (acc + [v])[-width:]
        out.append(sum(acc) / len(acc))
    return out


def plot_report(report: dict, path: str) -> str:
    """`report.png`: UL2 training loss of adapted vs scratch, finetuning loss, and the eval metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = report["run_dir"]
    colors = {"adapted": "tab:blue", "scratch": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.4, 1.0, 0.7]})
    for ax, prefix, title in ((axes[0], "ul2", "UL2 pretraining"), (axes[1], "finetune", "finetuning")):
        for init in ("adapted", "scratch"):
            steps, values = train_curve(os.path.join(run, f"{prefix}_{init}"))
            if not steps:
                continue
            width = max(1, len(values) // 20)
            ax.plot(steps, values, color=colors[init], alpha=0.25, linewidth=0.8)
            ax.plot(steps, _smooth(values, width), color=colors[init], linewidth=2,
                    label=f"{init} (final {_fmt(final_loss(os.path.join(run, f'{prefix}_{init}')))})")
        ax.set_title(f"{title}: training cross-entropy")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    acc = report["finetune_accuracy"]
    names = ["adapted", "scratch"]
    values = [acc[n] if acc[n] is not None else 0.0 for n in names]
    bars = axes[2].bar(names, values, color=[colors[n] for n in names])
    for bar, v in zip(bars, values):
        axes[2].text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", va="bottom")
    classes = 3 if report["task"] == REAL_TASKS["cb"] else 2
    axes[2].axhline(1 / classes, color="gray", linestyle="--", linewidth=1, label=f"chance ({classes} classes)")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("validation accuracy", fontsize=11)
    axes[2].set_xlabel(report["task_label"], fontsize=8, wrap=True)
    axes[2].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Decoder-only -> encoder-decoder adaptation vs random init (run: {os.path.basename(run)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(config: DemoConfig, task: str, records: dict) -> dict:
    """Writes `report.json`, `report.md` and `report.png` into the run directory; returns the report."""
    report = build_report(config, task, records)
    run = report["run_dir"]
    with open(os.path.join(run, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = format_table(report)
    with open(os.path.join(run, "report.md"), "w") as f:
        f.write("# adaptation demo\n\n" + table + "\n\n![report](report.png)\n")
    plot_report(report, os.path.join(run, "report.png"))
    report["table"] = table
    return report


# ---------------------------------------------------------------------------------------------
# Entry point.


def run_demo(config: DemoConfig, log=print) -> dict:
    """Runs (or reuses) every stage into `config.run_dir`, then writes the report; returns it."""
    task = resolve_task(config.task)
    os.makedirs(config.run_dir, exist_ok=True)
    log(f"adaptation demo -> {os.path.abspath(config.run_dir)}")
    log(f"finetuning task: {task_label(task)} ({task})")
    t0 = time.time()
    records = run_stages(build_stages(config, task), config.run_dir, config.jobs, log)
    report = write_report(config, task, records)
    log("")
    log(report["table"])
    log("")
    log(f"this invocation: {_clock(time.time() - t0)} wall")
    log(f"report: {os.path.join(report['run_dir'], 'report.md')}, plot: {os.path.join(report['run_dir'], 'report.png')}")
    log(f"run directory: {report['run_dir']}")
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adaptation.demo", description=__doc__.split("\n\n")[0])
    d = DemoConfig()
    p.add_argument("--run_dir", default=d.run_dir, help="where every stage writes (default: %(default)s)")
    p.add_argument("--task", default=d.task, choices=("auto", "generated", "rte", "cb"),
                   help="finetuning task; auto: RTE when SUPERGLUE_DIR / TFDS data is found, else generated")
    p.add_argument("--tiny", action="store_true", help="a seconds-per-stage configuration (tests, CI)")
    for name in ("lm_steps", "ul2_steps", "finetune_steps"):
        p.add_argument(f"--{name}", type=int, help=f"default: {getattr(d, name)}")
    p.add_argument("--gin_bindings", action="append", default=[], help="extra binding for every train stage")
    p.add_argument("--jobs", type=int, default=d.jobs,
                   help="stages run at once (default: %(default)s: the scratch chain beside the adapted one)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m adaptation.demo [--run_dir DIR] [--task ...] [--tiny]`."""
    args = _parser().parse_args(argv)
    fields: dict[str, Any] = dict(TINY) if args.tiny else {}
    if args.jobs < 1:
        print(f"demo: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    fields.update({"run_dir": args.run_dir, "task": args.task, "jobs": args.jobs})
    for name in ("lm_steps", "ul2_steps", "finetune_steps"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.gin_bindings:
        fields["bindings"] = tuple(fields.get("bindings", ())) + tuple(args.gin_bindings)
    try:
        run_demo(DemoConfig(**fields))
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make demo` (adaptation.demo): the generated entailment task, the report, and the whole pipeline at
reduced size through the command line (the same subprocess stages `make demo` runs)."""

import json
import os
import subprocess
import sys
import time

import pytest

from adaptation import demo, host_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("lm", "source_hf", "adapted", "ul2_adapted", "ul2_scratch", "finetune_adapted", "finetune_scratch",
          "eval_adapted", "eval_scratch")


def test_generated_task_is_balanced_rte_format_and_topic_disjoint():
    from tasks import demo as demo_tasks
    from tasks import superglue

    train = demo_tasks.generated_examples("train")
    val = demo_tasks.generated_examples("validation")
    assert len(train) > 1000 and len(val) > 200
    for examples in (train, val):
        labels = [e["label"] for e in examples]
        assert labels.count(0) == labels.count(1)
        assert sorted(e["idx"] for e in examples) == list(range(len(examples)))
    # Entailed hypotheses are spans of their premise; validation premises never occur in training.
    assert all(e["hypothesis"] in e["premise"] for e in train if e["label"] == 0)
    assert {e["premise"] for e in train}.isdisjoint({e["premise"] for e in val})
    assert train == demo_tasks.generated_examples("train")  # deterministic
    cast = superglue.cast_text("rte", val[0], "validation")[0]
    assert cast["inputs"].startswith("rte hypothesis: ") and cast["targets"] in ("entailment", "not_entailment")
    with pytest.raises(ValueError, match="splits"):
        demo_tasks.generated_examples("test")


def test_text_metrics_score_decoded_labels():
    from tasks.demo import text_metrics

    targets = [b"entailment", "not_entailment", "entailment", "not_entailment"]
    assert text_metrics(targets, ["entailment", "not_entailment", "not_entailment", "garbage"], task="rte") == {
        "accuracy": 0.5
    }
    cb = text_metrics(["neutral", "contradiction"], ["neutral", "contradiction"], task="cb")
    assert cb == {"accuracy": 1.0, "f1": pytest.approx(2 / 3)}  # the absent class scores F1 0


def test_task_choice_follows_the_data_found(tmp_path, monkeypatch):
    monkeypatch.delenv("SUPERGLUE_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
    assert demo.resolve_task("auto") == demo.GENERATED_TASK
    assert "generated" in demo.task_label(demo.GENERATED_TASK) and "not RTE" in demo.task_label(demo.GENERATED_TASK)
    with pytest.raises(SystemExit, match="SUPERGLUE_DIR"):
        demo.resolve_task("rte")
    (tmp_path / "sg" / "RTE").mkdir(parents=True)
    monkeypatch.setenv("SUPERGLUE_DIR", str(tmp_path / "sg"))
    assert demo.superglue_source() == ("jsonl", str(tmp_path / "sg"))
    assert demo.resolve_task("auto") == "demo_rte_text"
    assert demo.task_label("demo_rte_text").startswith("SuperGLUE RTE")


def test_child_env_drops_the_emulated_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1")
    env = demo.child_env(str(tmp_path))
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1"
    assert env["JAX_COMPILATION_CACHE_DIR"].startswith(str(tmp_path))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == REPO


def test_child_env_puts_malloc_on_huge_pages_unless_set(tmp_path, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert demo.child_env(str(tmp_path))["GLIBC_TUNABLES"] == host_env.HUGE_PAGE_MALLOC
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert demo.child_env(str(tmp_path))["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"


def _stage(name, code, tmp_path, needs=()):
    """A stage whose command is a short Python program (`code`), run in `tmp_path`."""
    out = str(tmp_path / name)
    return demo.Stage(name, f"stage {name}", [sys.executable, "-c", code.replace("OUT", repr(out))], out, "convert",
                      needs=needs)


def test_stages_run_side_by_side_after_what_they_need(tmp_path):
    # "b" needs "a"; "c" needs nothing, so it starts beside "a". Each writes its start/end times.
    code = ("import json, os, time; t = time.time(); time.sleep({}); os.makedirs(OUT); "
            "json.dump([t, time.time()], open(os.path.join(OUT, 't.json'), 'w'))")
    stages = [_stage("a", code.format(1.5), tmp_path), _stage("b", code.format(0.1), tmp_path, needs=("a",)),
              _stage("c", code.format(1.5), tmp_path)]
    lines = []
    records = demo.run_stages(stages, str(tmp_path), jobs=2, log=lines.append)
    times = {n: json.loads((tmp_path / n / "t.json").read_text()) for n in "abc"}
    assert times["b"][0] >= times["a"][1]  # after what it needs
    assert times["c"][0] < times["a"][1] and times["a"][0] < times["c"][1]  # side by side
    assert set(records) == {"a", "b", "c"} and all(r["cpu_s"] >= 0 for r in records.values())
    # Overlapping stages count once in the total.
    assert demo.elapsed_union(list(records.values())) < sum(r["wall_s"] for r in records.values()) - 1.0
    # One at a time with jobs=1; done stages are reused.
    (tmp_path / "c.done.json").unlink()
    demo.run_stages(stages, str(tmp_path), jobs=1, log=lines.append)
    assert sum("reusing" in line for line in lines) == 2


def test_a_failed_stage_stops_new_ones_and_keeps_finished_ones(tmp_path):
    stages = [_stage("bad", "raise SystemExit(3)", tmp_path), _stage("after", "pass", tmp_path, needs=("bad",)),
              _stage("other", "import time; time.sleep(0.5)", tmp_path)]
    with pytest.raises(RuntimeError, match=r"stage bad failed \(exit status 3\)"):
        demo.run_stages(stages, str(tmp_path), jobs=2, log=lambda _: None)
    assert (tmp_path / "other.done.json").exists()  # the one running beside it finished and is reusable
    assert not (tmp_path / "after.done.json").exists() and not (tmp_path / "bad.done.json").exists()
    with pytest.raises(ValueError, match="unknown stages"):
        demo.run_stages([_stage("x", "pass", tmp_path, needs=("y",))], str(tmp_path))


def _fake_run(run_dir, task):
    """Trainer/eval outputs as the stages leave them (metrics files and markers), without training."""
    curves = {"lm": 5.0, "ul2_adapted": 3.0, "ul2_scratch": 5.5, "finetune_adapted": 0.3, "finetune_scratch": 0.6}
    for name, end in curves.items():
        os.makedirs(run_dir / name)
        with open(run_dir / name / "train_metrics.jsonl", "w") as f:
            for step in range(1, 31):
                f.write(json.dumps({"step": step, "loss": end + 1, "cross_entropy": end + (30 - step) / 10}) + "\n")
    for init, acc in (("adapted", 0.8), ("scratch", 0.6)):
        os.makedirs(run_dir / f"eval_{init}")
        with open(run_dir / f"eval_{init}" / "eval_results.jsonl", "w") as f:
            f.write(json.dumps({"results": {task: {f"{task}/accuracy": acc, "token_loss": 1.0}}}) + "\n")
    return {name: {"wall_s": 10.0, "cpu_s": 15.0} for name in STAGES}


def test_report_table_and_plot(tmp_path):
    task = demo.GENERATED_TASK
    records = _fake_run(tmp_path, task)
    config = demo.DemoConfig(run_dir=str(tmp_path), ul2_steps=30)
    report = demo.write_report(config, task, records)
    assert report["ul2_final_loss"]["adapted"] == pytest.approx(3.45)  # mean of the last 10 steps
    assert report["adapted_ul2_loss_lower"] is True
    assert report["finetune_accuracy"] == {"adapted": 0.8, "scratch": 0.6}
    table = (tmp_path / "report.md").read_text()
    assert "| 3. UL2 pretraining | adapted | 30 | 3.450 |" in table
    assert "accuracy 0.800" in table and "not RTE" in table and "adaptation pays" in table
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert json.loads((tmp_path / "report.json").read_text())["total_cpu_s"] == pytest.approx(15.0 * len(STAGES))


@pytest.mark.slow
def test_demo_pipeline_tiny_end_to_end_and_reuse(tmp_path):
    """Every stage through the CLI at reduced size; then a second run reuses all of them."""
    run_dir = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("SUPERGLUE_DIR", None)
    cmd = [sys.executable, "-m", "adaptation.demo", "--tiny", f"--run_dir={run_dir}"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in STAGES:
        assert (run_dir / f"{stage}.done.json").exists(), stage
    assert "step " in first.stdout and "tok/s" in first.stdout and "ETA" in first.stdout
    assert f"run directory: {run_dir}" in first.stdout
    hf_config = json.loads((run_dir / "source_hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["Gemma2ForCausalLM"]
    assert (run_dir / "adapted" / "model_config.json").exists()
    report = json.loads((run_dir / "report.json").read_text())
    steps = {(r["stage"][:2], r["model"]): r["steps"] for r in report["rows"]}
    assert steps[("3.", "adapted")] == steps[("3.", "scratch")] == demo.TINY["ul2_steps"]
    for init in ("adapted", "scratch"):
        assert report["ul2_final_loss"][init] is not None
        assert report["finetune_accuracy"][init] is not None  # greedy-decode eval ran
    assert "generated" in report["task_label"]
    assert (run_dir / "report.png").stat().st_size > 20_000

    t0 = time.time()
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing") == len(STAGES)
    assert "running" not in second.stdout
    assert time.time() - t0 < 120

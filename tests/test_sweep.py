"""Sweeps (`python -m adaptation.sweep`): the Gemma Encoder study grid and the SuperGLUE per-task grid
search, run at tiny size from their gin files (`gin/encoder/study_sweep.gin`,
`gin/superglue/sweep_superglue.gin`) with a reduced grid; the plan, naming and table helpers.
"""

import json
import math
import subprocess
import sys

import pytest
from test_train_cli import cli_env

from adaptation import sweep

VOCAB_ROWS = 2256  # the small SentencePiece vocabulary
TINY = ["--gin.ENCODER_PRESET='tiny'", f"--gin.encoder_classifier.vocab_size={VOCAB_ROWS}",
        "--gin.VOCABULARY='small'", "--gin.ACTIVATION_DTYPE='float32'", "--gin.BATCH_SIZE=8",
        "--gin.WARMUP_STEPS=2", "--gin.SAVE_EVERY_STEPS=1000", "--gin.LOG_EVERY_STEPS=10",
        "--gin.EVAL_SPLIT='train'"]


def _run_sweep(tmp_path, gin_file, bindings):
    out_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "adaptation.sweep", f"--gin_file={gin_file}", f"--gin.SWEEP_DIR='{out_dir}'",
           *TINY, *bindings]
    proc = subprocess.run(cmd, env=cli_env(tmp_path, devices=1), capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out_dir, proc.stdout


@pytest.mark.slow
def test_study_sweep_prints_one_comparison_table(shared_data, tmp_path):
    root = tmp_path / "glue_data"
    (root / "SST-2").mkdir(parents=True)
    lines = (shared_data / "glue" / "SST-2" / "train.tsv").read_text().split("\n")[:25]
    (root / "SST-2" / "train.tsv").write_text("\n".join(lines) + "\n")
    (root / "SST-2" / "dev.tsv").write_text("\n".join(lines) + "\n")
    grid = "{'POOLER': ['last', 'mean'], 'CAUSAL': [False, True], 'FINETUNE_DROPOUT': [0.1], 'PAD_SIDE': ['left']}"
    out_dir, out = _run_sweep(tmp_path, "encoder/study_sweep.gin", [
        f"--gin.GLUE_DIR='{root}'", "--gin.GLUE_TASK='sst2'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 24}",
        "--gin.TRAIN_STEPS=8", "--gin.LEARNING_RATE=2e-3", f"--gin.sweep.grid={grid}",
    ])
    print(out)
    assert "sweep runs" in out and "best setting" in out
    results = json.loads((out_dir / "sweep_results.json").read_text())
    runs = results["runs"]
    assert [(r["setting"]["POOLER"], r["setting"]["CAUSAL"]) for r in runs] == [
        ("last", False), ("last", True), ("mean", False), ("mean", True)]
    for r in runs:
        assert 0.0 <= r["score"] <= 1.0 and r["results"]["sst2"]["num_examples"] == 24
        name = sweep.run_name(r["setting"])
        assert " ".join(f"{k}={v}" for k, v in r["setting"].items()) in out
        config = json.loads((out_dir / name / "model_config.json").read_text())
        assert config["classifier"]["head"]["pooler"] == r["setting"]["POOLER"]
        assert config["classifier"]["pad_side"] == "left"
        assert config["config"]["causal"] is r["setting"]["CAUSAL"]
        assert config["config"]["dropout_rate"] == 0.1 and config["config"]["attention_dropout_rate"] == 0.1
        assert config["classifier"]["head"]["dropout_rate"] == 0.1
    assert results["best"][0]["score"] == max(r["score"] for r in runs)


@pytest.mark.slow
def test_superglue_sweep_prints_best_setting_per_task(shared_data, tmp_path):
    root = tmp_path / "sg_data"  # not "superglue/": gin would take it for a package of gin files
    (root / "CB").mkdir(parents=True)
    rows = (shared_data / "superglue" / "CB" / "train.jsonl").read_text().splitlines()[:16]
    for name in ("train.jsonl", "val.jsonl"):
        (root / "CB" / name).write_text("\n".join(rows) + "\n")
    grid = "{'SUPERGLUE_TASK': ['cb'], 'LEARNING_RATE': [1e-6, 3e-3], 'BATCH_SIZE': [8], 'HEAD_DROPOUT': [0.0]}"
    out_dir, out = _run_sweep(tmp_path, "superglue/sweep_superglue.gin", [
        f"--gin.SUPERGLUE_DIR='{root}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}", "--gin.TRAIN_STEPS=30",
        f"--gin.sweep.grid={grid}",
    ])
    print(out)
    assert "best setting per SUPERGLUE_TASK" in out
    best_line = out.split("best setting per SUPERGLUE_TASK")[1].strip().splitlines()[0]
    results = json.loads((out_dir / "sweep_results.json").read_text())
    best = results["best"][0]
    assert best_line.startswith("SUPERGLUE_TASK=cb:") and f"LEARNING_RATE={best['setting']['LEARNING_RATE']}" in best_line
    assert best["score"] == max(r["score"] for r in results["runs"])
    assert set(best["results"]["cb"]["metrics"]) == {"accuracy", "f1"}


def test_plan_settings_and_table():
    plan = sweep.sweep(grid={"LEARNING_RATE": [1e-5, 3e-5], "TASK": ["rte", "cb"]}, output_dir="/x", group_by=["TASK"])
    combos = sweep.settings(plan["grid"])
    assert combos == [{"LEARNING_RATE": 1e-5, "TASK": "rte"}, {"LEARNING_RATE": 1e-5, "TASK": "cb"},
                      {"LEARNING_RATE": 3e-5, "TASK": "rte"}, {"LEARNING_RATE": 3e-5, "TASK": "cb"}]
    assert sweep.run_name({"POOLER": "query_probe", "LR": 1e-05}) == "POOLER=query_probe,LR=1e-05"
    assert sweep.setting_bindings({"POOLER": "mean", "CAUSAL": False}) == ["POOLER = 'mean'", "CAUSAL = False"]
    runs = [{"setting": s, "score": score, "results": {s["TASK"]: {"metrics": {"accuracy": score}}}}
            for s, score in zip(combos, [0.5, 0.7, 0.6, 0.6])]
    runs.append({"setting": {"LEARNING_RATE": 1e-4, "TASK": "rte"}, "score": None, "results": {}, "error": "nan"})
    best = sweep.best_per_group(runs, ["TASK"])
    assert best[("rte",)]["setting"]["LEARNING_RATE"] == 3e-5 and best[("cb",)]["setting"]["LEARNING_RATE"] == 1e-5
    table = sweep.format_results(runs, ["TASK"])
    assert "failed" in table and "TASK=cb: LEARNING_RATE=1e-05  70.00" in table
    with pytest.raises(ValueError, match="not grid keys"):
        sweep.sweep(grid={"A": [1]}, output_dir="/x", group_by=["B"])
    with pytest.raises(ValueError, match="non-empty list"):
        sweep.sweep(grid={"A": "abc"}, output_dir="/x")
    assert not math.isnan(best[("cb",)]["score"])


def test_study_gin_names_the_full_grid():
    """The shipped study grid: 5 poolers x 2 masks x 2 dropouts x 2 padding sides."""
    import gin
    from adaptation import gin_utils

    gin.clear_config()
    try:
        gin_utils.register_configurables()
        gin_utils.register_configurables(gin_utils.DATA_CONFIGURABLES)
        gin_utils.bind_configurable(sweep.sweep, "sweep")
        from adaptation.train import train

        gin_utils.bind_configurable(train, "train")
        gin_utils.bind_configurable(sweep.sweep_eval, "sweep_eval")
        gin_utils.parse_config(["encoder/study_sweep.gin"], ["SWEEP_DIR = '/tmp/x'", "GLUE_DIR = '/tmp/g'"],
                               gin_utils.default_search_paths())
        grid = gin.query_parameter("sweep.grid")
    finally:
        gin.clear_config()
    assert grid["POOLER"] == ["first", "last", "mean", "query_probe", "kv_probe"]
    assert len(sweep.settings(grid)) == 40

"""Sweeps (`python -m adaptation.sweep`): the Gemma Encoder study (`gin/encoder/study_sweep.gin`) run at
tiny size with a reduced grid, printing its comparison table; the shipped grids of the study and of the
SuperGLUE per-task search (`gin/superglue/sweep_superglue.gin`); the plan, naming and table helpers
(best setting per group, failed runs).
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
    # Two runs (each compiles its own model); every axis of the study reaches the run's model config.
    grid = "{'POOLER': ['last', 'kv_probe'], 'CAUSAL': [True], 'FINETUNE_DROPOUT': [0.1], 'PAD_SIDE': ['left']}"
    out_dir, out = _run_sweep(tmp_path, "encoder/study_sweep.gin", [
        f"--gin.GLUE_DIR='{root}'", "--gin.GLUE_TASK='sst2'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 24}",
        "--gin.TRAIN_STEPS=8", "--gin.LEARNING_RATE=2e-3", f"--gin.sweep.grid={grid}",
    ])
    print(out)
    assert "sweep runs" in out and "best setting" in out
    results = json.loads((out_dir / "sweep_results.json").read_text())
    runs = results["runs"]
    assert [r["setting"]["POOLER"] for r in runs] == ["last", "kv_probe"]
    for r in runs:
        assert 0.0 <= r["score"] <= 1.0 and r["results"]["sst2"]["num_examples"] == 24
        name = sweep.run_name(r["setting"])
        assert " ".join(f"{k}={v}" for k, v in r["setting"].items()) in out
        config = json.loads((out_dir / name / "model_config.json").read_text())
        assert config["classifier"]["head"]["pooler"] == r["setting"]["POOLER"]
        assert config["classifier"]["pad_side"] == "left"
        assert config["config"]["causal"] is True
        assert config["config"]["dropout_rate"] == 0.1 and config["config"]["attention_dropout_rate"] == 0.1
        assert config["classifier"]["head"]["dropout_rate"] == 0.1
    assert results["best"][0]["score"] == max(r["score"] for r in runs)


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


def _sweep_plan(gin_file, bindings):
    """The plan (`sweep(...)` as the gin file binds it) and the eval bindings of a shipped sweep gin file."""
    import gin
    from adaptation import gin_utils
    from adaptation.train import train

    gin.clear_config()
    try:
        gin_utils.register_configurables()
        gin_utils.register_configurables(gin_utils.DATA_CONFIGURABLES)
        gin_utils.bind_configurable(train, "train")
        gin_utils.bind_configurable(sweep.sweep_eval, "sweep_eval")
        plan = gin_utils.bind_configurable(sweep.sweep, "sweep")
        gin_utils.parse_config([gin_file], bindings, gin_utils.default_search_paths())
        return plan(), str(gin.query_parameter("sweep_eval.benchmark"))
    finally:
        gin.clear_config()


def test_study_gin_names_the_full_grid():
    """The shipped study grid: 5 poolers x 2 masks x 2 dropouts x 2 padding sides, scored on GLUE."""
    plan, benchmark = _sweep_plan("encoder/study_sweep.gin", ["SWEEP_DIR = '/tmp/x'", "GLUE_DIR = '/tmp/g'"])
    assert plan["grid"]["POOLER"] == ["first", "last", "mean", "query_probe", "kv_probe"]
    assert plan["grid"]["CAUSAL"] == [False, True] and plan["grid"]["PAD_SIDE"] == ["right", "left"]
    assert len(sweep.settings(plan["grid"])) == 40 and plan["group_by"] == []
    assert "glue_benchmark" in benchmark


def test_superglue_gin_grid_searches_per_task():
    """The shipped SuperGLUE grid: learning rate x batch size x dropout for each of the paper's 7 tasks,
    best per task (the runs use the same machinery as the study sweep above)."""
    plan, benchmark = _sweep_plan("superglue/sweep_superglue.gin", ["SWEEP_DIR = '/tmp/x'", "SUPERGLUE_DIR = '/tmp/s'"])
    assert plan["group_by"] == ["SUPERGLUE_TASK"]
    assert plan["grid"]["SUPERGLUE_TASK"] == ["boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"]
    assert {"LEARNING_RATE", "BATCH_SIZE", "HEAD_DROPOUT"} <= set(plan["grid"])
    assert "superglue_benchmark" in benchmark

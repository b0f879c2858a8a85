"""`python -m adaptation.train --gin_file=...` end to end on a tiny encoder-decoder, and its errors.

The task is a real seqio task registered by a small module this test writes: lines of real text
(tinyshakespeare from the shared data, or CPython's pydoc topics when that is absent) split in
half into inputs and targets, byte vocabulary.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK = "trainer_test_text"

TASK_MODULE = '''
import seqio
import tensorflow as tf

TEXT = {text!r}
VOCAB = seqio.ByteVocabulary()


def _split_in_half(ds):
    ds = ds.filter(lambda line: tf.strings.length(line) > 8)

    def fn(line):
        n = tf.strings.length(line) // 2
        return {{"inputs": tf.strings.substr(line, 0, n), "targets": tf.strings.substr(line, n, -1)}}

    return ds.map(fn)


if {task!r} not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        {task!r},
        source=seqio.TextLineDataSource({{"train": TEXT, "validation": TEXT}}),
        preprocessors=[_split_in_half, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={{"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)}},
    )
'''

RUN_GIN = """import trainer_test_tasks
include 'models/tiny_tiny.gin'
include 'runs/pretrain.gin'
MIXTURE_OR_TASK_NAME = '{task}'
TASK_FEATURE_LENGTHS = {{'inputs': 24, 'targets': 24}}
BATCH_SIZE = 8
LEARNING_RATE = 1e-2
WARMUP_STEPS = 1
LOG_EVERY_STEPS = 1
{extra}
"""


def _corpus_lines(shared: pathlib.Path) -> list[str]:
    source = shared / "text" / "tinyshakespeare" / "input.txt"
    if source.is_file():
        return source.read_text().splitlines()[:3000]
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics.values())
    return [line for line in text.splitlines() if line.strip()][:3000]


def write_task_files(directory: pathlib.Path, extra_gin: str = "") -> pathlib.Path:
    """Writes the text, the task module and `run.gin` into `directory`; returns the gin file."""
    from conftest import _shared_data

    directory.mkdir(parents=True, exist_ok=True)
    text = directory / "text.txt"
    text.write_text("\n".join(_corpus_lines(_shared_data())) + "\n")
    (directory / "trainer_test_tasks.py").write_text(TASK_MODULE.format(text=str(text), task=TASK))
    gin_file = directory / "run.gin"
    gin_file.write_text(RUN_GIN.format(task=TASK, extra=extra_gin))
    return gin_file


def cli_env(directory: pathlib.Path, cache: pathlib.Path = None, devices: int = 8) -> dict:
    """Environment of a CLI subprocess: the task module importable, N host devices, shared compile cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(directory), str(REPO)])
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def train_command(gin_file: pathlib.Path, model_dir: pathlib.Path, *bindings: str) -> list[str]:
    """The command line of a training run."""
    return [
        sys.executable, "-m", "adaptation.train", f"--gin_file={gin_file}",
        f"--gin.MODEL_DIR='{model_dir}'", *bindings,
    ]


def read_metrics(model_dir: pathlib.Path) -> dict[int, dict]:
    """{step: metrics} from the run's JSONL log."""
    lines = (model_dir / "train_metrics.jsonl").read_text().splitlines()
    return {m["step"]: m for m in map(json.loads, lines)}


def test_cli_trains_tiny_encoder_decoder(tmp_path):
    gin_file = write_task_files(tmp_path, "SAVE_EVERY_STEPS = 2\nEVAL_EVERY_STEPS = 4\nEVAL_STEPS = 2")
    model_dir = tmp_path / "run"
    proc = subprocess.run(
        train_command(gin_file, model_dir, "--gin.TRAIN_STEPS=4", "--gin.MESH_SHAPE=(2, 2, 2)"),
        env=cli_env(tmp_path), capture_output=True, text=True, timeout=420, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (model_dir / "config.gin").read_text()
    assert "MESH_SHAPE = (2, 2, 2)" in config and "encoder_decoder.name = 'tiny-tiny'" in config
    from adaptation.checkpoints.native import read_model_config
    from adaptation.models import encoder_decoder

    assert read_model_config(model_dir) == encoder_decoder("tiny-tiny")
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4"]
    metrics = read_metrics(model_dir)
    assert sorted(metrics) == [1, 2, 3, 4]
    losses = [metrics[s]["loss"] for s in sorted(metrics)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert metrics[4]["tokens_per_second"] > 0 and metrics[4]["learning_rate"] > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir / "train"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir / f"eval_{TASK}"))
    assert f"eval {TASK} at step 4" in proc.stderr
    assert "step 4/4 loss" in proc.stderr and "ETA" in proc.stderr
    assert "Path not found" not in proc.stderr

    # The eval and infer entry points read the run directory (its latest checkpoint).
    eval_gin = tmp_path / "eval.gin"
    eval_gin.write_text(
        f"import trainer_test_tasks\ninclude 'runs/eval.gin'\nEVAL_TASKS = ['{TASK}']\n"
        "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 24}\nNUM_EXAMPLES = 8\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "adaptation.eval", f"--gin_file={eval_gin}", f"--gin.CHECKPOINT_PATH='{model_dir}'",
         f"--gin.EVAL_OUTPUT_DIR='{model_dir}'"],
        env=cli_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((model_dir / "eval_results.jsonl").read_text().splitlines()[-1])["results"][TASK]
    assert np.isfinite(result["token_loss"]) and 0 <= result["token_accuracy"] <= 1
    (tmp_path / "inputs.txt").write_text("To be, or not to be\nthat is the question\n")
    proc = subprocess.run(
        [sys.executable, "-m", "adaptation.infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
         f"--gin.OUTPUT_FILE='{tmp_path / 'pred.jsonl'}'", f"--gin.INPUT_FILE='{tmp_path / 'inputs.txt'}'",
         "--gin.INPUTS_LENGTH=24", "--gin.MAX_DECODE_LENGTH=6"],
        env=cli_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [p["inputs"] for p in predictions] == ["To be, or not to be", "that is the question"]
    assert all(isinstance(p["prediction"], str) for p in predictions)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--gin.nonexistent_fn.x=1"], "No configurable matching 'nonexistent_fn'"),
        (["--gin_file=runs/no_such_run.gin"], "no_such_run.gin"),
    ],
)
def test_cli_config_errors_are_short(tmp_path, args, expected):
    env = cli_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "adaptation.train", "--gin_file=runs/pretrain.gin", *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "gin search paths tried" in proc.stderr and str(REPO / "gin") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hosts_read_disjoint_shards(tmp_path):
    write_task_files(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import seqio

        from adaptation.data.iterator import BatchIterator, DatasetConfig

        config = DatasetConfig(TASK, {"inputs": 24, "targets": 24}, batch_size=4, module="trainer_test_tasks", shuffle=False)
        firsts = []
        for index in range(2):
            it = BatchIterator.from_config(config, seqio.ShardInfo(index, 2))
            batch = next(it)
            assert batch["encoder_input_tokens"].shape == (2, 24)
            firsts.append({tuple(row) for row in batch["decoder_target_tokens"]})
        assert not firsts[0] & firsts[1]
        # BOS-2 shifted decoder inputs, zero where the targets pad.
        assert (batch["decoder_input_tokens"][:, 0] == 2).all()
        np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:] * (batch["decoder_target_tokens"][:, 1:] > 0),
                                      batch["decoder_target_tokens"][:, :-1] * (batch["decoder_target_tokens"][:, 1:] > 0))
        assert ((batch["decoder_target_tokens"] == 0) == (batch["decoder_input_tokens"] == 0)).all()
        # The position survives a restore: batch 3 of a fresh iterator equals batch 3 after skipping 2.
        it = BatchIterator.from_config(config, seqio.ShardInfo(0, 2))
        batches = [next(it) for _ in range(3)]
        resumed = BatchIterator.from_config(config, seqio.ShardInfo(0, 2))
        resumed.set_state(BatchIterator.from_config(config).get_state() | {"batches_consumed": 2})
        np.testing.assert_array_equal(next(resumed)["encoder_input_tokens"], batches[2]["encoder_input_tokens"])
    finally:
        sys.path.remove(str(tmp_path))


def test_cli_mesh_that_does_not_fit_is_a_short_error(tmp_path):
    gin_file = write_task_files(tmp_path)
    proc = subprocess.run(
        train_command(gin_file, tmp_path / "run", "--gin.TRAIN_STEPS=2", "--gin.MESH_SHAPE=(4, 4, 1)"),
        env=cli_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "needs 16 devices, but 8 are available" in proc.stderr and "Traceback" not in proc.stderr

"""Checkpoints: exact resume after SIGKILL, save on SIGTERM, restore onto another mesh, refuse other shapes."""

import functools
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_train_cli import cli_env, read_metrics, train_command, write_task_files

from adaptation import partitioning, trainer
from adaptation.checkpoints.train_state import CheckpointConfig, TrainCheckpointer
from adaptation.models import EncoderDecoder, encoder_decoder
from adaptation.objectives.losses import cross_entropy_loss_fn

RULES = partitioning.standard_logical_axis_rules()


def _wait_for_step(proc, model_dir, step, timeout=400):
    """Polls the run's metrics until `step` is logged; fails if the run ends first."""
    deadline = time.time() + timeout
    path = model_dir / "train_metrics.jsonl"
    while time.time() < deadline:
        if path.exists() and max(read_metrics(model_dir), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before step {step}:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout}s")


def test_sigkill_resume_matches_uninterrupted_run_and_sigterm_saves(tmp_path):
    gin_file = write_task_files(tmp_path, "SAVE_EVERY_STEPS = 4\nKEEP_CHECKPOINTS = 2")
    env = cli_env(tmp_path, cache=tmp_path / "jax_cache")
    steps = "--gin.TRAIN_STEPS=24"

    reference = tmp_path / "reference"
    done = subprocess.run(train_command(gin_file, reference, steps), env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = read_metrics(reference)
    assert sorted(expected) == list(range(1, 25))

    # SIGKILL mid-run, then restart: the losses of every step equal the uninterrupted run's.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_command(gin_file, killed, steps), env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, killed, 6)
    while not (killed / "checkpoints" / "4").is_dir() and proc.poll() is None:  # a finished checkpoint
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    checkpoints = sorted(int(s) for s in os.listdir(killed / "checkpoints") if s.isdigit())
    assert checkpoints and max(checkpoints) < 24
    resumed = subprocess.run(train_command(gin_file, killed, steps), env=env, capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    got = read_metrics(killed)
    assert sorted(got) == list(range(1, 25))
    for step in range(1, 25):
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], abs=1e-6), step
    assert sorted(int(s) for s in os.listdir(killed / "checkpoints")) == [20, 24]  # keep 2

    # SIGTERM: the run saves the step it is at and exits cleanly.
    termed = tmp_path / "termed"
    proc = subprocess.Popen(
        train_command(gin_file, termed, "--gin.TRAIN_STEPS=100000", "--gin.SAVE_EVERY_STEPS=100000"),
        env=env, stderr=subprocess.PIPE, text=True,
    )
    _wait_for_step(proc, termed, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    last = max(read_metrics(termed))
    assert os.listdir(termed / "checkpoints") == [str(last)] and 3 <= last < 100000
    assert f"stopped at step {last}" in err


@pytest.fixture()
def fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _batch(rows=8):
    rng = np.random.default_rng(0)
    targets = rng.integers(3, 512, (rows, 6)).astype(np.int32)
    dec_in = np.concatenate([np.full((rows, 1), 2, np.int32), targets[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": rng.integers(3, 512, (rows, 8)).astype(np.int32),
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones_like(targets, np.float32),
    }


def _trainer(mesh_shape, **model_overrides):
    mesh = partitioning.make_mesh(partitioning.MeshConfig(mesh_shape))
    model = EncoderDecoder(encoder_decoder("tiny-tiny", num_layers=1, **model_overrides))
    config = trainer.TrainConfig(num_train_steps=4, optimizer=trainer.OptimizerConfig(warmup_steps=0, schedule="constant"))
    return trainer.Trainer(model, config, mesh, RULES, functools.partial(cross_entropy_loss_fn, z_loss=0.0), _batch())


def test_restore_onto_another_mesh_and_refuse_another_model(tmp_path, fast_compile):
    t = _trainer((2, 1, 4))
    state, _ = t.train_step(t.init_state(), _batch())
    saved = jax.device_get(state)
    ckpt = TrainCheckpointer(tmp_path, CheckpointConfig(save_every_steps=1))
    assert ckpt.save(state, {"batches_consumed": 1, "name": "x"})
    ckpt.close()

    other = _trainer((1, 8, 1))
    ckpt = TrainCheckpointer(tmp_path, CheckpointConfig())
    restored, data_state = ckpt.restore(other.abstract_state, other.state_shardings)
    assert data_state == {"batches_consumed": 1, "name": "x"} and int(restored.step) == 1
    q = restored.params["decoder"]["layers_0"]["attn"]["q"]
    assert dict(q.sharding.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert q.sharding.spec == P("fsdp", "tensor", None)
    assert {s.data.shape for s in q.addressable_shards} == {(8, 4, 16)}  # saved as (64, 1, 16) shards
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), jax.device_get(restored), saved)
    assert all(jax.tree.leaves(same))
    state, metrics = other.train_step(restored, _batch())  # trains on the new mesh
    assert np.isfinite(float(metrics["loss"]))

    before = {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(tmp_path) for p in fs}
    wider = _trainer((1, 8, 1), hidden_dim=192)
    with pytest.raises(ValueError, match=r"parameter 'decoder/layers_0/mlp/down' has shape \(128, 64\), the model expects \(192, 64\)"):
        ckpt.restore(wider.abstract_state, wider.state_shardings)
    after = {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(tmp_path) for p in fs}
    assert before == after
    ckpt.close()

"""Two processes joined by `jax.distributed` on localhost train like one process with all devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = r'''
import json, os, sys
process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
import functools
import jax
import numpy as np
from adaptation import partitioning, trainer

if num_processes > 1:
    joined = partitioning.initialize_distributed(partitioning.DistributedConfig(
        coordinator_address=f"localhost:{port}", num_processes=num_processes, process_id=process_id,
        initialization_timeout=120))
    assert joined and jax.process_count() == num_processes
from jax.experimental import multihost_utils
from adaptation.models import EncoderDecoder, encoder_decoder
from adaptation.objectives.losses import cross_entropy_loss_fn

rows = 8
mesh = partitioning.make_mesh(partitioning.MeshConfig((2, 2, 2)))

def global_batch(seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, 512, (rows, 6)).astype(np.int32)
    targets[::3, -2:] = 0
    dec_in = np.concatenate([np.full((rows, 1), 2, np.int32), targets[:, :-1]], axis=1)
    dec_in[targets == 0] = 0
    return {"encoder_input_tokens": rng.integers(3, 512, (rows, 8)).astype(np.int32),
            "decoder_input_tokens": dec_in, "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(np.float32)}

def local_rows(batch):
    """This process's rows: the ones its devices hold under the batch sharding."""
    index_map = partitioning.batch_sharding(mesh).addressable_devices_indices_map((rows,))
    mine = sorted({i for idx in index_map.values() for i in range(rows)[idx[0]]})
    return {k: v[mine] for k, v in batch.items()}

config = trainer.TrainConfig(num_train_steps=10, optimizer=trainer.OptimizerConfig(
    learning_rate=1e-3, schedule="constant", warmup_steps=0, eps=1e-3))
model = EncoderDecoder(encoder_decoder("tiny-tiny", num_layers=1))
t = trainer.Trainer(model, config, mesh, partitioning.standard_logical_axis_rules(),
                    functools.partial(cross_entropy_loss_fn, z_loss=1e-4), global_batch(0))
state = t.init_state()
losses = []
for step in range(3):
    state, metrics = t.train_step(state, local_rows(global_batch(step)))
    losses.append(float(metrics["loss"]))
params = multihost_utils.process_allgather(state.params, tiled=True)
if jax.process_index() == 0:
    flat = {trainer.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(out + ".npz", **flat)
    with open(out + ".json", "w") as f:
        json.dump({"losses": losses, "processes": jax.process_count(), "devices": jax.device_count()}, f)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    return env


def test_two_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    multi = [
        subprocess.Popen(
            [sys.executable, str(script), str(pid), "2", port, str(tmp_path / "multi")],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for pid in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=420)[0] for p in multi]
    finally:
        for p in multi:
            if p.poll() is None:
                p.kill()
    for p, out in zip(multi, outputs):
        assert p.returncode == 0, out[-3000:]
    single = subprocess.run(
        [sys.executable, str(script), "0", "1", port, str(tmp_path / "single")],
        env=_env(), capture_output=True, text=True, timeout=420,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    m = json.loads((tmp_path / "multi.json").read_text())
    s = json.loads((tmp_path / "single.json").read_text())
    assert (m["processes"], m["devices"]) == (2, 8) and (s["processes"], s["devices"]) == (1, 8)
    np.testing.assert_allclose(m["losses"], s["losses"], atol=1e-5, rtol=0)
    assert m["losses"][2] < m["losses"][0] + 1.0
    mp, sp = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(mp.files) == sorted(sp.files) and len(mp.files) > 10
    for name in sp.files:
        np.testing.assert_allclose(mp[name], sp[name], atol=1e-5, rtol=0, err_msg=name)

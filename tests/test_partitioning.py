"""Meshes, logical axis rules, and sharded train steps equal to the single-device step."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from adaptation import partitioning, trainer
from adaptation.models import EncoderDecoder, encoder_decoder
from adaptation.objectives.losses import cross_entropy_loss_fn

RULES = partitioning.standard_logical_axis_rules()


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Fewer XLA passes: these tests compile several tiny programs on shared CPUs."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def test_mesh_shape_fill_and_errors():
    assert partitioning.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
    assert partitioning.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match=r"needs 6 devices, but 8 are available"):
        partitioning.resolve_mesh_shape((2, 3, 1), 8)
    with pytest.raises(ValueError, match=r"8 devices are not a multiple of 3"):
        partitioning.resolve_mesh_shape((3, -1, 1), 8)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(mesh_shape=(2, 1, -1)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    with pytest.raises(ValueError, match=r"needs 16 devices, but 8"):
        partitioning.make_mesh(partitioning.MeshConfig(mesh_shape=(4, 4, 1)))


def test_logical_rules_shard_params_opt_state_and_batch():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(mesh_shape=(1, 2, 4)))
    t = _trainer(mesh)
    attn = t.param_shardings["decoder"]["layers_0"]["attn"]
    assert attn["q"].spec == P("fsdp", "tensor", None)  # embed -> fsdp, heads -> tensor
    assert attn["o"].spec == P("tensor", None, "fsdp")
    # 2 kv heads do not split 4 ways: that dimension is replicated instead.
    assert attn["k"].spec == P("fsdp", None, None)
    mlp = t.param_shardings["encoder"]["layers_0"]["mlp"]
    assert mlp["gate"].spec == P("fsdp", "tensor") and mlp["down"].spec == P("tensor", "fsdp")
    assert t.param_shardings["decoder_embedder"]["embedding"].spec == P("tensor", "fsdp")
    # Adam moments follow their params; counts are replicated.
    opt_specs = {
        trainer.path_str(p): s.spec
        for p, s in jax.tree_util.tree_flatten_with_path(t.state_shardings.opt_state)[0]
    }
    mu_q = [v for k, v in opt_specs.items() if k.endswith("mu/decoder/layers_0/attn/q")]
    assert mu_q == [P("fsdp", "tensor", None)]
    assert all(v == P() for k, v in opt_specs.items() if k.endswith("count"))
    # Activations: the batch takes data and fsdp, so `embed` stays unsharded there.
    assert nn_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    assert partitioning.batch_sharding(mesh).spec == P(("data", "fsdp"))


def nn_spec(logical):
    import flax.linen as nn

    return nn.logical_to_mesh_axes(logical, RULES)


def _batch(rows=8, src=12, tgt=10, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, 512, (rows, tgt)).astype(np.int32)
    targets[:, -3:] = 0  # right padding
    inputs = rng.integers(3, 512, (rows, src)).astype(np.int32)
    inputs[::2, -4:] = 0
    dec_in = np.concatenate([np.full((rows, 1), 2, np.int32), targets[:, :-1]], axis=1)
    dec_in[targets == 0] = 0
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }


def _trainer(mesh):
    cfg = encoder_decoder("tiny-tiny", num_layers=1)
    config = trainer.TrainConfig(
        num_train_steps=10,
        optimizer=trainer.OptimizerConfig(learning_rate=1e-3, schedule="constant", warmup_steps=0, eps=1e-3),
    )
    loss_fn = functools.partial(cross_entropy_loss_fn, z_loss=1e-4)
    return trainer.Trainer(EncoderDecoder(cfg), config, mesh, RULES, loss_fn, _batch())


def _train(mesh_shape, devices=None, steps=2):
    mesh = partitioning.make_mesh(partitioning.MeshConfig(mesh_shape=mesh_shape), devices)
    t = _trainer(mesh)
    state = t.init_state()
    init = jax.device_get(state.params)
    losses = []
    for i in range(steps):
        state, metrics = t.train_step(state, _batch(seed=i))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state.params), losses, init


def test_sharded_train_steps_match_single_device():
    ref_params, ref_losses, init = _train((1, 1, 1), jax.devices()[:1])
    # Training moved every param (the comparison below is not vacuous). Adam eps 1e-3 keeps the
    # first updates linear in near-zero gradients, so summation order cannot flip them.
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), ref_params, init)
    assert min(jax.tree.leaves(moved)) > 1e-5
    assert np.isfinite(ref_losses).all() and ref_losses[1] < ref_losses[0] + 1.0
    for shape in [(2, 1, 4), (1, 8, 1)]:  # data x tensor, then fsdp
        params, losses, _ = _train(shape)
        np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, ref_params)
        assert max(jax.tree.leaves(diffs)) <= 1e-5, (shape, diffs)

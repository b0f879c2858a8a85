"""Train step maths: losses, schedules, gradient accumulation, non-finite steps, freezing warm-up, FLOPs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptation import partitioning, trainer
from adaptation.adapt import adapt
from adaptation.models import DecoderOnlyLM, EncoderDecoder, decoder_only, encoder_decoder
from adaptation.objectives.losses import cross_entropy_loss_fn, cross_entropy_with_z_loss, token_accuracy_sum
from adaptation.train import NonFiniteLossError, _flush

RULES = partitioning.standard_logical_axis_rules()


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Fewer XLA passes: these tests compile several tiny programs on shared CPUs."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _batch(rows=4, src=10, tgt=8, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, 512, (rows, tgt)).astype(np.int32)
    for row in range(1, rows):  # rows of different lengths
        targets[row, tgt - 1 - row % 4 :] = 0
    inputs = rng.integers(3, 512, (rows, src)).astype(np.int32)
    dec_in = np.concatenate([np.full((rows, 1), 2, np.int32), targets[:, :-1]], axis=1)
    dec_in[targets == 0] = 0
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }


def _single_device_mesh():
    return partitioning.make_mesh(partitioning.MeshConfig((1, 1, 1)), jax.devices()[:1])


def _diff(a, b):
    return jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))), a, b)


def test_cross_entropy_z_loss_and_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, (2, 3))
    weights = np.array([[1, 1, 0], [1, 0.5, 1]], np.float32)
    total, z_sum, denom = cross_entropy_with_z_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), 1e-2)
    log_z = np.log(np.exp(logits).sum(-1))
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(total), np.sum((nll + 1e-2 * log_z**2) * weights), rtol=1e-6)
    np.testing.assert_allclose(float(z_sum), np.sum(1e-2 * log_z**2 * weights), rtol=1e-6)
    assert float(denom) == pytest.approx(4.5)
    correct = (logits.argmax(-1) == targets) * weights
    assert float(token_accuracy_sum(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))) == pytest.approx(correct.sum())


def test_schedules():
    cfg = trainer.OptimizerConfig(learning_rate=1.0, schedule="cosine", warmup_steps=10, end_learning_rate_fraction=0.1)
    cos = trainer.make_schedule(cfg, num_train_steps=110)
    assert float(cos(0)) == 0.0 and float(cos(5)) == pytest.approx(0.5) and float(cos(10)) == pytest.approx(1.0)
    assert float(cos(60)) == pytest.approx(0.55, abs=1e-6) and float(cos(110)) == pytest.approx(0.1)
    rsqrt = trainer.make_schedule(trainer.OptimizerConfig(learning_rate=1.0, schedule="rsqrt", warmup_steps=10_000), 1)
    assert float(rsqrt(5)) == pytest.approx(0.01) and float(rsqrt(40_000)) == pytest.approx(0.005)
    const = trainer.make_schedule(trainer.OptimizerConfig(learning_rate=2.0, schedule="constant", warmup_steps=4), 1)
    assert [float(const(s)) for s in (0, 2, 4, 100)] == pytest.approx([0.0, 1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="unknown schedule"):
        trainer.make_schedule(trainer.OptimizerConfig(schedule="linear"), 1)


def test_training_flops_match_the_design_reference():
    # DESIGN.md section 5: batch 8 x (512 in + 512 out), vocab 256 000, window >= sequence.
    bb = encoder_decoder("B-B")
    assert trainer.training_flops_per_step(bb, 8, 512, 512) / 1e12 == pytest.approx(10.40, abs=0.005)
    two = encoder_decoder("2B-2B")
    assert trainer.training_flops_per_step(two, 8, 512, 512) / 1e12 == pytest.approx(127.06, abs=0.005)
    assert trainer.mfu(1e12, 0.5, 2, 1e12) == pytest.approx(1.0)


def _tiny_trainer(config, loss_fn=None, mesh=None, model_cfg=None, batch=None):
    model = EncoderDecoder(model_cfg or encoder_decoder("tiny-tiny", num_layers=1))
    loss_fn = loss_fn or functools.partial(cross_entropy_loss_fn, z_loss=1e-4)
    return trainer.Trainer(model, config, mesh or _single_device_mesh(), RULES, loss_fn, batch or _batch())


def test_gradient_accumulation_equals_full_batch():
    # eps large enough that Adam's first update is linear in near-zero gradients (with eps 1e-8 it is
    # ~lr * sign(g), which turns 1e-10 summation-order differences into 1e-5 parameter differences).
    opt = trainer.OptimizerConfig(learning_rate=1e-3, schedule="constant", warmup_steps=0, eps=1e-3)
    results = []
    for micro in (1, 2):
        t = _tiny_trainer(trainer.TrainConfig(num_train_steps=5, optimizer=opt, num_microbatches=micro))
        state = t.init_state()
        start = jax.device_get(state.params)
        state, metrics = t.train_step(state, _batch())
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (p1, m1), (p2, m2) = results
    for key in ("loss", "accuracy", "z_loss", "loss_denominator", "grad_norm"):
        np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert max(jax.tree.leaves(_diff(p1, p2))) <= 1e-6
    assert min(jax.tree.leaves(_diff(p1, start))) > 1e-5
    # The accumulated gradients themselves (micro-batches weighted by their token counts).
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    loss_fn = functools.partial(cross_entropy_loss_fn, model=t.model, z_loss=1e-4)
    grads = [
        jax.jit(trainer.accumulate_gradients, static_argnums=(3, 4))(start, batch, jax.random.PRNGKey(0), loss_fn, m)[0]
        for m in (1, 4)
    ]
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads[0]))
    assert max(jax.tree.leaves(_diff(*grads))) <= 1e-6 * scale


def _poisoned(params, batch, rng, *, model, teacher=None):
    """Cross-entropy, NaN when the batch carries a poison flag."""
    loss, aux = cross_entropy_loss_fn(params, batch, rng, model=model, teacher=teacher)
    return loss * jnp.where(jnp.sum(batch["poison"]) > 0, jnp.nan, 1.0), aux


def test_nonfinite_step_skips_the_update_and_stop_names_the_step():
    opt = trainer.OptimizerConfig(name="adafactor", learning_rate=1e-2, schedule="constant", warmup_steps=0)
    mesh = partitioning.make_mesh(partitioning.MeshConfig((1, 8, 1)))
    good = dict(_batch(rows=8), poison=np.zeros((8,), np.float32))
    bad = dict(good, poison=np.ones((8,), np.float32))
    config = trainer.TrainConfig(num_train_steps=5, optimizer=opt)
    t = _tiny_trainer(config, loss_fn=_poisoned, mesh=mesh, batch=good)
    state = t.init_state()
    before = jax.device_get(state.params)
    state, m_bad = t.train_step(state, bad)
    assert int(m_bad["nonfinite"]) == 1 and int(state.step) == 1
    assert max(jax.tree.leaves(_diff(before, jax.device_get(state.params)))) == 0.0
    state, m_good = t.train_step(state, good)
    assert int(m_good["nonfinite"]) == 0 and np.isfinite(float(m_good["loss"]))
    after = jax.device_get(state.params)
    assert min(jax.tree.leaves(_diff(before, after))) > 0.0  # adafactor updated every param
    with pytest.raises(NonFiniteLossError, match="non-finite at step 4"):
        _flush([(3, m_good), (4, m_bad)], config, _NoSummaries(), {})
    skip = trainer.TrainConfig(num_train_steps=5, optimizer=opt, nonfinite="skip")
    assert _flush([(3, m_good), (4, m_bad)], skip, _NoSummaries(), {})["nonfinite"] == 1.0


class _NoSummaries:
    def scalars(self, step, metrics):
        pass


def _decoder_only_source(cfg, seed):
    init = jax.jit(lambda key: DecoderOnlyLM(cfg).init(key, jnp.ones((1, 4), jnp.int32))["params"])
    params = init(jax.random.PRNGKey(seed))
    return cfg, jax.device_get(nn.meta.unbox(params))


def test_warmup_trains_only_new_params_then_all():
    big = decoder_only("tiny", num_layers=1)
    small = decoder_only("tiny", num_layers=1, embed_dim=32, hidden_dim=64, num_heads=2, num_kv_heads=1)
    adapted = adapt(_decoder_only_source(big, 0), _decoder_only_source(small, 1))
    assert adapted.new_param_paths  # unbalanced: fresh cross-attention
    cfg = adapted.config
    cfg = cfg.replace(encoder=cfg.encoder.replace(dtype="bfloat16"), decoder=cfg.decoder.replace(dtype="bfloat16"))
    config = trainer.TrainConfig(
        num_train_steps=10,
        optimizer=trainer.OptimizerConfig(learning_rate=1e-2, schedule="constant", warmup_steps=0),
        freeze=trainer.FreezeConfig(new_params=tuple(adapted.new_param_paths), train_all_after=2),
    )
    t = _tiny_trainer(config, model_cfg=cfg)
    state = t.init_state(adapted.params)
    start = jax.device_get(state.params)
    new = set(adapted.new_param_paths)

    def changed(params):
        flat = jax.tree_util.tree_flatten_with_path(_diff(params, start))[0]
        return {trainer.path_str(p) for p, d in flat if d > 0}

    all_paths = {trainer.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(start)[0]}
    for _ in range(2):
        state, _ = t.train_step(state, _batch())
        params = jax.device_get(state.params)
        assert changed(params) == new
    state, _ = t.train_step(state, _batch())
    params = jax.device_get(state.params)
    assert changed(params) == all_paths
    # bfloat16 compute, float32 master weights.
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}


def test_freeze_patterns_must_match():
    with pytest.raises(ValueError, match="match no parameter"):
        trainer.param_labels({"a": {"b": np.zeros(2)}}, trainer.FreezeConfig(new_params=("x/y",), train_all_after=3))
    labels = trainer.param_labels(
        {"enc": {"w": np.zeros(2)}, "dec": {"cross": {"q": np.zeros(2)}, "w": np.zeros(2)}},
        trainer.FreezeConfig(frozen=("enc",), new_params=(r"dec/cr.*",), train_all_after=3),
    )
    assert labels == {"enc": {"w": "frozen"}, "dec": {"cross": {"q": "new"}, "w": "rest"}}

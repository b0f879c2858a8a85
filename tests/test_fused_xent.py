"""The fused, chunked head + cross-entropy equals the unfused logits path: values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptation import trainer
from adaptation.models import DecoderOnlyLM, EncoderDecoder, presets
from adaptation.models.layers import soft_cap
from adaptation.objectives.fused_xent import fused_cross_entropy
from adaptation.objectives.losses import cross_entropy_loss_fn, cross_entropy_with_z_loss, token_accuracy_sum


def _reference(hidden, table, targets, weights, z_loss, cap):
    logits = soft_cap(jnp.einsum("BTD,VD->BTV", hidden, table), cap)
    total, z_sum, denom = cross_entropy_with_z_loss(logits, targets, weights, z_loss)
    return total, z_sum, denom, token_accuracy_sum(logits, targets, weights)


@pytest.mark.parametrize("cap,z_loss,chunk_tokens", [(None, 0.0, 4), (30.0, 1e-2, 6), (5.0, 1e-4, 4096)])
def test_fused_equals_reference(cap, z_loss, chunk_tokens):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(3, 12, 16)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(50, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 12)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, (3, 12)), jnp.float32)
    # Make some predictions right so that the accuracy sum is not trivially zero.
    targets = targets.at[0, :5].set(jnp.argmax(hidden[0, :5] @ table.T, axis=-1))
    ref = _reference(hidden, table, targets, weights, z_loss, cap)
    got = fused_cross_entropy(hidden, table, targets, weights, z_loss=z_loss, soft_cap=cap, chunk_tokens=chunk_tokens)
    np.testing.assert_allclose(np.array(got), np.array(ref), rtol=1e-5, atol=1e-4)
    assert float(got[3]) > 0

    def loss(f, h, t, w):
        out = f(h, t, w)
        return out[0] / out[2]

    fused = functools.partial(fused_cross_entropy, targets=targets, z_loss=z_loss, soft_cap=cap,
                              chunk_tokens=chunk_tokens)
    grad = jax.grad(loss, argnums=(1, 2, 3))
    g_fused = jax.jit(functools.partial(grad, lambda h, t, w: fused(h, t, weights=w)))(hidden, table, weights)
    g_ref = jax.jit(functools.partial(grad, lambda h, t, w: _reference(h, t, targets, w, z_loss, cap)))(
        hidden, table, weights)
    for a, b in zip(g_fused, g_ref):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)


def _lm_batch(rng, encoder: bool) -> dict:
    targets = rng.integers(3, 512, (2, 12)).astype(np.int32)
    targets[1, 9:] = 0
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.concatenate([np.full((2, 1), 2, np.int32), targets[:, :-1]], 1),
    }
    if encoder:
        batch["encoder_input_tokens"] = rng.integers(3, 512, (2, 10)).astype(np.int32)
    return batch


def test_loss_fn_fused_head_matches_logits_path():
    """Encoder-decoder: loss, metrics and every parameter gradient equal the unfused path."""
    model = EncoderDecoder(presets.encoder_decoder("tiny-tiny"))
    params = trainer.nn_unbox(trainer.model_init_fn(model)(jax.random.PRNGKey(0)))
    batch = _lm_batch(np.random.default_rng(1), encoder=True)

    def loss(p):
        fused, unfused = (cross_entropy_loss_fn(p, batch, None, model=model, z_loss=1e-2, fused_head=f)
                          for f in (True, False))
        return fused[0] + 0.0 * unfused[0], (fused, unfused)

    @jax.jit
    def both(p):
        g_f = jax.grad(lambda q: cross_entropy_loss_fn(q, batch, None, model=model, z_loss=1e-2)[0])(p)
        g_u = jax.grad(lambda q: cross_entropy_loss_fn(q, batch, None, model=model, z_loss=1e-2,
                                                       fused_head=False)[0])(p)
        return loss(p)[1], g_f, g_u

    ((l_f, aux_f), (l_u, aux_u)), g_f, g_u = both(params)
    np.testing.assert_allclose(float(l_f), float(l_u), rtol=1e-6)
    for key in aux_u:
        np.testing.assert_allclose(float(aux_f[key]), float(aux_u[key]), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_u)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=2e-6)


def test_decoder_only_loss_fused_head_matches_logits_path():
    model = DecoderOnlyLM(presets.decoder_only("tiny"))
    params = trainer.nn_unbox(trainer.model_init_fn(model)(jax.random.PRNGKey(0)))
    batch = _lm_batch(np.random.default_rng(2), encoder=False)
    run = jax.jit(lambda p, f: cross_entropy_loss_fn(p, batch, None, model=model, z_loss=1e-2, fused_head=f),
                  static_argnums=1)
    (l_f, aux_f), (l_u, aux_u) = run(params, True), run(params, False)
    np.testing.assert_allclose(float(l_f), float(l_u), rtol=1e-6)
    np.testing.assert_allclose(float(aux_f["accuracy"]), float(aux_u["accuracy"]), rtol=1e-6)

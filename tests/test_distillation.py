"""Knowledge distillation: soft CE vs teacher entropy, teacher alignment, gradients vs finite differences."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptation.models import DecoderOnlyLM, EncoderDecoder, decoder_only, encoder_decoder
from adaptation.objectives import distillation
from adaptation.objectives.losses import Teacher


def _entropy(logits, temperature=1.0):
    p = jax.nn.softmax(logits / temperature, axis=-1)
    return -jnp.sum(p * jax.nn.log_softmax(logits / temperature, axis=-1), axis=-1)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_ce_equals_teacher_entropy_when_student_is_teacher(temperature):
    logits = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 5, 97))
    cross, entropy = distillation.soft_cross_entropy(logits, logits, temperature)
    np.testing.assert_allclose(cross, _entropy(logits, temperature), atol=1e-5)
    np.testing.assert_allclose(entropy, _entropy(logits, temperature), atol=1e-5)
    # Top-k: the student equal to the renormalized top-k teacher (-inf elsewhere) gives its entropy.
    k = 7
    vals, idx = jax.lax.top_k(logits, k)
    truncated = jnp.full_like(logits, -1e9)
    truncated = jnp.put_along_axis(truncated, idx, vals, axis=-1, inplace=False)
    cross_k, entropy_k = distillation.soft_cross_entropy(truncated, logits, temperature, top_k=k)
    np.testing.assert_allclose(cross_k, _entropy(vals, temperature), atol=1e-5)
    np.testing.assert_allclose(entropy_k, _entropy(vals, temperature), atol=1e-5)
    # Any other student pays more than the entropy (Gibbs).
    other, _ = distillation.soft_cross_entropy(logits + jax.random.normal(jax.random.PRNGKey(1), logits.shape), logits)
    assert np.all(np.asarray(other) > np.asarray(_entropy(logits)) - 1e-6)


@pytest.mark.parametrize("top_k", [None, 5])
def test_soft_ce_gradient_matches_finite_differences(top_k):
    with jax.enable_x64(True):
        student = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 31), dtype=jnp.float64)
        teacher = 2 * jax.random.normal(jax.random.PRNGKey(3), (2, 3, 31), dtype=jnp.float64)

        def f(s):
            return jnp.sum(distillation.soft_cross_entropy(s, teacher, 1.7, top_k)[0] * jnp.arange(1.0, 4.0))

        grad = jax.grad(f)(student)
        direction = jax.random.normal(jax.random.PRNGKey(4), student.shape, dtype=jnp.float64)
        eps = 1e-6
        numeric = (f(student + eps * direction) - f(student - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=1e-7)


def _tiny_setup():
    cfg = decoder_only("tiny")
    teacher_model = DecoderOnlyLM(cfg)
    student_model = EncoderDecoder(encoder_decoder("tiny-tiny"))
    rng = np.random.default_rng(0)
    inputs = np.zeros((3, 6), np.int32)
    targets = np.zeros((3, 5), np.int32)
    for row, (n_in, n_tg) in enumerate([(6, 5), (3, 4), (1, 2)]):
        inputs[row, :n_in] = rng.integers(3, cfg.vocab_size, n_in)
        targets[row, :n_tg] = rng.integers(3, cfg.vocab_size, n_tg)
    decoder_inputs = np.concatenate([np.full((3, 1), 2, np.int32), targets[:, :-1]], 1) * (targets > 0)
    decoder_inputs[:, 0] = 2
    batch = {
        "encoder_input_tokens": jnp.asarray(inputs),
        "decoder_input_tokens": jnp.asarray(decoder_inputs),
        "decoder_target_tokens": jnp.asarray(targets),
        "decoder_loss_weights": jnp.asarray((targets > 0).astype(np.float32)),
    }
    t_params = teacher_model.init(jax.random.PRNGKey(5), jnp.ones((1, 4), jnp.int32))["params"]
    s_params = student_model.init(jax.random.PRNGKey(6), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))[
        "params"
    ]
    return teacher_model, t_params, student_model, s_params, batch


def test_teacher_sees_bos_inputs_targets_without_pads():
    teacher_model, t_params, student_model, s_params, batch = _tiny_setup()
    loss_fn = distillation.make_kd_loss_fn(alpha=1.0, temperature=1.0)
    teacher = Teacher(teacher_model, t_params)
    _, aux = jax.jit(lambda p, b: loss_fn(p, b, None, model=student_model, teacher=teacher))(s_params, batch)
    student_logits = jax.jit(student_model.apply)(
        {"params": s_params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    )
    # Reference: the teacher on each row's [bos; inputs; targets] from position 0, right-padded
    # (causal attention: the pads after a token do not change its logits).
    rows = []
    for row in range(3):
        x = [int(t) for t in batch["encoder_input_tokens"][row] if t]
        y = [int(t) for t in batch["decoder_target_tokens"][row] if t]
        rows.append((x, y, [2] + x + y + [0] * (11 - len(x) - len(y))))
    ref_logits = jax.jit(teacher_model.apply)({"params": t_params}, jnp.asarray([r[2] for r in rows]))
    crosses, entropies, count = [], [], 0
    for row, (x, y, _) in enumerate(rows):
        logits = ref_logits[row, len(x) : len(x) + len(y)]
        c, e = distillation.soft_cross_entropy(student_logits[row, : len(y)], logits)
        crosses.append(jnp.sum(c))
        entropies.append(jnp.sum(e))
        count += len(y)
    np.testing.assert_allclose(aux["kd_soft_cross_entropy"], sum(crosses) / count, rtol=1e-5)
    np.testing.assert_allclose(aux["teacher_entropy"], sum(entropies) / count, rtol=1e-5, atol=1e-5)


def test_kd_loss_mixes_soft_and_hard_terms():
    teacher_model, t_params, student_model, s_params, batch = _tiny_setup()
    teacher = (teacher_model, t_params)
    loss, aux = jax.jit(
        lambda p: distillation.make_kd_loss_fn(alpha=0.3, temperature=2.0, top_k=8)(
            p, batch, None, model=student_model, teacher=teacher
        )
    )(s_params)
    expected = 0.3 * 4.0 * aux["kd_soft_cross_entropy"] + 0.7 * aux["cross_entropy"]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    hard_fn = distillation.make_kd_loss_fn(alpha=0.0)
    hard, _ = jax.jit(lambda p: hard_fn(p, batch, None, model=student_model, teacher=teacher))(s_params)
    np.testing.assert_allclose(hard, aux["cross_entropy"], rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        distillation.make_kd_loss_fn(alpha=1.5)


def test_kd_loss_gradient_matches_finite_differences():
    teacher_model, t_params, student_model, s_params, batch = _tiny_setup()
    loss_fn = distillation.make_kd_loss_fn(alpha=0.5, temperature=1.5)
    teacher = Teacher(teacher_model, t_params)

    f = jax.jit(lambda p: loss_fn(p, batch, None, model=student_model, teacher=teacher)[0])
    grad = jax.jit(jax.grad(f))(s_params)
    leaves, treedef = jax.tree_util.tree_flatten(s_params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    # A probe direction scaled to each parameter's own magnitude (embeddings start at N(0, 0.02)), so the
    # central difference stays in the locally linear regime for every leaf.
    direction = treedef.unflatten([
        jax.random.normal(k, x.shape) * max(float(jnp.sqrt(jnp.mean(jnp.square(x)))), 0.02)
        for k, x in zip(keys, leaves)
    ])
    analytic = sum(
        jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction))
    )
    eps = 1e-2
    plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, s_params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, s_params, direction)
    numeric = (f(plus) - f(minus)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_distillation_imports_without_tensorflow_or_seqio():
    code = (
        "import sys; import adaptation.objectives.distillation; "
        "bad = [m for m in ('tensorflow', 'seqio') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

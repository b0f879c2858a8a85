"""Poolers and the encoder classifier head: padding invariance, pad masking, gradients, outputs, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from adaptation.encoder import pad_batch
from adaptation.models import decoder_only
from adaptation.models.heads import (
    POOLERS,
    EncoderClassifier,
    HeadConfig,
    KVProbePooler,
    QueryProbePooler,
    first_k_weights,
    last_k_weights,
    simple_pool,
)

CFG = decoder_only("tiny", causal=False)
SEQS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [20, 21, 22], [30, 31, 32, 33, 34, 35], [40]]


def _init(head: HeadConfig, length=16):
    model = EncoderClassifier(CFG, head)
    params = model.init(jax.random.PRNGKey(1), jnp.ones((1, length), jnp.int32))
    return model, meta.unbox(params["params"])


def _apply(model, params, tokens, **kw):
    return model.apply({"params": params}, tokens, **kw)


def test_first_and_last_k_select_by_rank_not_index():
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    last2 = np.asarray(last_k_weights(mask, 2))
    first2 = np.asarray(first_k_weights(mask, 2))
    np.testing.assert_allclose(last2[0], [0, 0, 0, 0, 0.5, 0.5])
    np.testing.assert_allclose(first2[0], [0, 0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(last2[1], [0.5, 0.5, 0, 0, 0, 0])  # only 2 real tokens
    np.testing.assert_allclose(first2[2], [0.5, 0.5, 0, 0, 0, 0])
    np.testing.assert_allclose(np.asarray(last_k_weights(mask, 3))[1], [0.5, 0.5, 0, 0, 0, 0])


def test_simple_poolers_identical_under_left_and_right_padding():
    model, params = _init(HeadConfig(num_classes=3))
    right = jnp.asarray(pad_batch(SEQS, 16, pad_side="right"))
    left = jnp.asarray(pad_batch(SEQS, 16, pad_side="left"))
    assert not np.array_equal(np.asarray(right), np.asarray(left))
    np.testing.assert_allclose(np.asarray(_apply(model, params, right)), np.asarray(_apply(model, params, left)), atol=1e-5)
    # Pooled vectors of every simple pooler and several K agree under both paddings.
    encode = jax.jit(lambda t: model.apply({"params": params}, t, method=EncoderClassifier.encode))
    ha, hb = encode(right), encode(left)
    for pooler, k in [("last", 1), ("last", 3), ("first", 1), ("first", 2), ("mean", 1)]:
        pa = simple_pool(ha, right != 0, pooler, k)
        pb = simple_pool(hb, left != 0, pooler, k)
        np.testing.assert_allclose(np.asarray(pa), np.asarray(pb), atol=1e-5, err_msg=f"{pooler}-{k}")


def test_last_k_pools_the_last_tokens_of_a_left_padded_row():
    hidden = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    mask = jnp.asarray([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    out = np.asarray(simple_pool(hidden, mask, "last", 2))
    np.testing.assert_allclose(out[0], (np.asarray(hidden[0, 3]) + np.asarray(hidden[0, 4])) / 2)
    np.testing.assert_allclose(out[1], (np.asarray(hidden[1, 1]) + np.asarray(hidden[1, 2])) / 2)


def _perturb_pads(hidden, mask, seed=0):
    noise = jax.random.normal(jax.random.PRNGKey(seed), hidden.shape) * 100.0
    return jnp.where(mask[..., None], hidden, noise)


@pytest.mark.parametrize("pooler", ["mean", "last", "first"])
def test_simple_poolers_ignore_pads(pooler):
    hidden = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 4))
    mask = jnp.asarray([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1] * 7], bool)
    a = simple_pool(hidden, mask, pooler, 2)
    b = simple_pool(_perturb_pads(hidden, mask), mask, pooler, 2)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    if pooler == "mean":
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(hidden[0, :3].mean(0)), atol=1e-6)


@pytest.mark.parametrize("cls", [QueryProbePooler, KVProbePooler])
def test_attention_poolers_ignore_pads(cls):
    hidden = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 8))
    mask = jnp.asarray([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1] * 7], bool)
    module = cls(num_probes=3, num_heads=2)
    params = module.init(jax.random.PRNGKey(2), hidden, mask)
    pooler = type("Jitted", (), {"apply": staticmethod(jax.jit(module.apply))})
    a = np.asarray(pooler.apply(params, hidden, mask))
    b = np.asarray(pooler.apply(params, _perturb_pads(hidden, mask), mask))
    np.testing.assert_allclose(a, b, atol=1e-5)
    # Dropping the pad columns altogether gives the same vector.
    short = np.asarray(pooler.apply(params, hidden[:1, :3], mask[:1, :3]))
    np.testing.assert_allclose(a[:1], short, atol=1e-5)
    # Left vs right padding of the same tokens.
    right = jnp.concatenate([hidden[:1, :3], hidden[:1, 3:]], axis=1)
    left = jnp.concatenate([hidden[:1, 3:], hidden[:1, :3]], axis=1)
    m_right = jnp.asarray([[1, 1, 1, 0, 0, 0, 0]], bool)
    m_left = m_right[:, ::-1]
    np.testing.assert_allclose(
        np.asarray(pooler.apply(params, right, m_right)), np.asarray(pooler.apply(params, left, m_left)), atol=1e-5
    )
    assert np.abs(a).max() > 0


@pytest.mark.parametrize("pooler", POOLERS)
def test_every_pooler_is_differentiable(pooler):
    hidden = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 8))
    mask = jnp.asarray([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1] * 7], bool)
    if "probe" in pooler:
        module = (QueryProbePooler if pooler == "query_probe" else KVProbePooler)(num_probes=2, num_heads=2)
        params = module.init(jax.random.PRNGKey(2), hidden, mask)

        def f(p, h):
            return jnp.sum(jnp.sin(module.apply(p, h, mask)))

        g_params, g_hidden = jax.grad(f, argnums=(0, 1))(params, hidden)
        assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_params))
    else:
        g_hidden = jax.grad(lambda h: jnp.sum(jnp.sin(simple_pool(h, mask, pooler, 2))))(hidden)
    g_hidden = np.asarray(g_hidden)
    assert np.isfinite(g_hidden).all()
    assert np.abs(g_hidden[np.asarray(mask)]).max() > 0
    np.testing.assert_array_equal(g_hidden[~np.asarray(mask)], 0.0)  # no gradient flows into pads
    # Finite-difference check along a random direction.
    direction = jax.random.normal(jax.random.PRNGKey(4), hidden.shape) * mask[..., None]
    eps = 1e-3
    if "probe" in pooler:
        fd = (f(params, hidden + eps * direction) - f(params, hidden - eps * direction)) / (2 * eps)
    else:
        fn = lambda h: jnp.sum(jnp.sin(simple_pool(h, mask, pooler, 2)))  # noqa: E731
        fd = (fn(hidden + eps * direction) - fn(hidden - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(fd), float(jnp.sum(g_hidden * direction)), rtol=2e-2, atol=1e-3)


def test_classifier_gradients_reach_every_part_and_padding_side_does_not_matter():
    model, params = _init(HeadConfig(pooler="query_probe", num_probes=2, probe_heads=2, mlp_depth=1))
    right = jnp.asarray(pad_batch(SEQS, 16, pad_side="right"))
    left = jnp.asarray(pad_batch(SEQS, 16, pad_side="left"))
    labels = jnp.asarray([0, 1, 1, 0])

    def loss(p, tokens):
        logits = model.apply({"params": p}, tokens)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    value, grads = jax.jit(jax.value_and_grad(loss))(params, right)
    assert np.isfinite(float(value))
    norms = {k: float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(v)))) for k, v in grads.items()}
    for name in ("head", "head_mlp_0", "pooler", "encoder", "embedder"):
        assert np.isfinite(norms[name]) and norms[name] > 0, (name, norms)
    np.testing.assert_allclose(float(jax.jit(loss)(params, left)), float(value), atol=1e-5)


def test_output_kinds_and_shapes():
    tokens = jnp.asarray(pad_batch(SEQS, 16))
    for head, shape in [
        (HeadConfig(output="classification", num_classes=5), (4, 5)),
        (HeadConfig(output="regression"), (4,)),
        (HeadConfig(output="ranking", pooler="mean", mlp_depth=2, mlp_width=32, activation="relu"), (4,)),
    ]:
        model = EncoderClassifier(CFG, head)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
        out = jax.eval_shape(model.apply, variables, tokens)
        assert out.shape == shape and out.dtype == jnp.float32
    model = EncoderClassifier(CFG, HeadConfig(mlp_depth=2, mlp_width=32))
    params = meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"])
    assert params["head_mlp_0"]["kernel"].shape == (CFG.embed_dim, 32)
    assert params["head_mlp_1"]["kernel"].shape == (32, 32)
    assert params["head"]["kernel"].shape == (32, 2) and params["head"]["bias"].shape == (2,)


def test_head_dropout_and_residual_dropout():
    tokens = jnp.asarray(pad_batch(SEQS, 16))
    model, params = _init(HeadConfig(dropout_rate=0.5))
    residual = EncoderClassifier(CFG.replace(dropout_rate=0.3), HeadConfig())

    @jax.jit
    def run(p, rng):
        det = model.apply({"params": p}, tokens)
        drop = model.apply({"params": p}, tokens, enable_dropout=True, rngs={"dropout": rng})
        drop2 = residual.apply({"params": p}, tokens, enable_dropout=True, rngs={"dropout": rng})
        return det, drop, drop2

    det, drop, drop2 = run(params, jax.random.PRNGKey(3))
    # Same model and inputs; XLA fuses the two programs differently (float32 reassociation).
    np.testing.assert_allclose(np.asarray(det), np.asarray(_apply(model, params, tokens)), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(drop) - np.asarray(det)).max() > 1e-4
    assert np.abs(np.asarray(drop2) - np.asarray(det)).max() > 1e-4


def test_bad_head_configs_raise():
    with pytest.raises(ValueError, match="unknown pooler"):
        HeadConfig(pooler="max")
    with pytest.raises(ValueError, match="unknown head output"):
        HeadConfig(output="span")
    with pytest.raises(ValueError, match="num_classes"):
        HeadConfig(num_classes=1)
    with pytest.raises(ValueError, match="activation"):
        HeadConfig(activation="swish2")
    with pytest.raises(ValueError, match="probe_heads"):
        model = EncoderClassifier(CFG, HeadConfig(pooler="query_probe", probe_heads=3))
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))


def test_pad_batch_sides_and_truncation():
    np.testing.assert_array_equal(pad_batch([[1, 2, 3], [4]], 4), [[1, 2, 3, 0], [4, 0, 0, 0]])
    np.testing.assert_array_equal(pad_batch([[1, 2, 3], [4]], 4, pad_side="left"), [[0, 1, 2, 3], [0, 0, 0, 4]])
    np.testing.assert_array_equal(pad_batch([[1, 2, 3, 4, 5]], 3), [[3, 4, 5]])
    np.testing.assert_array_equal(pad_batch([[1, 2, 3, 4, 5]], 3, truncate_side="right"), [[1, 2, 3]])
    with pytest.raises(ValueError, match="pad_side"):
        pad_batch([[1]], 2, pad_side="middle")

"""Adaptation: decoder-only params -> encoder-decoder params (balanced, unbalanced, merged, tied)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptation.adapt import adapt, trainable_mask
from adaptation.checkpoints.common import expected_shapes, flatten, unflatten
from adaptation.models import EncoderDecoder, EncoderOnly, decoder_only, encoder_decoder, layout

ENC = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0], [3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
DEC = jnp.array([[2, 20, 21, 22, 23, 24, 25, 26, 27, 28], [2, 30, 31, 32, 0, 0, 0, 0, 0, 0]])


def _source(cfg, seed):
    """(cfg, params): a decoder-only model with every leaf random (norm scales included)."""
    rng = np.random.default_rng(seed)
    flat = {p: (0.3 * rng.standard_normal(s)).astype(np.float32) for p, s in expected_shapes(cfg).items()}
    return cfg, unflatten(flat)


SMALL = decoder_only("tiny")  # 2 layers, width 64, 4 q / 2 kv heads x 16
BIG = decoder_only("tiny", num_layers=3, embed_dim=96, hidden_dim=160, num_heads=6, num_kv_heads=3, head_dim=8)


def _forward(module, params, *args, **kw):
    """A jitted `module.apply` (op-by-op dispatch is slow on a shared CPU)."""
    return jax.jit(functools.partial(module.apply, **kw))({"params": params}, *args)


def _equal(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_balanced_copies_every_weight_and_cross_attention_from_self_attention():
    cfg, src = _source(SMALL, 0)
    out = adapt((cfg, src))
    p = out.params
    assert out.new_param_paths == []
    assert _equal(p["encoder_embedder"]["embedding"], src["embedder"]["embedding"])
    assert _equal(p["decoder_embedder"]["embedding"], src["embedder"]["embedding"])
    # Encoder and decoder reproduce every source layer weight exactly.
    for stack in ("encoder", "decoder"):
        for path, leaf in flatten(src["decoder"]).items():
            assert _equal(flatten(p[stack])[path], leaf), (stack, path)
    for i in range(cfg.num_layers):
        layer = p["decoder"][f"layers_{i}"]
        for name in ("q", "k", "v", "o"):
            assert _equal(layer["cross_attn"][name], layer["attn"][name])
        assert _equal(layer["pre_cross_attention_norm"]["scale"], layer["pre_attention_norm"]["scale"])
        assert _equal(layer["post_cross_attention_norm"]["scale"], layer["post_attention_norm"]["scale"])
    assert "cross_attn" not in p["encoder"]["layers_0"]
    assert out.config.encoder.causal is False and out.config.decoder.cross_attention


def test_adapted_encoder_is_the_source_stack_run_bidirectionally():
    cfg, src = _source(SMALL, 1)
    out = adapt((cfg, src))
    encoded = _forward(EncoderDecoder(out.config), out.params, ENC, method=EncoderDecoder.encode)
    encoder_only = {"embedder": src["embedder"], "encoder": src["decoder"]}
    ref = _forward(EncoderOnly(cfg.replace(causal=False)), encoder_only, ENC)
    np.testing.assert_array_equal(np.asarray(encoded), np.asarray(ref))


def test_unbalanced_encoder_from_big_decoder_from_small_with_fresh_cross_attention():
    big_cfg, big = _source(BIG, 2)
    small_cfg, small = _source(SMALL, 3)
    out = adapt((big_cfg, big), (small_cfg, small), seed=7)
    p = out.params
    assert out.config.encoder.embed_dim == 96 and out.config.decoder.embed_dim == 64
    assert out.config.decoder.cross_kv_dim == 96
    for path, leaf in flatten(big["decoder"]).items():
        assert _equal(flatten(p["encoder"])[path], leaf), path
    for path, leaf in flatten(small["decoder"]).items():
        assert _equal(flatten(p["decoder"])[path], leaf), path
    assert _equal(p["encoder_embedder"]["embedding"], big["embedder"]["embedding"])
    assert _equal(p["decoder_embedder"]["embedding"], small["embedder"]["embedding"])
    expected_new = sorted(
        f"decoder/layers_{i}/{name}"
        for i in range(small_cfg.num_layers)
        for name in ("cross_attn/q", "cross_attn/k", "cross_attn/v", "cross_attn/o",
                     "pre_cross_attention_norm/scale", "post_cross_attention_norm/scale")
    )
    assert sorted(out.new_param_paths) == expected_new
    flat = flatten(p)
    # K/V read the encoder width; queries and output stay in the decoder's heads and width.
    assert flat["decoder/layers_0/cross_attn/k"].shape == (96, 2, 16)
    assert flat["decoder/layers_0/cross_attn/v"].shape == (96, 2, 16)
    assert flat["decoder/layers_0/cross_attn/q"].shape == (64, 4, 16)
    assert flat["decoder/layers_0/cross_attn/o"].shape == (4, 16, 64)
    # Fresh weights: the model's initializers (lecun normal projections, zero norm scales), per layer.
    q0, q1 = flat["decoder/layers_0/cross_attn/q"], flat["decoder/layers_1/cross_attn/q"]
    assert np.std(q0) == pytest.approx(64**-0.5, rel=0.25) and not _equal(q0, q1)
    assert not np.any(flat["decoder/layers_0/pre_cross_attention_norm/scale"])
    # Deterministic in the seed.
    again = adapt((big_cfg, big), (small_cfg, small), seed=7)
    assert _equal(flatten(again.params)["decoder/layers_0/cross_attn/k"], flat["decoder/layers_0/cross_attn/k"])
    other = adapt((big_cfg, big), (small_cfg, small), seed=8)
    assert not _equal(flatten(other.params)["decoder/layers_0/cross_attn/k"], flat["decoder/layers_0/cross_attn/k"])


def test_random_cross_attention_on_request_for_a_balanced_pair():
    cfg, src = _source(SMALL, 4)
    out = adapt((cfg, src), cross_attention_init="random")
    assert len(out.new_param_paths) == 6 * cfg.num_layers
    layer = out.params["decoder"]["layers_1"]
    assert not _equal(layer["cross_attn"]["q"], layer["attn"]["q"])
    assert _equal(layer["attn"]["q"], src["decoder"]["layers_1"]["attn"]["q"])


@pytest.mark.parametrize("scan", [False, True])
def test_adapted_model_runs_in_both_layouts(scan):
    big_cfg, big = _source(BIG, 5)
    small_cfg, small = _source(SMALL, 6)
    out = adapt((big_cfg, big), (small_cfg, small))
    ref = _forward(EncoderDecoder(out.config), out.params, ENC, DEC)
    assert ref.shape == (2, DEC.shape[1], SMALL.vocab_size) and bool(jnp.all(jnp.isfinite(ref)))
    if scan:
        cfg = out.config.replace(
            encoder=out.config.encoder.replace(scan_layers=True),
            decoder=out.config.decoder.replace(scan_layers=True),
        )
        params = layout.map_stacks(out.params, layout.stack_layers)
        logits = _forward(EncoderDecoder(cfg), params, ENC, DEC)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=1e-5)


def test_scanned_source_params_are_accepted():
    cfg, src = _source(SMALL, 7)
    scanned = {"embedder": src["embedder"], "decoder": layout.stack_layers(src["decoder"])}
    a = adapt((cfg.replace(scan_layers=True), scanned))
    b = adapt((cfg, src))
    assert jax.tree.all(jax.tree.map(_equal, a.params, b.params))


def test_gemma3_source_to_t5gemma2_merged_attention_and_tied_embeddings():
    cfg, src = _source(decoder_only("tiny_gemma3", num_layers=2), 8)
    out = adapt((cfg, src), merged_attention=True, tie_all_embeddings=True)
    p = out.params
    assert set(p) == {"embedder", "encoder", "decoder"} and out.new_param_paths == []
    assert out.config.decoder.merged_attention and out.config.tie_all_embeddings
    layer = p["decoder"]["layers_0"]
    assert "cross_attn" not in layer and "pre_cross_attention_norm" not in layer
    for path, leaf in flatten(src["decoder"]).items():
        assert _equal(flatten(p["decoder"])[path], leaf), path
    assert _equal(layer["attn"]["query_norm"]["scale"], src["decoder"]["layers_0"]["attn"]["query_norm"]["scale"])
    logits = _forward(EncoderDecoder(out.config), p, ENC, DEC)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_gemma3_balanced_cross_attention_copies_qk_norms():
    cfg, src = _source(decoder_only("tiny_gemma3", num_layers=2), 9)
    layer = adapt((cfg, src)).params["decoder"]["layers_1"]
    assert _equal(layer["cross_attn"]["key_norm"]["scale"], layer["attn"]["key_norm"]["scale"])


def test_trainable_mask_per_layer_and_scanned():
    big_cfg, big = _source(BIG, 10)
    small_cfg, small = _source(SMALL, 11)
    out = adapt((big_cfg, big), (small_cfg, small))
    mask = flatten(trainable_mask(out.params, out.new_param_paths))
    assert sorted(p for p, m in mask.items() if m) == sorted(out.new_param_paths)
    scanned = layout.map_stacks(out.params, layout.stack_layers)
    smask = flatten(trainable_mask(scanned, out.new_param_paths))
    assert sorted(p for p, m in smask.items() if m) == sorted(
        {p.replace("layers_0", "layers").replace("layers_1", "layers") for p in out.new_param_paths}
    )
    # The warm-up: an optimizer that updates the new params only.
    optax = pytest.importorskip("optax")
    tx = optax.multi_transform({True: optax.sgd(1.0), False: optax.set_to_zero()}, trainable_mask(out.params, out.new_param_paths))
    grads = jax.tree.map(np.ones_like, out.params)
    updates = flatten(tx.update(grads, tx.init(out.params), out.params)[0])
    assert all(bool(np.any(u)) == mask[p] for p, u in updates.items())
    with pytest.raises(ValueError, match="name no parameter"):
        trainable_mask(out.params, ["decoder/layers_0/cross_atn/q"])
    with pytest.raises(ValueError, match="only some layers"):
        trainable_mask(scanned, ["decoder/layers_0/cross_attn/q"])


def test_bad_pairs_raise_errors_naming_both_sides():
    small = _source(SMALL, 12)
    with pytest.raises(ValueError, match=r"vocab_size=512.*vocab_size=600"):
        adapt(small, _source(SMALL.replace(vocab_size=600), 13))
    big = _source(BIG, 14)
    with pytest.raises(ValueError, match=r"merged attention.*embed_dim=96.*embed_dim=64"):
        adapt(big, small, merged_attention=True)
    with pytest.raises(ValueError, match=r"tied embeddings.*embed_dim=96.*embed_dim=64"):
        adapt(big, small, tie_all_embeddings=True)
    with pytest.raises(ValueError, match=r"cannot copy.*encoder source embed_dim=96.*decoder source embed_dim=64"):
        adapt(big, small, cross_attention_init="copy")
    with pytest.raises(ValueError, match="cross_attention_init"):
        adapt(small, cross_attention_init="zeros")


def test_non_decoder_only_sources_and_mismatched_params_are_refused():
    cfg, src = _source(SMALL, 15)
    ed = encoder_decoder("tiny-tiny")
    with pytest.raises(ValueError, match="encoder source.*not an encoder-decoder"):
        adapt((ed, src))
    with pytest.raises(ValueError, match="decoder source is already an encoder-decoder"):
        adapt((cfg, src), (ed.decoder, src))
    adapted = adapt((cfg, src))
    with pytest.raises(ValueError, match="looks like an encoder-decoder checkpoint"):
        adapt((cfg, adapted.params))
    with pytest.raises(ValueError, match="bidirectional"):
        adapt((cfg.replace(causal=False), src))
    wrong = _source(SMALL.replace(head_dim=8), 16)[1]
    with pytest.raises(ValueError, match=r"encoder source params.*layers_0/attn/q: expected \(64, 4, 16\), found \(64, 4, 8\)"):
        adapt((cfg, wrong))


@pytest.mark.parametrize("name, count", [("B-B", 591_490_560), ("S-S", 312_517_632)])
def test_published_parameter_counts(name, count):
    cfg = encoder_decoder(name)
    assert cfg.decoder.vocab_size == 256_000
    tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    shapes = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.PRNGKey(0), tokens, tokens)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count

"""The model core: masks, positions, layouts, caching, dtypes and full-size shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from adaptation import decoding
from adaptation.models import (
    DecoderOnlyLM,
    EncoderDecoder,
    EncoderOnly,
    decoder_only,
    encoder_decoder,
    layout,
    masks,
)


def test_positions_restart_per_segment_and_ignore_padding():
    segments = jnp.array([[1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    positions = masks.positions_from_segments(segments)
    np.testing.assert_array_equal(positions, [[0, 1, 2, 0, 1, 0, 0], [0, 0, 0, 1, 2, 3, 4]])


def test_sliding_window_boundaries_follow_the_oracle():
    pos = jnp.arange(6)[None]
    seg = jnp.ones((1, 6), jnp.int32)
    causal = masks.attention_mask(pos, seg, pos, seg, causal=True, window=2)[0]
    bidir = masks.attention_mask(pos, seg, pos, seg, causal=False, window=2)[0]
    # causal: 0 <= i - j < window; bidirectional: |i - j| <= window.
    assert causal[3].tolist() == [False, False, True, True, False, False]
    assert bidir[3].tolist() == [False, True, True, True, True, True]


def test_packed_segments_do_not_attend_across():
    seg = jnp.array([[1, 1, 2, 2]])
    pos = masks.positions_from_segments(seg)
    m = masks.attention_mask(pos, seg, pos, seg, causal=False)[0]
    assert not bool(m[0, 2]) and not bool(m[2, 1]) and bool(m[3, 2])


def _init(model, *args):
    return meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), *args)["params"])


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_stack_equals_unscanned(remat):
    cfg = decoder_only("tiny", num_layers=3)
    tokens = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0]])
    params = _init(DecoderOnlyLM(cfg), tokens)
    scanned = {**params, "decoder": layout.stack_layers(params["decoder"])}
    ref = DecoderOnlyLM(cfg).apply({"params": params}, tokens)
    out = DecoderOnlyLM(cfg.replace(scan_layers=True, remat_policy=remat)).apply({"params": scanned}, tokens)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    back = layout.unstack_layers(scanned["decoder"])
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), back, params["decoder"]))


def test_right_padding_does_not_change_real_positions():
    cfg = decoder_only("tiny")
    short = jnp.array([[5, 6, 7, 8]])
    padded = jnp.array([[5, 6, 7, 8, 0, 0, 0]])
    params = _init(DecoderOnlyLM(cfg), padded)
    a = DecoderOnlyLM(cfg).apply({"params": params}, short)
    b = DecoderOnlyLM(cfg).apply({"params": params}, padded)
    np.testing.assert_allclose(a, b[:, :4], atol=1e-5)


def test_left_padded_encoder_matches_unpadded():
    cfg = decoder_only("tiny", causal=False)
    tokens = jnp.array([[5, 6, 7, 8, 9]])
    left = jnp.array([[0, 0, 5, 6, 7, 8, 9]])
    params = _init(EncoderOnly(cfg), left)
    a = EncoderOnly(cfg).apply({"params": params}, tokens)
    b = EncoderOnly(cfg).apply({"params": params}, left)
    np.testing.assert_allclose(a, b[:, 2:], atol=1e-5)


@pytest.mark.parametrize("merged", [False, True])
def test_cached_decoding_equals_full_forward(merged):
    cfg = encoder_decoder("tiny-tiny")
    if merged:
        cfg = cfg.replace(
            decoder=cfg.decoder.replace(cross_attention=False, merged_attention=True), tie_all_embeddings=True
        )
    model = EncoderDecoder(cfg)
    enc = jnp.array([[5, 6, 7, 8, 0, 0], [3, 4, 5, 6, 7, 8]])
    dec = jnp.array([[2, 9, 10, 11, 12], [2, 11, 12, 13, 14]])
    params = _init(model, enc, dec)
    full = model.apply({"params": params}, enc, dec)
    encoded = model.apply({"params": params}, enc, method=model.encode)
    cache = decoding.empty_cache(cfg.decoder, 2, dec.shape[1])
    steps = []
    for t in range(dec.shape[1]):
        logits, cache = model.apply(
            {"params": params}, encoded, (enc != 0).astype(jnp.int32), dec[:, t : t + 1],
            cache=cache, decode_index=jnp.int32(t), method=model.decode,
        )
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_bfloat16_compute_runs_and_stays_close():
    cfg = encoder_decoder("tiny-tiny")
    enc = jnp.array([[5, 6, 7, 8]])
    dec = jnp.array([[2, 9, 10]])
    params = _init(EncoderDecoder(cfg), enc, dec)
    ref = EncoderDecoder(cfg).apply({"params": params}, enc, dec)
    bf = cfg.replace(encoder=cfg.encoder.replace(dtype="bfloat16"), decoder=cfg.decoder.replace(dtype="bfloat16"))
    out = EncoderDecoder(bf).apply({"params": params}, enc, dec)
    assert out.dtype == jnp.float32
    assert float(jnp.abs(out - ref).max()) < 0.02 * float(jnp.abs(ref).max())


@pytest.mark.parametrize("name", ["2B-2B", "9B-2B", "270M-270M"])
def test_full_size_presets_have_the_published_shapes(name):
    cfg = encoder_decoder(name)
    model = EncoderDecoder(cfg)
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"]
    dec0 = shapes["decoder"]["layers_0"]
    d = cfg.decoder
    if d.cross_attention:
        # Cross-attention K/V read the encoder width (3584 for a 9B encoder).
        assert dec0["cross_attn"]["k"].value.shape == (cfg.encoder.embed_dim, d.num_kv_heads, d.head_dim)
    else:
        assert "cross_attn" not in dec0
    assert dec0["mlp"]["gate"].value.shape == (d.embed_dim, d.hidden_dim)


def test_config_errors_name_both_sides():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        decoder_only("tiny", num_heads=3)
    cfg = encoder_decoder("tiny-tiny")
    with pytest.raises(ValueError, match="vocabulary"):
        cfg.replace(decoder=cfg.decoder.replace(vocab_size=100))

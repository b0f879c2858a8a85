"""Decoding: cached logits, greedy vs transformers, beam search, sampling, eos handling, merged attention."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptation import decoding
from adaptation.checkpoints.common import expected_shapes, unflatten
from adaptation.models import EncoderDecoder, encoder_decoder, layout

ENC = jnp.array([[5, 17, 9, 33, 2, 71, 8, 40, 12], [4, 9, 33, 2, 7, 0, 0, 0, 0]], jnp.int32)
DEC = jnp.array([[2, 6, 7, 8, 9, 10, 11, 12], [2, 9, 33, 44, 45, 46, 47, 48]], jnp.int32)


@functools.lru_cache(maxsize=None)
def _tiny(merged: bool = False, scan: bool = False):
    """tiny-tiny (window 8; shortened to 3 so decoding crosses it), every weight random."""
    cfg = encoder_decoder("tiny-tiny", sliding_window=3)
    if merged:  # T5Gemma 2 decoder: merged attention, one embedding table
        cfg = cfg.replace(
            decoder=cfg.decoder.replace(cross_attention=False, merged_attention=True), tie_all_embeddings=True
        )
    rng = np.random.default_rng(0)
    # Small embeddings, so that the residual stream is not just the input token (which a tied head echoes).
    scale = {True: 0.05, False: 0.3}
    params = unflatten({
        p: (scale["embedding" in p] * rng.standard_normal(s)).astype(np.float32) for p, s in expected_shapes(cfg).items()
    })
    if scan:
        cfg = cfg.replace(encoder=cfg.encoder.replace(scan_layers=True), decoder=cfg.decoder.replace(scan_layers=True))
        params = layout.map_stacks(params, layout.stack_layers)
    return EncoderDecoder(cfg), params


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(model, params, enc, dec):
    return model.apply({"params": params}, enc, dec)


@functools.partial(jax.jit, static_argnums=0)
def _cached_logits(model, params, enc, dec):
    """Teacher-forced decoding one token at a time through `init_cache` + `decoder_tokens_to_logits`."""
    segments = (enc != 0).astype(jnp.int32)
    encoded = model.apply({"params": params}, enc, segments, method=EncoderDecoder.encode)
    cache = decoding.init_cache(model, params, enc.shape[0], dec.shape[1], encoded, segments)
    step = decoding.decoder_tokens_to_logits(model, params, encoded, segments)

    def body(cache, t):
        logits, cache = step(jax.lax.dynamic_slice_in_dim(dec, t, 1, axis=1), cache, t)
        return cache, logits

    _, logits = jax.lax.scan(body, cache, jnp.arange(dec.shape[1]))
    return jnp.swapaxes(logits, 0, 1)


@pytest.mark.parametrize("merged, scan", [(False, False), (True, True)])
def test_cached_decoding_equals_full_forward(merged, scan):
    model, params = _tiny(merged, scan)
    full = _full_logits(model, params, ENC, DEC)
    cached = _cached_logits(model, params, ENC, DEC)
    diff = float(jnp.abs(full - cached).max())
    print(f"cached vs full forward (merged={merged}, scan={scan}): max|diff| = {diff:.3g}")
    assert diff <= 1e-5
    assert float(jnp.abs(full).max()) > 1.0


def _teacher_forced_argmax(model, params, tokens):
    """Argmax of the full forward over [bos, tokens[:-1]] (what greedy must have produced)."""
    dec = jnp.concatenate([jnp.full((tokens.shape[0], 1), decoding.BOS_ID), tokens[:, :-1]], axis=1)
    return np.asarray(jnp.argmax(_full_logits(model, params, ENC, dec), axis=-1))


def _assert_greedy_consistent(model, params, tokens):
    tokens = np.asarray(tokens)
    ref = _teacher_forced_argmax(model, params, jnp.asarray(tokens))
    for row, ref_row in zip(tokens, ref):
        stop = list(row).index(decoding.EOS_ID) + 1 if decoding.EOS_ID in row else len(row)
        np.testing.assert_array_equal(row[:stop], ref_row[:stop])
        assert not row[stop:].any()  # pad after eos


def test_merged_attention_greedy_is_the_argmax_of_the_full_forward():
    # (Greedy with cross-attention is checked against transformers below.)
    model, params = _tiny(merged=True)
    tokens = decoding.generate(model, params, ENC, max_decode_length=DEC.shape[1])
    assert tokens.shape == DEC.shape and tokens.dtype == jnp.int32
    assert len(set(np.asarray(tokens).ravel().tolist())) > 3  # not a degenerate repetition
    _assert_greedy_consistent(model, params, tokens)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_generate_scanned_stacked_cache_equals_per_layer_cache(method):
    # Unscanned decoders carry one cache per layer through the loop, scanned ones the stacked cache.
    per_layer = decoding.generate(*_tiny(), ENC, max_decode_length=DEC.shape[1], method=method, beam_size=3)
    stacked = decoding.generate(*_tiny(scan=True), ENC, max_decode_length=DEC.shape[1], method=method, beam_size=3)
    np.testing.assert_array_equal(per_layer, stacked)
    cache = {"k": jnp.arange(24.0).reshape(2, 3, 4)}
    layers = decoding.per_layer_cache(cache)
    assert len(layers) == 2 and np.array_equal(layers[1]["k"], cache["k"][1])


def test_beam_one_and_top_k_one_sampling_equal_greedy():
    model, params = _tiny()
    length = DEC.shape[1]
    greedy = decoding.generate(model, params, ENC, max_decode_length=length)
    beam = decoding.generate(model, params, ENC, max_decode_length=length, method="beam", beam_size=1)
    sample = decoding.generate(
        model, params, ENC, max_decode_length=length, method="sample", top_k=1, temperature=0.7, rng=jax.random.PRNGKey(3)
    )
    np.testing.assert_array_equal(beam, greedy)
    np.testing.assert_array_equal(sample, greedy)


def test_beam_scores_match_the_full_forward_of_their_sequences():
    # Checks the beam bookkeeping (cache reordering included) on the real model.
    model, params = _tiny()
    length, alpha, beams = DEC.shape[1], 0.6, 3
    segments = (ENC != 0).astype(jnp.int32)

    @jax.jit
    def search(params):
        encoded = model.apply({"params": params}, ENC, segments, method=EncoderDecoder.encode)
        cache = decoding.init_cache(model, params, 2, length, encoded, segments)
        step = decoding.decoder_tokens_to_logits(
            model, params, jnp.repeat(encoded, beams, axis=0), jnp.repeat(segments, beams, axis=0)
        )
        return decoding.beam_search(
            step, cache, batch_size=2, beam_size=beams, max_decode_length=length, alpha=alpha, cache_batch_axis=1
        )

    seqs, scores = search(params)
    for k in range(beams):
        tokens = np.asarray(seqs[:, k])
        dec = jnp.concatenate([jnp.full((2, 1), decoding.BOS_ID), jnp.asarray(tokens)[:, :-1]], axis=1)
        logp = np.asarray(jax.nn.log_softmax(_full_logits(model, params, ENC, dec), axis=-1))
        for b, row in enumerate(tokens):
            n = list(row).index(decoding.EOS_ID) + 1 if decoding.EOS_ID in row else length
            expected = sum(logp[b, t, row[t]] for t in range(n)) / ((5 + n) / 6) ** alpha
            assert float(scores[b, k]) == pytest.approx(expected, abs=1e-4)


# --- Model-agnostic checks on a synthetic language model whose logits depend on the whole prefix.

VOCAB = 4  # 0 pad (never produced), 1 eos, 2 and 3 ordinary tokens
TABLE = 1.5 * np.random.default_rng(4).standard_normal((4099, VOCAB)).astype(np.float32)
TABLE[:, 0] = -1e9


def _prefix_lm(tokens, cache, index):
    """Logits from a table indexed by a hash of the prefix; the cache carries the hash per row."""
    del index
    h = (cache["h"] * 7 + tokens[:, 0] + 1) % TABLE.shape[0]
    return jnp.asarray(TABLE)[h], {"h": h}


def _prefix_logprobs(h, prefix):
    for t in prefix:
        h = (h * 7 + t + 1) % TABLE.shape[0]
    logits = TABLE[h]
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def _brute_force_best(h0, length, alpha):
    """The best-scoring sequence over every eos-terminated or full-length sequence."""
    best = (-np.inf, None)
    for n in range(1, length + 1):
        for body in itertools.product([2, 3], repeat=n - 1):
            endings = [(decoding.EOS_ID,)] + ([(2,), (3,)] if n == length else [])
            for end in endings:
                seq = (decoding.BOS_ID,) + body + end
                logp = sum(_prefix_logprobs(h0, seq[: t + 1])[seq[t + 1]] for t in range(n))
                score = logp / ((5 + n) / 6) ** alpha
                if score > best[0]:
                    best = (score, seq[1:])
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_finds_the_brute_force_optimum(alpha):
    length, h0 = 4, np.array([11, 2024])
    cache = {"h": jnp.asarray(h0, jnp.int32)}
    # 8 beams keep every live prefix of {2, 3}^3: the search is exhaustive.
    seqs, scores = jax.jit(
        functools.partial(decoding.beam_search, _prefix_lm, batch_size=2, beam_size=8, max_decode_length=length, alpha=alpha)
    )(cache)
    assert seqs.shape == (2, 8, length)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)  # best first
    for b in range(2):
        best_score, best_seq = _brute_force_best(int(h0[b]), length, alpha)
        expected = list(best_seq) + [0] * (length - len(best_seq))
        np.testing.assert_array_equal(seqs[b, 0], expected)
        assert float(scores[b, 0]) == pytest.approx(best_score, abs=1e-4)


def test_small_beam_beats_greedy_when_greedy_is_myopic():
    # Step 1: token 2 (p=.6) or 3 (p=.4). After 2 the continuation is flat; after 3 eos is near certain.
    def lm(tokens, cache, index):
        del cache
        t = tokens[:, 0]
        first = jnp.log(jnp.array([1e-9, 1e-9, 0.6, 0.4]))
        after_2 = jnp.log(jnp.array([1e-9, 0.34, 0.33, 0.33]))
        after_3 = jnp.log(jnp.array([1e-9, 0.98, 0.01, 0.01]))
        logits = jnp.where((index == 0), first[None], jnp.where((t == 3)[:, None], after_3, after_2))
        return logits, {}

    greedy = decoding.greedy(lm, {}, batch_size=1, max_decode_length=3)
    seqs, scores = decoding.beam_search(lm, {}, batch_size=1, beam_size=2, max_decode_length=3, alpha=0.0)
    np.testing.assert_array_equal(greedy, [[2, 1, 0]])  # log(.6 * .34) = -1.59
    np.testing.assert_array_equal(seqs[0, 0], [3, 1, 0])  # log(.4 * .98) = -0.94
    assert float(scores[0, 0]) == pytest.approx(np.log(0.4 * 0.98), abs=1e-5)


def test_eos_stops_rows_independently_and_pads_after():
    # Row r emits eos at step r + 1 (then keeps proposing token 3, which must not appear).
    def lm(tokens, cache, index):
        rows = jnp.arange(tokens.shape[0]) // (tokens.shape[0] // 3)  # beam search flattens the beams
        eos_now = index == rows + 1
        logits = jnp.where(eos_now[:, None], jnp.array([0.0, 9.0, 0.0, 0.0]), jnp.array([0.0, 0.0, 0.0, 9.0]))
        return logits, {"calls": cache["calls"] + 1}

    out = decoding.greedy(lm, {"calls": jnp.zeros((3,), jnp.int32)}, batch_size=3, max_decode_length=6)
    np.testing.assert_array_equal(out, [[3, 1, 0, 0, 0, 0], [3, 3, 1, 0, 0, 0], [3, 3, 3, 1, 0, 0]])
    sampled = decoding.temperature_sample(
        lm, {"calls": jnp.zeros((3,), jnp.int32)}, jax.random.PRNGKey(0), batch_size=3, max_decode_length=6,
        temperature=1e-3,
    )
    np.testing.assert_array_equal(sampled, out)
    seqs, _ = decoding.beam_search(
        lm, {"calls": jnp.zeros((3,), jnp.int32)}, batch_size=3, beam_size=2, max_decode_length=6, alpha=0.0
    )
    np.testing.assert_array_equal(seqs[:, 0], out)


def test_the_loop_stops_once_every_row_has_finished():
    calls = []

    def lm(tokens, cache, index):
        jax.debug.callback(lambda i: calls.append(int(i)), index)
        return jnp.array([[0.0, 9.0, 0.0, 0.0]] * tokens.shape[0]), cache

    decoding.greedy(lm, {}, batch_size=2, max_decode_length=50).block_until_ready()
    assert calls == [0]


def test_sampling_follows_the_filtered_distribution():
    logits = jnp.log(jnp.array([[0.0001, 0.1, 0.2, 0.3, 0.3999]]))
    filtered = decoding.filter_logits(logits, top_k=3)
    assert np.asarray(filtered[0, :2] <= decoding.NEG_INF).all() and np.isfinite(filtered[0, 2:]).all()
    nucleus = decoding.filter_logits(logits, top_p=0.6)  # 0.3999 + 0.3 >= 0.6: two tokens kept
    assert (np.asarray(nucleus[0]) > decoding.NEG_INF).tolist() == [False, False, False, True, True]

    def lm(tokens, cache, index):
        return jnp.broadcast_to(logits, (tokens.shape[0], 5)), cache

    n = 4000
    draws = decoding.temperature_sample(lm, {}, jax.random.PRNGKey(1), batch_size=n, max_decode_length=1)
    freq = np.bincount(np.asarray(draws[:, 0]), minlength=5) / n
    np.testing.assert_allclose(freq, [0.0, 0.1, 0.2, 0.3, 0.4], atol=0.03)
    draws = decoding.temperature_sample(lm, {}, jax.random.PRNGKey(2), batch_size=n, max_decode_length=1, top_p=0.6)
    freq = np.bincount(np.asarray(draws[:, 0]), minlength=5) / n
    np.testing.assert_allclose(freq, [0.0, 0.0, 0.0, 0.3 / 0.6999, 0.3999 / 0.6999], atol=0.03)


# --- Parity with transformers' greedy generate on the same (imported) weights.


def test_greedy_equals_transformers_generate(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration, T5GemmaModuleConfig

    from adaptation.checkpoints.hf_t5gemma import import_t5gemma

    def module(hidden, inter, layers):
        return T5GemmaModuleConfig(
            vocab_size=96, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        )

    torch.manual_seed(0)
    enc_cfg, dec_cfg = module(48, 64, 3), module(32, 40, 2)  # unbalanced: cross-attention K/V read width 48
    hf = T5GemmaForConditionalGeneration(
        T5GemmaConfig(encoder=enc_cfg, decoder=dec_cfg, vocab_size=96, attn_implementation="eager")
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
            if "embed_tokens" in name:  # small tables: a tied head would otherwise echo the input token
                p.mul_(0.05 / 0.3)
    hf.save_pretrained(tmp_path / "hf")
    config, params = import_t5gemma(tmp_path / "hf")
    length = 12
    enc = np.asarray(ENC)
    with torch.no_grad():
        ids = torch.tensor(enc, dtype=torch.long)
        ref = hf.generate(
            input_ids=ids, attention_mask=(ids != 0).long(), do_sample=False, num_beams=1, max_new_tokens=length,
            min_new_tokens=0, decoder_start_token_id=decoding.BOS_ID, eos_token_id=decoding.EOS_ID,
            pad_token_id=decoding.PAD_ID,
        ).numpy()
    assert (ref[:, 0] == decoding.BOS_ID).all()
    ref = ref[:, 1:]
    ours = np.asarray(decoding.generate(EncoderDecoder(config), params, ENC, max_decode_length=length))
    print("transformers greedy:", ref.tolist(), "ours:", ours.tolist())
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert not ours[:, ref.shape[1] :].any()
    assert len(set(ref.ravel().tolist())) > 5
    # Row 0 stops at eos after 7 tokens, row 1 runs to the maximum length: rows stop independently.
    assert (ref == decoding.EOS_ID).any(axis=1).tolist() == [True, False]

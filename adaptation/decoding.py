"""Decoding with a KV cache: greedy, temperature / top-k / top-p sampling, beam search.

Two layers, in the t5x / Flax style:

1. Model-agnostic loops. Each takes a `tokens_to_logits(tokens, cache, index) -> (logits, new_cache)`
   callable (tokens [B, 1] at position `index`, logits [B, V] or [B, 1, V]) and an explicit cache
   (any pytree), and runs a `lax.while_loop` with static shapes. Every sequence starts from `bos_id`;
   a row stops at its first `eos_id` (kept in the output) and is padded with `pad_id` after it; the
   loop ends when all rows have stopped or after `max_decode_length` tokens. Outputs exclude bos:
   [B, max_decode_length].
2. An encoder-decoder front-end: `init_cache` (encoder keys/values of the cross- or merged attention
   computed once and cached, zeroed self-attention keys/values) and `generate` (encode once, decode
   with the cache), jit-compiled per (config, shapes, method).

Beam search follows Flax `examples/wmt/decode.py` / t5x: scores are sums of log-probabilities
divided by the length penalty `((5 + length) / 6) ** alpha`, where length counts the generated tokens
(eos included); a beam finishes at eos or at `max_decode_length`; the search stops early once no live
beam can beat the worst of the `beam_size` finished ones.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from adaptation.models import masks
from adaptation.models.config import EncoderDecoderConfig, TransformerConfig
from adaptation.models.transformer import EncoderDecoder

Array = jnp.ndarray
Cache = Any
TokensToLogits = Callable[[Array, Cache, Array], tuple[Array, Cache]]

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
NEG_INF = -1.0e7  # finite "minus infinity" for log-probabilities and scores (no NaN from inf - inf)

METHODS = ("greedy", "sample", "beam")


# --------------------------------------------------------------------------------------------------
# Model-agnostic loops.


def greedy(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    *,
    batch_size: int,
    max_decode_length: int,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
) -> Array:
    """Greedy decoding: the arg-max token at every step. Returns [B, max_decode_length] int32."""

    def choose(logits, step):
        del step
        return jnp.argmax(logits, axis=-1)

    return _decode_loop(tokens_to_logits, cache, choose, batch_size, max_decode_length, bos_id, eos_id, pad_id)


def temperature_sample(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    rng: Array,
    *,
    batch_size: int,
    max_decode_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
) -> Array:
    """Ancestral sampling from `softmax(logits / temperature)` restricted to the top-k tokens
    (`top_k > 0`) and to the smallest set of most likely tokens with probability >= `top_p`
    (`top_p < 1`). `temperature == 0` is greedy. Returns [B, max_decode_length] int32.
    """
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}.")

    def choose(logits, step):
        if temperature == 0:
            return jnp.argmax(logits, axis=-1)
        logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1)

    return _decode_loop(tokens_to_logits, cache, choose, batch_size, max_decode_length, bos_id, eos_id, pad_id)


def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Sets logits outside the top-k and outside the top-p nucleus to NEG_INF. [B, V] -> [B, V]."""
    logits = logits.astype(jnp.float32)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # A token stays when the probability mass before it is < top_p (the first always stays).
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, NEG_INF, logits)
    return logits


def length_penalty(length: Array, alpha: float) -> Array:
    """Flax / t5x brevity penalty `((5 + length) / 6) ** alpha`."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    *,
    batch_size: int,
    beam_size: int,
    max_decode_length: int,
    alpha: float = 0.6,
    cache_batch_axis: int = 0,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
) -> tuple[Array, Array]:
    """Beam search with the Flax / t5x length penalty.

    Args:
      tokens_to_logits: called on the flattened beams, [B * beam_size, 1] tokens.
      cache: the cache for batch B; every leaf has the batch on `cache_batch_axis` (the model cache
        of `init_cache` has it on axis 1, after the layer axis). It is repeated per beam here.
      alpha: length-penalty exponent (0: plain sum of log-probabilities).

    Returns:
      (sequences [B, beam_size, max_decode_length] int32, scores [B, beam_size] float32), best first.
      A sequence ends at eos (then pad) or at the maximum length.
    """
    b, k, length = batch_size, beam_size, max_decode_length
    flat = b * k
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=cache_batch_axis), cache)
    seqs = jnp.full((b, k, length + 1), pad_id, jnp.int32).at[:, :, 0].set(bos_id)
    state = dict(
        step=jnp.int32(0),
        live_seqs=seqs,
        # Only the first beam is alive at the start, so that the first step gives k distinct beams.
        live_logprobs=jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1)),
        finished_seqs=seqs,
        finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
        finished_flags=jnp.zeros((b, k), bool),
        cache=cache,
    )
    max_penalty = length_penalty(length, alpha)

    def cond(s):
        # Early stop: the best live beam, even at its best possible score, cannot enter the finished set.
        best_live = s["live_logprobs"][:, 0] / max_penalty
        worst_finished = jnp.min(jnp.where(s["finished_flags"], s["finished_scores"], NEG_INF), axis=1)
        done = jnp.all(worst_finished > best_live) if alpha >= 0 else jnp.asarray(False)
        return (s["step"] < length) & ~done

    def body(s):
        i = s["step"]
        tokens = jax.lax.dynamic_slice_in_dim(s["live_seqs"], i, 1, axis=2).reshape(flat, 1)
        logits, new_cache = tokens_to_logits(tokens, s["cache"], i)
        logprobs = jax.nn.log_softmax(_last_logits(logits).astype(jnp.float32), axis=-1)
        vocab = logprobs.shape[-1]
        candidates = s["live_logprobs"][:, :, None] + logprobs.reshape(b, k, vocab)
        # 2k candidates: at most k end with eos, so at least k stay alive.
        top_logprobs, top_index = jax.lax.top_k(candidates.reshape(b, k * vocab), 2 * k)
        origin, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        top_seqs = jnp.take_along_axis(s["live_seqs"], origin[:, :, None], axis=1)
        top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, token[:, :, None], i + 1, axis=2)
        valid = top_logprobs > NEG_INF / 2
        finishing = (token == eos_id) | (i + 1 == length)

        # Live beams: the k best candidates that did not finish.
        alive_logprobs = jnp.where(finishing | ~valid, NEG_INF, top_logprobs)
        live_logprobs, live_pick = jax.lax.top_k(alive_logprobs, k)
        live_seqs = jnp.take_along_axis(top_seqs, live_pick[:, :, None], axis=1)
        live_origin = jnp.take_along_axis(origin, live_pick, axis=1)
        rows = (jnp.arange(b)[:, None] * k + live_origin).reshape(flat)
        new_cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=cache_batch_axis), new_cache)

        # Finished beams: the k best of the old finished ones and the candidates that finished now.
        new_flags = finishing & valid
        new_scores = jnp.where(new_flags, top_logprobs / length_penalty(i + 1, alpha), NEG_INF)
        all_scores = jnp.concatenate([s["finished_scores"], new_scores], axis=1)
        all_flags = jnp.concatenate([s["finished_flags"], new_flags], axis=1)
        all_seqs = jnp.concatenate([s["finished_seqs"], top_seqs], axis=1)
        finished_scores, pick = jax.lax.top_k(jnp.where(all_flags, all_scores, 2 * NEG_INF), k)
        return dict(
            step=i + 1,
            live_seqs=live_seqs,
            live_logprobs=live_logprobs,
            finished_seqs=jnp.take_along_axis(all_seqs, pick[:, :, None], axis=1),
            finished_scores=finished_scores,
            finished_flags=jnp.take_along_axis(all_flags, pick, axis=1),
            cache=new_cache,
        )

    final = jax.lax.while_loop(cond, body, state)
    scores = jnp.where(final["finished_flags"], final["finished_scores"], NEG_INF)
    return final["finished_seqs"][:, :, 1:], scores


def _decode_loop(tokens_to_logits, cache, choose, batch_size, max_decode_length, bos_id, eos_id, pad_id) -> Array:
    """Shared loop of greedy and sampling: `choose(logits [B, V], step) -> [B]` picks the next tokens."""
    seqs = jnp.full((batch_size, max_decode_length + 1), pad_id, jnp.int32).at[:, 0].set(bos_id)
    state = (jnp.int32(0), seqs, jnp.zeros((batch_size,), bool), cache)

    def cond(state):
        step, _, finished, _ = state
        return (step < max_decode_length) & ~jnp.all(finished)

    def body(state):
        step, seqs, finished, cache = state
        tokens = jax.lax.dynamic_slice_in_dim(seqs, step, 1, axis=1)
        logits, cache = tokens_to_logits(tokens, cache, step)
        next_tokens = choose(_last_logits(logits).astype(jnp.float32), step).astype(jnp.int32)
        next_tokens = jnp.where(finished, pad_id, next_tokens)
        seqs = jax.lax.dynamic_update_slice_in_dim(seqs, next_tokens[:, None], step + 1, axis=1)
        return step + 1, seqs, finished | (next_tokens == eos_id), cache

    _, seqs, _, _ = jax.lax.while_loop(cond, body, state)
    return seqs[:, 1:]


def _last_logits(logits: Array) -> Array:
    """[B, V] or [B, T, V] (last position) -> [B, V]."""
    return logits[:, -1] if logits.ndim == 3 else logits


# --------------------------------------------------------------------------------------------------
# Encoder-decoder front-end.


def decoder_tokens_to_logits(
    model: EncoderDecoder, params: dict, encoded: Array, encoder_segment_ids: Array
) -> TokensToLogits:
    """`tokens_to_logits` of an encoder-decoder's cached decoder over fixed encoder outputs."""

    def tokens_to_logits(tokens, cache, index):
        logits, new_cache = model.apply(
            {"params": params},
            encoded,
            encoder_segment_ids,
            tokens,
            cache=cache,
            decode_index=index,
            method=EncoderDecoder.decode,
        )
        return logits[:, -1], new_cache

    return tokens_to_logits


def empty_cache(config: TransformerConfig, batch_size: int, max_decode_length: int) -> dict:
    """An empty self-attention cache of a decoder stack: `k`, `v` zeros [L, B, K, max_decode_length, H]
    (heads before positions, the layout the attention matmuls read without a transpose)."""
    shape = (config.num_layers, batch_size, config.num_kv_heads, max_decode_length, config.head_dim)
    return {"k": jnp.zeros(shape, config.compute_dtype), "v": jnp.zeros(shape, config.compute_dtype)}


def per_layer_cache(cache: dict) -> tuple:
    """A stacked cache ([L, ...] leaves) as a tuple of L per-layer caches (what unscanned stacks carry
    through a decoding loop)."""
    num_layers = jax.tree.leaves(cache)[0].shape[0]
    return tuple(jax.tree.map(lambda c, i=i: c[i], cache) for i in range(num_layers))


def init_cache(
    model: EncoderDecoder,
    params: dict,
    batch_size: int,
    max_decode_length: int,
    encoded: Array,
    encoder_segment_ids: Optional[Array] = None,
    *,
    bos_id: int = BOS_ID,
) -> dict:
    """The decoder cache: self-attention `k`, `v` [L, B, K, max_decode_length, H] (zeros) and the
    encoder keys/values `enc_k`, `enc_v` [L, B, K, S_enc, H] of the cross- or merged attention,
    projected once from `encoded` ([B, S_enc, E]).

    The encoder keys/values come from one decoder call on bos at position 0; that call also writes
    slot 0 of the self-attention cache, which the first decoding step rewrites with the same values.
    """
    cfg = model.config.decoder
    params = _unwrap(params)
    if encoder_segment_ids is None:
        encoder_segment_ids = jnp.ones(encoded.shape[:2], jnp.int32)
    if encoded.shape[0] != batch_size:
        raise ValueError(f"encoded has batch {encoded.shape[0]}, batch_size is {batch_size}.")
    cache = empty_cache(cfg, batch_size, max_decode_length)
    bos = jnp.full((batch_size, 1), bos_id, jnp.int32)
    _, cache = decoder_tokens_to_logits(model, params, encoded, encoder_segment_ids)(bos, cache, jnp.int32(0))
    return cache


def generate(
    model: EncoderDecoder,
    params: dict,
    encoder_input_tokens: Array,
    *,
    max_decode_length: int,
    method: str = "greedy",
    encoder_segment_ids: Optional[Array] = None,
    rng: Optional[Array] = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    beam_size: int = 4,
    alpha: float = 0.6,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
) -> Array:
    """Encodes once, then decodes from bos with the cache. Returns [B, max_decode_length] int32 ids
    (bos excluded; eos kept; pad after eos).

    Args:
      model: an `EncoderDecoder` (cross- or merged attention); params in the layout its config uses.
      encoder_input_tokens: [B, S] ids, 0-padded.
      method: "greedy", "sample" (temperature / top_k / top_p, needs `rng`) or "beam" (beam_size,
        alpha; returns the best beam).
    """
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; choose one of {METHODS}.")
    if method == "sample" and rng is None:
        raise ValueError("method='sample' needs an rng (jax.random.PRNGKey).")
    encoder_input_tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
    if encoder_segment_ids is None:
        encoder_segment_ids = masks.segment_ids_from_tokens(encoder_input_tokens)
    return _generate(
        model.config,
        _unwrap(params),
        encoder_input_tokens,
        encoder_segment_ids,
        jax.random.PRNGKey(0) if rng is None else rng,
        max_decode_length=max_decode_length,
        method=method,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        beam_size=int(beam_size),
        alpha=float(alpha),
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "config", "max_decode_length", "method", "temperature", "top_k", "top_p", "beam_size", "alpha",
        "bos_id", "eos_id", "pad_id",
    ),
)
def _generate(
    config: EncoderDecoderConfig,
    params: dict,
    encoder_input_tokens: Array,
    encoder_segment_ids: Array,
    rng: Array,
    *,
    max_decode_length: int,
    method: str,
    temperature: float,
    top_k: int,
    top_p: float,
    beam_size: int,
    alpha: float,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> Array:
    """The jit-compiled body of `generate`."""
    model = EncoderDecoder(config)
    batch = encoder_input_tokens.shape[0]
    encoded = model.apply(
        {"params": params}, encoder_input_tokens, encoder_segment_ids, method=EncoderDecoder.encode
    )
    cache = init_cache(model, params, batch, max_decode_length, encoded, encoder_segment_ids, bos_id=bos_id)
    cache_batch_axis = 1
    if not config.decoder.scan_layers:
        # One buffer per layer in the loop carry: each step updates them in place, where the stacked
        # cache is sliced per layer and restacked (two copies of the whole cache per step).
        cache = per_layer_cache(cache)
        cache_batch_axis = 0
    ids = dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    if method == "beam":
        # The decoder runs on the flattened beams: repeat the encoder outputs per beam.
        step = decoder_tokens_to_logits(
            model,
            params,
            jnp.repeat(encoded, beam_size, axis=0),
            jnp.repeat(encoder_segment_ids, beam_size, axis=0),
        )
        seqs, _ = beam_search(
            step,
            cache,
            batch_size=batch,
            beam_size=beam_size,
            max_decode_length=max_decode_length,
            alpha=alpha,
            cache_batch_axis=cache_batch_axis,
            **ids,
        )
        return seqs[:, 0]
    step = decoder_tokens_to_logits(model, params, encoded, encoder_segment_ids)
    if method == "sample":
        return temperature_sample(
            step,
            cache,
            rng,
            batch_size=batch,
            max_decode_length=max_decode_length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            **ids,
        )
    return greedy(step, cache, batch_size=batch, max_decode_length=max_decode_length, **ids)


def _unwrap(params: dict) -> dict:
    """Accepts `{"params": tree}` as well as the tree itself."""
    return params["params"] if isinstance(params, dict) and set(params) == {"params"} else params

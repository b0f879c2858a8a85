"""Span corruption (T5-style denoising) as tf.data / seqio preprocessors, written from scratch.

One example of L source tokens is corrupted as follows (all randomness is stateless, keyed by a
per-example seed, so a given seed always gives the same corruption):

1. Number of noise tokens n = stochastic_round(L * noise_density), clipped to [1, L - 1].
2. Number of spans s = `num_spans` if given, else stochastic_round(n / mean_span), clipped to
   [1, min(n, L - n + 1)]. Stochastic rounding (floor(x + u), u ~ U[0, 1)) keeps the realized
   corruption rate and mean span length unbiased even for short sequences, where deterministic
   rounding would be off by up to half a token / half a span per example.
3. The n noise tokens are cut into s non-empty spans (s - 1 cut points drawn uniformly among the
   n - 1 gaps), and the spans are placed at s distinct insertion slots drawn uniformly among the
   L - n + 1 slots of the clean tokens (before the first, between two, after the last). Every
   arrangement of s non-empty noise spans separated by non-empty clean runs is equally likely; the
   sequence may start or end with noise.
4. Inputs: the clean tokens with each noise span replaced by its sentinel. Targets: for each span,
   its sentinel followed by the span's tokens. Span k (1-based, in order) gets `sentinel_ids[k-1]`.

Sentinel ids default to the last ids of the vocabulary counting down (see `vocabularies`).
`invert_span_corruption` undoes the substitution (tests and debugging).

Randomness: a counter-based hash (`row_keys`, `stream_hash`) of the seed, the example's index in
the stream and its tokens, so the corruption is reproducible, independent of the batch size, and
differs between examples, epochs (indices keep counting) and hosts reading different shards. The
work is vectorized over padded batches (`batched_map`): tens of thousands of examples per second.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf


def max_num_spans(length: int, noise_density: float, mean_span: float, num_spans: Optional[int] = None) -> int:
    """Upper bound on the spans of one example of `length` tokens: the sentinels needed."""
    max_noise = max(1, min(length - 1, math.ceil(length * noise_density)))
    spans = num_spans if num_spans else math.ceil(max_noise / mean_span)
    return max(1, min(spans, max_noise))


_MASK32 = 0xFFFFFFFF


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """A 32-bit integer finalizer on int64 values in [0, 2^32) (products stay below 2^63)."""
    x = tf.bitwise.bitwise_and((tf.bitwise.right_shift(x, 16) ^ x) * 0x45D9F3B, _MASK32)
    x = tf.bitwise.bitwise_and((tf.bitwise.right_shift(x, 16) ^ x) * 0x45D9F3B, _MASK32)
    return tf.bitwise.right_shift(x, 16) ^ x


def _combine(h: tf.Tensor, value) -> tf.Tensor:
    """hash_combine(h, value) on int64 tensors holding 32-bit values."""
    value = tf.bitwise.bitwise_and(tf.cast(value, tf.int64), _MASK32)
    mixed = h ^ (value + 0x9E3779B9 + tf.bitwise.left_shift(h, 6) + tf.bitwise.right_shift(h, 2))
    return _mix32(tf.bitwise.bitwise_and(mixed, _MASK32))


def stream_hash(key: tf.Tensor, stream: int, size: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Counter-based random 32-bit values: [B] keys -> [B] (size None) or [B, size] int64."""
    h = _combine(key, stream)
    if size is None:
        return h
    return _combine(h[:, None], tf.range(size, dtype=tf.int64)[None, :])


def uniform(key: tf.Tensor, stream: int) -> tf.Tensor:
    """One U[0, 1) float32 per row key ([B] -> [B])."""
    return tf.cast(tf.bitwise.right_shift(stream_hash(key, stream), 8), tf.float32) / float(1 << 24)


def row_keys(tokens: tf.Tensor, index: tf.Tensor, seed: int) -> tf.Tensor:
    """Per-example keys [B] from the seed, the example's stream index and its (non-pad) tokens.

    Independent of padding and batch composition, so a given seed corrupts a given example the same
    way whatever the batch size.
    """
    positions = tf.range(tf.shape(tokens)[1], dtype=tf.int64)[None, :]
    tokens = tf.cast(tokens, tf.int64)
    contrib = _mix32(tf.bitwise.bitwise_and(tokens * 0x9E3779B + positions, _MASK32))
    content = tf.bitwise.bitwise_and(tf.reduce_sum(tf.where(tokens != 0, contrib, 0), axis=1), _MASK32)
    key = _combine(tf.fill(tf.shape(index), tf.constant(seed & _MASK32, tf.int64)), seed >> 32)
    key = _combine(_combine(key, tf.bitwise.right_shift(index, 32)), index)
    return _combine(key, content)


def _smallest(keys: tf.Tensor, valid: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """Marks the `count[b]` smallest valid entries of each row ([B, N] bool); one sort per row.

    Keys are made unique by appending the entry's index (< 2^20) below the hash bits, so exactly `count`
    entries are marked (when that many are valid).
    """
    size = tf.shape(keys)[1]
    unique = tf.bitwise.left_shift(keys, 20) + tf.range(size, dtype=tf.int64)[None, :]
    unique = tf.where(valid, unique, tf.int64.max)
    ordered = tf.sort(unique, axis=1)
    threshold = tf.gather(ordered, tf.maximum(count - 1, 0)[:, None], batch_dims=1)
    return (unique <= threshold) & (count[:, None] > 0)


def noise_spans_batch(
    keys: tf.Tensor,
    lengths: tf.Tensor,
    width: tf.Tensor,
    noise_density: tf.Tensor,
    mean_span: tf.Tensor,
    num_spans: tf.Tensor,
    prefix: tf.Tensor,
    max_spans: int,
) -> dict:
    """Noise spans of B rows (see the module docstring), vectorized.

    Args:
      keys: [B] int64 row keys (`row_keys`). lengths: [B] source lengths (>= 2). width: padded width T.
      noise_density, mean_span: [B] float32. num_spans: [B] int32, 0 = derive from mean_span.
      prefix: [B] bool, prefix-LM rows: one span, the last round(L * density) tokens, no sentinel.
      max_spans: static bound on the spans of any row (`max_num_spans`).

    Returns:
      dict of [B, T] `is_noise`, `is_start` (bool), `span_index` (int32, 0-based), and [B] `num_noise`,
      `num_spans` (int32).
    """
    lengths = tf.cast(lengths, tf.int32)
    length_f = tf.cast(lengths, tf.float32)
    stochastic = tf.cast(tf.floor(length_f * noise_density + uniform(keys, 0)), tf.int32)
    rounded = tf.cast(tf.floor(length_f * noise_density + 0.5), tf.int32)
    num_noise = tf.clip_by_value(tf.where(prefix, rounded, stochastic), 1, tf.maximum(lengths - 1, 1))
    num_clean = lengths - num_noise
    derived = tf.cast(tf.floor(tf.cast(num_noise, tf.float32) / mean_span + uniform(keys, 1)), tf.int32)
    spans = tf.where(num_spans > 0, num_spans, derived)
    spans = tf.where(prefix, 1, tf.clip_by_value(spans, 1, tf.minimum(num_noise, num_clean + 1)))
    spans = tf.minimum(spans, max_spans)

    gaps = tf.range(width, dtype=tf.int32)[None, :]  # noise token j / gap after noise token j
    # s - 1 cuts among the n - 1 gaps between noise tokens: a uniform composition into s spans.
    cut = _smallest(stream_hash(keys, 2, width), gaps < (num_noise - 1)[:, None], spans - 1)
    cut = tf.cast(cut, tf.int32)
    span_of_noise = tf.cumsum(cut, axis=1, exclusive=True)
    span_of_noise = tf.where(gaps < num_noise[:, None], span_of_noise, max_spans + 1)
    k = tf.broadcast_to(tf.range(max_spans + 1, dtype=tf.int32)[None, :], [tf.size(lengths), max_spans + 1])
    noise_before = tf.searchsorted(span_of_noise, k, side="left")  # [B, S + 1] noise tokens in spans < k
    # s distinct insertion slots among the L - n + 1 slots of the clean tokens.
    slots = tf.range(width + 1, dtype=tf.int32)[None, :]
    chosen = _smallest(stream_hash(keys, 3, width + 1), slots <= num_clean[:, None], spans)
    chosen = tf.where(prefix[:, None], slots == num_clean[:, None], chosen)
    slot_of_span = tf.searchsorted(tf.cumsum(tf.cast(chosen, tf.int32), axis=1), k[:, :max_spans] + 1, side="left")
    starts = slot_of_span + noise_before[:, :max_spans]
    ends = slot_of_span + noise_before[:, 1:]
    valid = k[:, :max_spans] < spans[:, None]
    # Difference arrays over [B, T + 1] via one segment sum.
    rows = tf.range(tf.size(lengths), dtype=tf.int32)[:, None] * (width + 1)
    ones = tf.cast(valid, tf.int32)
    ids = tf.concat([rows + tf.minimum(starts, width), rows + tf.minimum(ends, width)], 1)
    total = tf.size(lengths) * (width + 1)
    start_count = tf.reshape(tf.math.unsorted_segment_sum(tf.concat([ones, 0 * ones], 1), ids, total), [-1, width + 1])
    delta = tf.reshape(tf.math.unsorted_segment_sum(tf.concat([ones, -ones], 1), ids, total), [-1, width + 1])
    return {
        "is_noise": tf.cumsum(delta, axis=1)[:, :width] > 0,
        "is_start": start_count[:, :width] > 0,
        "span_index": tf.maximum(tf.cumsum(start_count, axis=1)[:, :width] - 1, 0),
        "num_noise": num_noise,
        "num_spans": spans,
    }


def corrupt_batch(
    tokens: tf.Tensor,
    lengths: tf.Tensor,
    keys: tf.Tensor,
    *,
    noise_density: tf.Tensor,
    mean_span: tf.Tensor,
    num_spans: tf.Tensor,
    prefix: tf.Tensor,
    mode_token: tf.Tensor,
    sentinel_ids: Sequence[int],
    max_spans: int,
    eos_id: Optional[int],
) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """Corrupts B right-padded rows with per-row denoiser parameters; (inputs, targets) ragged [B, None].

    Inputs: [mode token if >= 0] + clean tokens with sentinels for spans (no sentinel for prefix rows)
    + [eos]. Targets: per span, its sentinel (not for prefix rows) and its tokens, + [eos].
    """
    if len(sentinel_ids) < max_spans:
        raise ValueError(
            f"up to {max_spans} spans per example but only {len(sentinel_ids)} sentinel ids; "
            "configure more sentinels (or shorter sequences / longer spans)"
        )
    width = tf.shape(tokens)[1]
    spans = noise_spans_batch(keys, lengths, width, noise_density, mean_span, num_spans, prefix, max_spans)
    table = tf.constant(list(sentinel_ids)[:max_spans], tokens.dtype)
    sentinel = tf.gather(table, spans["span_index"])
    in_row = tf.range(width)[None, :] < tf.cast(lengths, tf.int32)[:, None]
    emit_sentinel = spans["is_start"] & ~prefix[:, None] & in_row
    pairs = tf.reshape(tf.stack([sentinel, tokens], 2), [-1, 2 * width])
    keep_in = tf.reshape(tf.stack([emit_sentinel, ~spans["is_noise"] & in_row], 2), [-1, 2 * width])
    keep_tg = tf.reshape(tf.stack([emit_sentinel, spans["is_noise"] & in_row], 2), [-1, 2 * width])
    inputs = tf.ragged.boolean_mask(pairs, keep_in)
    targets = tf.ragged.boolean_mask(pairs, keep_tg)
    mode = tf.cast(mode_token, tokens.dtype)[:, None]
    inputs = tf.concat([tf.ragged.boolean_mask(mode, mode >= 0), inputs], 1)
    if eos_id is not None:
        eos = tf.fill([tf.size(lengths), 1], tf.constant(eos_id, tokens.dtype))
        inputs = tf.concat([inputs, eos], 1)
        targets = tf.concat([targets, eos], 1)
    return inputs, targets


def batched_map(
    dataset: tf.data.Dataset,
    fn,
    *,
    seed: int,
    feature: str = "targets",
    batch_size: int = 128,
) -> tf.data.Dataset:
    """Runs `fn(tokens [B, T], lengths [B], keys [B]) -> dict of ragged [B, None]` over padded batches.

    Examples are keyed by (seed, stream index, tokens) before batching, so results do not depend on
    `batch_size`. Examples must hold >= 2 tokens in `feature`.
    """

    def flat(index, ex):
        return {"tokens": ex[feature], "index": index, "length": tf.size(ex[feature])}

    ds = dataset.enumerate().map(flat, num_parallel_calls=tf.data.AUTOTUNE).padded_batch(batch_size)

    def run(batch):
        keys = row_keys(batch["tokens"], batch["index"], seed)
        return fn(batch["tokens"], batch["length"], keys)

    return ds.map(run, num_parallel_calls=tf.data.AUTOTUNE).unbatch().map(_dense)


def _dense(ex: dict) -> dict:
    """Unbatched ragged rows are rank-1 ragged specs; make them plain tensors for seqio."""
    return {k: v if isinstance(v, tf.Tensor) else v.flat_values for k, v in ex.items()}


def span_corruption(
    dataset: tf.data.Dataset,
    *,
    seed: int,
    sentinel_ids: Sequence[int],
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    num_spans: Optional[int] = None,
    max_length: int,
    eos_id: Optional[int] = 1,
    feature: str = "targets",
    batch_size: int = 128,
) -> tf.data.Dataset:
    """Maps `{feature: tokens}` (2..max_length tokens) to span-corrupted `{"inputs", "targets"}`.

    `eos_id` (None: none) is appended to inputs and targets, as T5 does.
    """
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span <= 0:
        raise ValueError(f"mean_span must be > 0, got {mean_span}")
    max_spans = max_num_spans(max_length, noise_density, mean_span, num_spans)

    def fn(tokens, lengths, keys):
        rows = tf.size(lengths)
        inputs, targets = corrupt_batch(
            tokens,
            lengths,
            keys,
            noise_density=tf.fill([rows], float(noise_density)),
            mean_span=tf.fill([rows], float(mean_span)),
            num_spans=tf.fill([rows], int(num_spans or 0)),
            prefix=tf.zeros([rows], tf.bool),
            mode_token=tf.fill([rows], -1),
            sentinel_ids=sentinel_ids,
            max_spans=max_spans,
            eos_id=eos_id,
        )
        return {"inputs": inputs, "targets": targets}

    return batched_map(dataset, fn, seed=seed, feature=feature, batch_size=batch_size)


def invert_span_corruption(inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int]) -> list[int]:
    """Puts each sentinel's span back into the inputs; strip eos / mode tokens first.

    Raises ValueError when a sentinel of the inputs has no span in the targets or the targets do not
    start with a sentinel.
    """
    sentinels = set(int(i) for i in sentinel_ids)
    targets = [int(t) for t in np.asarray(targets).ravel()]
    spans: dict[int, list[int]] = {}
    current: Optional[int] = None
    for token in targets:
        if token in sentinels:
            current = token
            spans[current] = []
        elif current is None:
            raise ValueError(f"targets must start with a sentinel, found {token}")
        else:
            spans[current].append(token)
    source: list[int] = []
    for token in (int(t) for t in np.asarray(inputs).ravel()):
        if token in sentinels:
            if token not in spans:
                raise ValueError(f"sentinel {token} of the inputs has no span in the targets")
            source.extend(spans.pop(token))
        else:
            source.append(token)
    if spans:
        raise ValueError(f"spans of sentinels {sorted(spans)} are not referenced by the inputs")
    return source

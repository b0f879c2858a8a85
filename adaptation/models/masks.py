"""Small, standalone builders for segment ids, positions and attention masks.

Conventions: token id 0 is padding; segment id 0 marks padding, equal non-zero segment ids mark
tokens of the same (packed) example. Masks are boolean, True where attention is allowed, shaped
[batch, query_length, key_length].

Sliding windows follow the Hugging Face oracle: in a causal stack key j is visible from query i
when 0 <= i - j < window; in a bidirectional stack when |i - j| <= window (T5Gemma, "radius"), or,
with `bidirectional_window="width"` (T5Gemma 2), when -(window // 2) <= i - j <= (window - 1) // 2
(window keys in all).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

PAD_ID = 0


def segment_ids_from_tokens(tokens: jnp.ndarray) -> jnp.ndarray:
    """Segment ids of an unpacked batch: 1 for real tokens, 0 for padding. [B, T] int32."""
    return (tokens != PAD_ID).astype(jnp.int32)


def positions_from_segments(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """Position of every token inside its segment (0-based); padding gets position 0.

    Works for packed rows (a new segment id restarts the count) and for left or right padding.
    """
    segment_ids = segment_ids.astype(jnp.int32)
    length = segment_ids.shape[-1]
    index = jnp.arange(length, dtype=jnp.int32)
    prev = jnp.concatenate([jnp.zeros_like(segment_ids[..., :1]), segment_ids[..., :-1]], axis=-1)
    starts = (segment_ids != prev) & (segment_ids != 0)
    # Index of the most recent segment start at or before each position.
    start_index = jnp.where(starts, index, -1)
    start_index = jax.lax.cummax(start_index, axis=start_index.ndim - 1)
    positions = jnp.where(segment_ids != 0, index - start_index, 0)
    return positions.astype(jnp.int32)


def attention_mask(
    query_positions: jnp.ndarray,
    query_segments: jnp.ndarray,
    key_positions: jnp.ndarray,
    key_segments: jnp.ndarray,
    *,
    causal: bool,
    window: Optional[int] = None,
    bidirectional_window: str = "radius",
) -> jnp.ndarray:
    """Self-attention mask from positions and segment ids.

    Args:
      query_positions, query_segments: [B, T].
      key_positions, key_segments: [B, S].
      causal: keys after the query are hidden.
      window: sliding window (None: global attention).
      bidirectional_window: "radius" or "width", how a bidirectional mask reads `window`.

    Returns:
      [B, T, S] bool.
    """
    qs = query_segments[:, :, None]
    ks = key_segments[:, None, :]
    mask = (qs == ks) & (ks != 0)
    distance = query_positions[:, :, None] - key_positions[:, None, :]
    if causal:
        mask &= distance >= 0
        if window is not None:
            mask &= distance < window
    elif window is not None and bidirectional_window == "width":
        mask &= (distance >= -(window // 2)) & (distance <= (window - 1) // 2)
    elif window is not None:
        mask &= jnp.abs(distance) <= window
    return mask


def cross_attention_mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray) -> jnp.ndarray:
    """Decoder-to-encoder mask: a decoder token sees the non-pad encoder tokens of its segment.

    [B, T] x [B, S] -> [B, T, S] bool. Unpacked batches have segment 1 everywhere, so every real
    decoder token sees every real encoder token.
    """
    qs = query_segments[:, :, None]
    ks = key_segments[:, None, :]
    return (qs == ks) & (ks != 0)

"""Ranking losses for passage reranking (RankT5, arXiv 2210.10634), over lists of candidate scores.

Every loss takes `scores` [B, L] (one list of L candidates per query), `labels` [B, L] (relevance:
1/0, or grades) and an optional `mask` [B, L] (False for padding candidates), and returns a scalar
float32 loss averaged over the lists (lists without a usable target contribute nothing):

- "pointwise": sigmoid cross-entropy of each candidate against `labels > 0`, mean over candidates.
- "pairwise": logistic loss `log(1 + exp(-(s_i - s_j)))` over every pair with `label_i > label_j`,
  mean over the pairs of a list.
- "listwise": softmax cross-entropy over the list against the labels normalized to sum to 1
  (with one positive: `-log softmax(s)_pos`).
- "poly1": listwise softmax cross-entropy plus `epsilon * (1 - p_t)`, p_t the softmax mass on the
  target distribution (Poly-1, Leng et al. 2022; RankT5's best listwise variant).

With one positive and one negative, "listwise" equals "pairwise" exactly. MS MARCO triples give
lists of 1 positive + N negatives: `positive_first_labels(B, L)`.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def positive_first_labels(batch: int, list_size: int) -> Array:
    """[B, L] labels for lists that hold the positive first, then L-1 negatives."""
    return jnp.zeros((batch, list_size), jnp.float32).at[:, 0].set(1.0)


def _prepare(scores: Array, labels: Array, mask: Optional[Array]) -> tuple[Array, Array, Array]:
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be [batch, list]; got {scores.shape} and {labels.shape}.")
    mask = jnp.ones(scores.shape, bool) if mask is None else mask.astype(bool)
    return scores.astype(jnp.float32), labels.astype(jnp.float32), mask


def _mean_over_lists(per_list: Array, valid: Array) -> Array:
    valid = valid.astype(jnp.float32)
    return jnp.sum(per_list * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def pointwise_sigmoid_ce(scores: Array, labels: Array, mask: Optional[Array] = None) -> Array:
    """Sigmoid cross-entropy of every candidate against `labels > 0`."""
    s, y, m = _prepare(scores, labels, mask)
    target = (y > 0).astype(jnp.float32)
    per_item = jnp.maximum(s, 0) - s * target + jnp.log1p(jnp.exp(-jnp.abs(s)))
    count = jnp.sum(m, axis=-1)
    per_list = jnp.sum(jnp.where(m, per_item, 0.0), axis=-1) / jnp.maximum(count, 1)
    return _mean_over_lists(per_list, count > 0)


def pairwise_logistic(scores: Array, labels: Array, mask: Optional[Array] = None) -> Array:
    """Mean logistic loss over the pairs (i, j) of a list with label_i > label_j."""
    s, y, m = _prepare(scores, labels, mask)
    pairs = (y[:, :, None] > y[:, None, :]) & m[:, :, None] & m[:, None, :]
    per_pair = jax.nn.softplus(-(s[:, :, None] - s[:, None, :]))
    count = jnp.sum(pairs, axis=(1, 2))
    per_list = jnp.sum(jnp.where(pairs, per_pair, 0.0), axis=(1, 2)) / jnp.maximum(count, 1)
    return _mean_over_lists(per_list, count > 0)


def _softmax_terms(s: Array, y: Array, m: Array) -> tuple[Array, Array, Array]:
    """(log-softmax over the unmasked candidates, normalized targets, lists with a positive)."""
    log_probs = jax.nn.log_softmax(jnp.where(m, s, -1e9), axis=-1)
    target = jnp.where(m, jnp.maximum(y, 0.0), 0.0)
    total = jnp.sum(target, axis=-1, keepdims=True)
    return log_probs, target / jnp.maximum(total, 1e-9), total[:, 0] > 0


def listwise_softmax_ce(scores: Array, labels: Array, mask: Optional[Array] = None) -> Array:
    """Softmax cross-entropy over each list against the normalized labels."""
    s, y, m = _prepare(scores, labels, mask)
    log_probs, target, valid = _softmax_terms(s, y, m)
    per_list = -jnp.sum(jnp.where(m, target * log_probs, 0.0), axis=-1)
    return _mean_over_lists(per_list, valid)


def poly1_softmax_ce(scores: Array, labels: Array, mask: Optional[Array] = None, epsilon: float = 1.0) -> Array:
    """Listwise softmax cross-entropy + epsilon * (1 - p_t) (Poly-1)."""
    s, y, m = _prepare(scores, labels, mask)
    log_probs, target, valid = _softmax_terms(s, y, m)
    ce = -jnp.sum(jnp.where(m, target * log_probs, 0.0), axis=-1)
    p_t = jnp.sum(jnp.where(m, target * jnp.exp(log_probs), 0.0), axis=-1)
    return _mean_over_lists(ce + epsilon * (1.0 - p_t), valid)


RANKING_LOSSES: dict[str, Callable[..., Array]] = {
    "pointwise": pointwise_sigmoid_ce,
    "pairwise": pairwise_logistic,
    "listwise": listwise_softmax_ce,
    "poly1": poly1_softmax_ce,
}


def ranking_loss(name: str, scores: Array, labels: Array, mask: Optional[Array] = None, **kwargs) -> Array:
    """The ranking loss called `name` (one of `RANKING_LOSSES`)."""
    if name not in RANKING_LOSSES:
        raise ValueError(f"unknown ranking loss {name!r}; choose one of {sorted(RANKING_LOSSES)}.")
    return RANKING_LOSSES[name](scores, labels, mask, **kwargs)

"""Loss functions for encoder classifiers in the trainer (the `LossFn` signature of `objectives.losses`).

`head_loss_fn` dispatches on the model's head (`model.head.output`), so one loss serves every
`ClassifierConfig`:

- "classification": softmax cross-entropy of `[B, C]` logits against int `label` [B]
  (+ optional label smoothing); metric `accuracy`.
- "regression": mean squared error of the `[B]` value against float `label` [B]; metric `mse`.
- "ranking": batches of lists, `encoder_input_tokens` [B, L, T] and `labels` [B, L] (grades; the
  positive first for MS MARCO triples), scored `[B, L]` and trained with a RankT5 loss
  (`ranking_loss`: "listwise" softmax CE (default), "pairwise", "pointwise", "poly1"); candidates
  whose tokens are all padding are masked. Metric `accuracy`: the fraction of lists whose best
  score is a top-graded candidate. A ranking head trained on single rows (`[B, T]` tokens with
  a 0/1 `label`) uses pointwise sigmoid cross-entropy.

Rows (or lists) whose tokens are all padding (the eval loop pads its final batch with zero rows)
have zero weight; `loss_denominator` is the number of real rows (lists), so gradient accumulation
is exact.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from adaptation.objectives.losses import Teacher
from adaptation.objectives.ranking import RANKING_LOSSES, pointwise_sigmoid_ce, ranking_loss

Array = jnp.ndarray


def head_outputs(model: Any, params: Any, batch: dict, rng: Optional[Array]) -> Array:
    """The classifier's logits [B, C] / values [B] (or [B, L] for lists); dropout on when `rng` is given."""
    rngs = {} if rng is None else {"dropout": rng}
    return model.apply({"params": params}, batch["encoder_input_tokens"], enable_dropout=rng is not None, rngs=rngs)


def _weighted_mean(values: Array, weights: Array) -> tuple[Array, Array]:
    denom = jnp.sum(weights)
    return jnp.sum(values * weights) / jnp.maximum(denom, 1e-8), denom


def head_loss_fn(
    params: Any,
    batch: dict,
    rng: Optional[Array],
    *,
    model: Any,
    teacher: Optional[Teacher] = None,
    ranking_loss_name: str = "listwise",
    label_smoothing: float = 0.0,
) -> tuple[Array, dict]:
    """The loss of an encoder classifier's head (see the module docstring). Bind the keyword options
    with `functools.partial` or gin."""
    del teacher
    head = getattr(model, "head", None)
    if head is None:
        raise ValueError(f"head_loss_fn needs an encoder classifier (a model with a head); got {type(model).__name__}. "
                         "Use cross_entropy_loss_fn for language models.")
    tokens = batch["encoder_input_tokens"]
    out = head_outputs(model, params, batch, rng).astype(jnp.float32)
    real = jnp.any(tokens != 0, axis=-1)  # [B] or [B, L]

    if head.output == "ranking" and tokens.ndim == 3:
        if ranking_loss_name not in RANKING_LOSSES:
            raise ValueError(f"unknown ranking loss {ranking_loss_name!r}; choose one of {sorted(RANKING_LOSSES)}.")
        labels = batch["labels"].astype(jnp.float32)
        loss_lists = jnp.any(real, axis=-1)
        loss = ranking_loss(ranking_loss_name, out, labels, real)
        masked = jnp.where(real, out, -jnp.inf)
        top = jnp.max(jnp.where(real, labels, -jnp.inf), axis=-1)
        picked = jnp.take_along_axis(labels, jnp.argmax(masked, axis=-1)[:, None], axis=-1)[:, 0]
        accuracy, denom = _weighted_mean((picked >= top).astype(jnp.float32), loss_lists.astype(jnp.float32))
        return loss, {"loss_denominator": denom, "accuracy": accuracy}

    if tokens.ndim != 2:
        raise ValueError(f"encoder_input_tokens must be [batch, length] for a {head.output} head; got {tokens.shape}.")
    weights = real.astype(jnp.float32)
    label = batch["label"]
    if head.output == "classification":
        num_classes = out.shape[-1]
        targets = jnp.clip(label.astype(jnp.int32), 0, num_classes - 1)
        one_hot = optax.smooth_labels(jax.nn.one_hot(targets, num_classes), label_smoothing)
        per_row = optax.softmax_cross_entropy(out, one_hot)
        loss, denom = _weighted_mean(per_row, weights)
        accuracy, _ = _weighted_mean((jnp.argmax(out, -1) == targets).astype(jnp.float32), weights)
        return loss, {"loss_denominator": denom, "accuracy": accuracy}
    if head.output == "regression":
        err = jnp.square(out - label.astype(jnp.float32))
        loss, denom = _weighted_mean(err, weights)
        return loss, {"loss_denominator": denom, "mse": loss}
    # Ranking head on single rows: pointwise sigmoid cross-entropy against label > 0.
    y = label.astype(jnp.float32)
    loss = pointwise_sigmoid_ce(out[:, None], y[:, None], real[:, None])
    accuracy, denom = _weighted_mean(((out > 0) == (y > 0)).astype(jnp.float32), weights)
    return loss, {"loss_denominator": denom, "accuracy": accuracy}

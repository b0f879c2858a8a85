"""Loss functions for the trainer.

A loss function has the signature

    loss_fn(params, batch, rng, *, model, teacher=None) -> (loss, aux_metrics)

`params` are the trained model's params, `batch` a dict of model features (see
`adaptation.data.features`), `rng` a dropout key (None: dropout off), `model` the flax module, and
`teacher` a `Teacher` (frozen model + params) when the run configures one. `loss` is a scalar
mean over loss-weighted tokens. `aux_metrics` is a flat dict of scalars; when it holds
`"loss_denominator"` (the sum of loss weights), gradient accumulation weighs micro-batches by it
so that accumulated gradients equal full-batch gradients exactly. Metrics named `*_sum` are
summed over micro-batches; the others are averaged with the same weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher for distillation: a flax module and its params (sharded on the run's mesh)."""

    model: Any
    params: Any


class LossFn(Protocol):
    """The pluggable loss signature (see the module docstring)."""

    def __call__(
        self, params: Any, batch: dict, rng: Optional[Array], *, model: Any, teacher: Optional[Teacher] = None
    ) -> tuple[Array, dict]: ...


def model_logits(model: Any, params: Any, batch: dict, rng: Optional[Array], **kwargs) -> Array:
    """Runs an encoder-decoder (batch has `encoder_input_tokens`) or a decoder-only model.

    Dropout is on when `rng` is given. `kwargs` go to the model (e.g. `return_hidden=True`).
    """
    rngs = {} if rng is None else {"dropout": rng}
    enable_dropout = rng is not None
    variables = {"params": params}
    if "encoder_input_tokens" in batch:
        return model.apply(
            variables,
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            enable_dropout=enable_dropout,
            rngs=rngs,
            **kwargs,
        )
    return model.apply(
        variables,
        batch["decoder_input_tokens"],
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        decoder_positions=batch.get("decoder_positions"),
        enable_dropout=enable_dropout,
        rngs=rngs,
        **kwargs,
    )


def _fusable_head_cap(model: Any) -> tuple[bool, Optional[float]]:
    """(whether the model can return hidden states + head table, its final-logit soft-cap)."""
    from adaptation.models.transformer import DecoderOnlyLM, EncoderDecoder

    if isinstance(model, EncoderDecoder):
        return True, model.config.decoder.final_logit_soft_cap
    if isinstance(model, DecoderOnlyLM):
        return True, model.config.final_logit_soft_cap
    return False, None


def cross_entropy_with_z_loss(
    logits: Array, targets: Array, weights: Array, z_loss: float = 0.0
) -> tuple[Array, Array, Array]:
    """Weighted token cross-entropy plus `z_loss * logsumexp(logits)^2`.

    Args:
      logits: [B, T, V] (computed in float32).
      targets: [B, T] integer ids.
      weights: [B, T] loss weights (0 on padding).
      z_loss: coefficient of the log-partition penalty (PaLM / T5X); 0 disables it.

    Returns:
      (total loss sum, z-loss sum, weight sum), all scalars; the total includes the z-loss.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = log_z - target_logit
    z_term = z_loss * jnp.square(log_z)
    return jnp.sum((nll + z_term) * weights), jnp.sum(z_term * weights), jnp.sum(weights)


def token_accuracy_sum(logits: Array, targets: Array, weights: Array) -> Array:
    """Sum of loss weights where the arg-max prediction equals the target."""
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(correct * weights.astype(jnp.float32))


def cross_entropy_loss_fn(
    params: Any,
    batch: dict,
    rng: Optional[Array],
    *,
    model: Any,
    teacher: Optional[Teacher] = None,
    z_loss: float = 1e-4,
    fused_head: bool = True,
) -> tuple[Array, dict]:
    """The default loss: cross-entropy on `decoder_target_tokens` weighted by `decoder_loss_weights`.

    Bind `z_loss` with `functools.partial`. The teacher is ignored. With `fused_head` (our LM and
    encoder-decoder models) the output head and the cross-entropy are fused and chunked
    (`objectives.fused_xent`: same values, no [B, T, V] logits in memory).
    """
    del teacher
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
        weights = (targets > 0).astype(jnp.float32)
    fusable, cap = _fusable_head_cap(model)
    if fused_head and fusable:
        from adaptation.objectives.fused_xent import fused_cross_entropy

        hidden, table = model_logits(model, params, batch, rng, return_hidden=True)
        total, z_sum, denom, correct = fused_cross_entropy(
            hidden, table, targets, weights, z_loss=z_loss, soft_cap=cap
        )
    else:
        logits = model_logits(model, params, batch, rng)
        total, z_sum, denom = cross_entropy_with_z_loss(logits, targets, weights, z_loss)
        correct = token_accuracy_sum(logits, targets, weights)
    safe = jnp.maximum(denom, 1e-8)
    aux = {
        "loss_denominator": denom,
        "z_loss": z_sum / safe,
        "accuracy": correct / safe,
        "cross_entropy": (total - z_sum) / safe,
    }
    return total / safe, aux

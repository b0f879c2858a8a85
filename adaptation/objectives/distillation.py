"""Knowledge distillation from the decoder-only teacher (PrefixLM + KD, T5Gemma).

loss = alpha * soft_CE(teacher, student) + (1 - alpha) * CE(labels, student), over the target tokens.

- soft_CE = -sum_v p_teacher(v) log p_student(v), both at `temperature`; optionally scaled by
  temperature^2 (Hinton et al.) so that gradients keep their size across temperatures.
- `top_k`: the teacher keeps its k largest logits (`lax.top_k`), renormalized over those k; the
  student's log-probabilities are still normalized over the full vocabulary.

The teacher (frozen, `stop_gradient`) runs inside the train step on the row [bos; inputs; targets]:
the non-pad encoder inputs are right-aligned in a block of `1 + L_in` slots (pads on the left, out
of the attention through segment id 0), then the L_t targets, with explicit positions 0, 1, ... from
the bos. The teacher's next-token distribution for target j is then the logits at a fixed offset,
`[L_in, L_in + L_t)`: one static slice, so the micro-batch holds one [B, L_in + L_t + 1, V] teacher
tensor and the soft CE is reduced straight from it (no gathered or one-hot vocab-sized copies).

Rows must hold one example each (PrefixLM sequences fill their halves, so they are not packed).
No TensorFlow or seqio here.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from adaptation.objectives import losses

Array = jnp.ndarray


def soft_cross_entropy(
    student_logits: Array,
    teacher_logits: Array,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
) -> tuple[Array, Array]:
    """Per-token soft cross-entropy and teacher entropy ([..., V] logits -> two [...] arrays).

    With `top_k`, the teacher distribution is its top-k logits renormalized; the entropy is that
    truncated distribution's.
    """
    dtype = jnp.promote_types(student_logits.dtype, jnp.float32)  # float32, or float64 under x64
    student = student_logits.astype(dtype) / temperature
    teacher = jax.lax.stop_gradient(teacher_logits).astype(dtype) / temperature
    student_lse = jax.nn.logsumexp(student, axis=-1)
    if top_k is None:
        teacher_lse = jax.nn.logsumexp(teacher, axis=-1)
        probs = jnp.exp(teacher - teacher_lse[..., None])
        cross = student_lse - jnp.sum(probs * student, axis=-1)
        entropy = teacher_lse - jnp.sum(probs * teacher, axis=-1)
        return cross, entropy
    values, indices = jax.lax.top_k(teacher, top_k)  # [..., k]
    log_probs = jax.nn.log_softmax(values, axis=-1)
    probs = jnp.exp(log_probs)
    picked = jnp.take_along_axis(student, indices, axis=-1)
    cross = student_lse - jnp.sum(probs * picked, axis=-1)
    entropy = -jnp.sum(probs * log_probs, axis=-1)
    return cross, entropy


def teacher_sequence(
    encoder_input_tokens: Array,
    decoder_target_tokens: Array,
    bos_id: Optional[int] = 2,
    encoder_mask: Optional[Array] = None,
) -> dict:
    """The teacher rows [bos; inputs (non-pad, right-aligned); targets] with segment ids and positions.

    Returns dict of [B, P + L_t] `tokens`, `segment_ids`, `positions` (P = L_in + 1 with a bos, L_in
    without) and `offset` = P - 1, the index whose logits predict the first target.
    """
    batch, in_len = encoder_input_tokens.shape
    mask = encoder_input_tokens != 0 if encoder_mask is None else encoder_mask.astype(bool)
    count = jnp.sum(mask, axis=1)  # [B] non-pad inputs
    # Stable sort moves the non-pad inputs to the right end, keeping their order.
    order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)
    right = jnp.take_along_axis(encoder_input_tokens, order, axis=1)
    slots = jnp.arange(in_len)[None, :]
    right = jnp.where(slots >= in_len - count[:, None], right, 0)
    if bos_id is not None:
        right = jnp.concatenate([jnp.zeros((batch, 1), right.dtype), right], axis=1)
        slots = jnp.arange(in_len + 1)[None, :]
        start = in_len - count  # index of the bos
        right = jnp.where(slots == start[:, None], bos_id, right)
    else:
        start = in_len - count
    prefix_len = right.shape[1]
    tokens = jnp.concatenate([right, decoder_target_tokens.astype(right.dtype)], axis=1)
    index = jnp.arange(tokens.shape[1])[None, :]
    real = (index >= start[:, None]) & ((index < prefix_len) | (tokens != 0))
    positions = jnp.where(real, index - start[:, None], 0)
    return {
        "tokens": tokens,
        "segment_ids": real.astype(jnp.int32),
        "positions": positions.astype(jnp.int32),
        "offset": prefix_len - 1,
        "has_context": (count > 0) | (bos_id is not None),  # [B]: the first target has a predictor
    }


def _unpack_teacher(teacher: Any) -> tuple[Any, Any]:
    if teacher is None:
        raise ValueError("the KD loss needs a teacher: configure the run's teacher checkpoint")
    if isinstance(teacher, (tuple, list)):
        return teacher[0], teacher[1]
    return teacher.model, teacher.params


def make_kd_loss_fn(
    alpha: float = 1.0,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    *,
    bos_id: Optional[int] = 2,
    scale_by_temperature_squared: bool = True,
    z_loss: float = 0.0,
) -> losses.LossFn:
    """A trainer loss `loss_fn(params, batch, rng, *, model, teacher) -> (loss, aux)` with KD.

    Args:
      alpha: weight of the soft cross-entropy against the teacher; 1 - alpha weighs the labels' CE.
      temperature: softmax temperature of both distributions in the soft term.
      top_k: keep only the teacher's top-k logits (renormalized); None = full distribution.
      bos_id: token put before the teacher's prefix (Gemma: 2); None for none.
      scale_by_temperature_squared: multiply the soft term by temperature^2.
      z_loss: log-partition penalty on the student (as in `losses.cross_entropy_with_z_loss`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    soft_scale = temperature**2 if scale_by_temperature_squared else 1.0

    def loss_fn(params, batch, rng, *, model, teacher=None):
        teacher_model, teacher_params = _unpack_teacher(teacher)
        logits = losses.model_logits(model, params, batch, rng)
        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights")
        weights = (targets > 0) if weights is None else weights
        weights = weights.astype(jnp.float32)
        enc_mask = batch.get("encoder_segment_ids")
        seq = teacher_sequence(
            batch["encoder_input_tokens"], targets, bos_id, None if enc_mask is None else enc_mask > 0
        )
        teacher_logits = teacher_model.apply(
            {"params": teacher_params},
            seq["tokens"],
            decoder_segment_ids=seq["segment_ids"],
            decoder_positions=seq["positions"],
        )
        offset = seq["offset"]
        teacher_logits = teacher_logits[:, offset : offset + targets.shape[1]]  # static slice, fused
        first = jnp.arange(targets.shape[1])[None, :] == 0
        kd_weights = jnp.where(first & ~seq["has_context"][:, None], 0.0, weights)
        cross, entropy = soft_cross_entropy(logits, teacher_logits, temperature, top_k)
        hard_total, z_sum, denom = losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss)
        safe = jnp.maximum(denom, 1e-8)
        soft_mean = jnp.sum(cross * kd_weights) / safe
        hard_mean = (hard_total - z_sum) / safe
        loss = alpha * soft_scale * soft_mean + (1.0 - alpha) * hard_mean + z_sum / safe
        aux = {
            "loss_denominator": denom,
            "kd_soft_cross_entropy": soft_mean,
            "teacher_entropy": jnp.sum(entropy * kd_weights) / safe,
            "cross_entropy": hard_mean,
            "z_loss": z_sum / safe,
            "accuracy": losses.token_accuracy_sum(logits, targets, weights) / safe,
        }
        return loss, aux

    return loss_fn

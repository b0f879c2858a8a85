"""Train state, optimizers, and the pure train / eval steps.

The step maths are module-level functions (`train_step`, `eval_step`, `accumulate_gradients`);
`Trainer` only binds them to a model, a loss and a mesh, and jits them with explicit shardings
and a donated state. No TensorFlow, no seqio, no gin here.

Parameter groups (by path regex, paths like "decoder/layers_3/cross_attn/q"):
  frozen   never updated (`FreezeConfig.frozen`);
  new      trained from step 0 (`FreezeConfig.new_params`, e.g. `AdaptedModel.new_param_paths`);
  rest     trained from step `FreezeConfig.train_all_after` on (0: from the start).
The switch happens inside the jitted step (a step counter in the optimizer state), so it does not
recompile. While a group is held, its updates are zero and its optimizer moments do not move.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from adaptation import partitioning
from adaptation.models.config import EncoderDecoderConfig, TransformerConfig
from adaptation.objectives.losses import LossFn, Teacher

Array = jnp.ndarray
PyTree = Any

FROZEN, NEW, REST = "frozen", "new", "rest"


# ---------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
      name: "adamw" or "adafactor".
      learning_rate: peak rate (cosine, constant) or the t5x base rate (rsqrt).
      schedule: "cosine" (linear warm-up, cosine decay), "rsqrt" (t5x: lr / sqrt(max(step, warmup))),
        or "constant" (linear warm-up, then constant).
      warmup_steps: linear warm-up length (rsqrt: the constant plateau length).
      decay_steps: cosine: total schedule length, warm-up included (None: the run's train steps).
      end_learning_rate_fraction: cosine: final rate as a fraction of the peak.
      b1, b2, eps: AdamW moments and epsilon.
      weight_decay: decoupled weight decay (AdamW) / Adafactor weight decay rate; matrices only.
      clip_norm: global gradient-norm clip (None: off).
      adafactor_decay_rate: Adafactor second-moment decay exponent.
    """

    name: str = "adamw"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 100
    decay_steps: Optional[int] = None
    end_learning_rate_fraction: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: Optional[float] = 1.0
    adafactor_decay_rate: float = 0.8


@dataclasses.dataclass(frozen=True)
class FreezeConfig:
    """Which parameters train when (path regexes; a pattern also names the whole subtree under it).

    Attributes:
      frozen: never trained.
      new_params: trained from step 0.
      train_all_after: the other (non-frozen) params train from this step on; 0: from the start.
        The unbalanced cross-attention warm-up uses new_params = the cross-attention paths and
        train_all_after = 1000.
    """

    frozen: tuple[str, ...] = ()
    new_params: tuple[str, ...] = ()
    train_all_after: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the train step needs besides the model and the loss.

    Attributes:
      num_train_steps: total optimizer steps of the run (schedule length).
      optimizer: `OptimizerConfig`.
      freeze: `FreezeConfig`.
      num_microbatches: gradient accumulation: the batch is split into this many micro-batches.
      nonfinite: "stop" (the loop stops naming the step) or "skip" (the update is dropped).
      seed: base random seed (init and dropout).
    """

    num_train_steps: int = 1000
    optimizer: OptimizerConfig = OptimizerConfig()
    freeze: FreezeConfig = FreezeConfig()
    num_microbatches: int = 1
    nonfinite: str = "stop"
    seed: int = 0

    def __post_init__(self):
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {self.nonfinite!r}.")
        if self.num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {self.num_microbatches}.")


class TrainState(flax.struct.PyTreeNode):
    """The whole training state: params (float32 master weights), optimizer state, step, base rng."""

    params: PyTree
    opt_state: PyTree
    step: Array
    rng: Array


# ---------------------------------------------------------------------------------------------
# Schedules and optimizers.


def make_schedule(cfg: OptimizerConfig, num_train_steps: int) -> optax.Schedule:
    """The learning rate as a function of the update count."""
    lr, warmup = cfg.learning_rate, cfg.warmup_steps
    if cfg.schedule == "cosine":
        decay = max(cfg.decay_steps or num_train_steps, warmup + 1)
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, decay, end_value=lr * cfg.end_learning_rate_fraction
        )
    if cfg.schedule == "rsqrt":
        return lambda step: lr * jax.lax.rsqrt(jnp.maximum(jnp.asarray(step, jnp.float32), max(warmup, 1)))
    if cfg.schedule == "constant":
        if warmup <= 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose 'cosine', 'rsqrt' or 'constant'.")


def path_str(path: Sequence[Any]) -> str:
    """A tree key path as "a/b/c"."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _matches(patterns: Sequence[str], path: str) -> bool:
    return any(re.fullmatch(f"(?:{p})(?:/.*)?", path) for p in patterns)


def param_labels(params: PyTree, freeze: FreezeConfig) -> PyTree:
    """FROZEN / NEW / REST for every param leaf (see the module docstring)."""

    def label(path, _):
        name = path_str(path)
        if _matches(freeze.frozen, name):
            return FROZEN
        if freeze.train_all_after > 0 and not _matches(freeze.new_params, name):
            return REST
        return NEW

    labels = jax.tree_util.tree_map_with_path(label, params)
    if freeze.train_all_after > 0 and freeze.new_params:
        if not any(v == NEW for v in jax.tree.leaves(labels)):
            raise ValueError(
                f"FreezeConfig.new_params {freeze.new_params} match no parameter; paths look like "
                f"{path_str(jax.tree_util.tree_flatten_with_path(params)[0][0][0])!r}."
            )
    return labels


class _HoldState(NamedTuple):
    count: Array
    inner: Any


def hold_until(inner: optax.GradientTransformation, start_step: int) -> optax.GradientTransformation:
    """`inner`, with zero updates and a frozen inner state for its first `start_step` calls."""

    def init_fn(params):
        return _HoldState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(updates, state, params=None):
        active = state.count >= start_step
        new_updates, new_inner = inner.update(updates, state.inner, params)
        new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_inner, state.inner)
        return new_updates, _HoldState(state.count + 1, new_inner)

    return optax.GradientTransformation(init_fn, update_fn)


def _zero_held_gradients(labels: PyTree, start_step: int) -> optax.GradientTransformation:
    """Zeroes frozen gradients, and REST gradients before `start_step`, so clipping sees only the
    gradients that will be applied."""

    def init_fn(params):
        del params
        return jnp.zeros([], jnp.int32)

    def update_fn(updates, count, params=None):
        del params
        rest_on = count >= start_step

        def keep(u, label):
            if label == FROZEN:
                return jnp.zeros_like(u)
            if label == REST:
                return jnp.where(rest_on, u, jnp.zeros_like(u))
            return u

        return jax.tree.map(keep, updates, labels), count + 1

    return optax.GradientTransformation(init_fn, update_fn)


def _base_transform(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The optimizer's preconditioning and weight decay, without the learning rate."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    if cfg.name == "adamw":
        scale = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adafactor":
        scale = optax.chain(
            optax.scale_by_factored_rms(decay_rate=cfg.adafactor_decay_rate), optax.clip_by_block_rms(1.0)
        )
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}; choose 'adamw' or 'adafactor'.")
    if cfg.weight_decay:
        return optax.chain(scale, optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    return scale


def make_optimizer(params: PyTree, config: TrainConfig) -> optax.GradientTransformation:
    """Freezing, clipping, AdamW/Adafactor per group, then the scheduled learning rate."""
    cfg, freeze = config.optimizer, config.freeze
    labels = param_labels(params, freeze)
    parts = [_zero_held_gradients(labels, freeze.train_all_after)]
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(
        optax.multi_transform(
            {
                NEW: _base_transform(cfg),
                REST: hold_until(_base_transform(cfg), freeze.train_all_after),
                FROZEN: optax.set_to_zero(),
            },
            labels,
        )
    )
    parts.append(optax.scale_by_learning_rate(make_schedule(cfg, config.num_train_steps)))
    return optax.chain(*parts)


# ---------------------------------------------------------------------------------------------
# Step functions.


def _split_microbatches(batch: dict, num: int) -> dict:
    """[B, ...] -> [num, B / num, ...]; micro-batch i takes rows i, i + num, ... (spread over shards)."""

    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by num_microbatches={num}.")
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def accumulate_gradients(
    params: PyTree, batch: dict, rng: Array, loss_fn: Callable, num_microbatches: int
) -> tuple[PyTree, dict]:
    """Gradients and metrics of `loss_fn` over the batch, accumulated over micro-batches.

    Micro-batches are weighted by their `loss_denominator` (sum of loss weights) when the loss
    reports one, so the result equals the full-batch gradient.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(mb, mb_rng):
        (loss, aux), grads = grad_fn(params, mb, mb_rng)
        weight = aux.get("loss_denominator", jnp.ones([], jnp.float32)).astype(jnp.float32)
        metrics = {"loss": loss, **aux}
        return grads, metrics, weight

    if num_microbatches == 1:
        grads, metrics, _ = one(batch, rng)
        return grads, metrics

    micro = _split_microbatches(batch, num_microbatches)
    first = jax.tree.map(lambda x: x[0], micro)
    g_shape, m_shape, _ = jax.eval_shape(one, first, rng)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)  # noqa: E731

    def body(carry, xs):
        g_acc, m_acc, w_acc = carry
        mb, i = xs
        grads, metrics, weight = one(mb, jax.random.fold_in(rng, i))
        g_acc = jax.tree.map(lambda a, g: a + weight * g.astype(jnp.float32), g_acc, grads)
        m_acc = {
            k: m_acc[k] + (v if k.endswith("_sum") or k == "loss_denominator" else weight * v)
            for k, v in metrics.items()
        }
        return (g_acc, m_acc, w_acc + weight), None

    init = (zeros(g_shape), zeros(m_shape), jnp.zeros([], jnp.float32))
    (g_sum, m_sum, w_sum), _ = jax.lax.scan(body, init, (micro, jnp.arange(num_microbatches)))
    w_safe = jnp.maximum(w_sum, 1e-8)
    grads = jax.tree.map(lambda g, p: (g / w_safe).astype(p.dtype), g_sum, params)
    metrics = {
        k: (v if k.endswith("_sum") or k == "loss_denominator" else v / w_safe) for k, v in m_sum.items()
    }
    return grads, metrics


def train_step(
    state: TrainState,
    batch: dict,
    teacher_params: Optional[PyTree] = None,
    *,
    model: Any,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    num_microbatches: int = 1,
    teacher_model: Any = None,
) -> tuple[TrainState, dict]:
    """One optimizer step. A non-finite loss or gradient leaves params and optimizer state unchanged
    (metric `nonfinite` = 1); the step counter advances either way."""
    rng = jax.random.fold_in(state.rng, state.step)
    teacher = None if teacher_model is None else Teacher(teacher_model, teacher_params)
    bound = functools.partial(loss_fn, model=model, teacher=teacher)
    grads, metrics = accumulate_gradients(state.params, batch, rng, bound, num_microbatches)
    grad_norm = optax.global_norm(grads)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    new_state = state.replace(
        params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state), step=state.step + 1
    )
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state.step), nonfinite=1 - ok.astype(jnp.int32))
    return new_state, metrics


def eval_step(params: PyTree, batch: dict, *, model: Any, loss_fn: LossFn, teacher=None) -> dict:
    """Loss and metrics of one batch without dropout; `loss_denominator` for weighted averaging."""
    loss, aux = loss_fn(params, batch, None, model=model, teacher=teacher)
    return {"loss": loss, **aux}


# ---------------------------------------------------------------------------------------------
# Binding to a mesh.


def opt_state_shardings(abstract_opt_state: PyTree, params: PyTree, param_shardings: PyTree, mesh: Mesh) -> PyTree:
    """Optimizer-state leaves that mirror a param (same path suffix and shape) take its sharding;
    the others (counts, factored moments) are replicated."""
    by_path = {}
    for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings)):
        by_path[path_str(path)] = (tuple(p.shape), s)
    rep = partitioning.replicated(mesh)

    def pick(path, leaf):
        name = path_str(path)
        shape = tuple(getattr(leaf, "shape", ()))
        parts = name.split("/")
        for i in range(len(parts)):
            hit = by_path.get("/".join(parts[i:]))
            if hit is not None and hit[0] == shape:
                return hit[1]
        return rep

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


class Trainer:
    """Binds the step functions to a model, a loss and a mesh; jits them with explicit shardings.

    Args:
      model: flax module (`EncoderDecoder`, `DecoderOnlyLM`, ...).
      config: `TrainConfig`.
      mesh, rules: device mesh and logical axis rules (`adaptation.partitioning`).
      loss_fn: a `LossFn` (default: cross-entropy with z-loss).
      example_batch: a dict of arrays (or ShapeDtypeStructs) with the global batch shapes.
      teacher: an optional frozen `Teacher`, its params already sharded (see `shard_params`).
    """

    def __init__(
        self,
        model: Any,
        config: TrainConfig,
        mesh: Mesh,
        rules: partitioning.LogicalRules,
        loss_fn: LossFn,
        example_batch: dict,
        teacher: Optional[Teacher] = None,
    ):
        self.model, self.config, self.mesh, self.rules = model, config, mesh, rules
        self.loss_fn, self.teacher = loss_fn, teacher
        self.example_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in example_batch.items()}
        self.schedule = make_schedule(config.optimizer, config.num_train_steps)
        self._boxed_params = None
        self.param_shardings = self._param_shardings()
        abstract_params = nn_unbox(self._boxed_params)
        self.tx = make_optimizer(abstract_params, config)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        rep = partitioning.replicated(mesh)
        self.state_shardings = TrainState(
            params=self.param_shardings,
            opt_state=opt_state_shardings(abstract_opt, abstract_params, self.param_shardings, mesh),
            step=rep,
            rng=rep,
        )
        self.abstract_state = TrainState(
            params=abstract_params,
            opt_state=abstract_opt,
            step=jax.ShapeDtypeStruct((), jnp.int32),
            rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)),
        )
        self.batch_sharding = partitioning.batch_sharding(mesh)
        teacher_shardings = None
        if teacher is not None:
            teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher.params)
        step = functools.partial(
            train_step,
            model=model,
            loss_fn=loss_fn,
            tx=self.tx,
            schedule=self.schedule,
            num_microbatches=config.num_microbatches,
            teacher_model=None if teacher is None else teacher.model,
        )
        self._train_step = partitioning.jit_on_mesh(
            step,
            mesh,
            rules,
            in_shardings=(self.state_shardings, self.batch_sharding, teacher_shardings),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=(0,),
        )
        self._eval_step = partitioning.jit_on_mesh(
            functools.partial(eval_step, model=model, loss_fn=loss_fn),
            mesh,
            rules,
            in_shardings=(self.param_shardings, self.batch_sharding),
            out_shardings=rep,
        )

    def _model_init(self, rng: Array) -> PyTree:
        return model_init_fn(self.model, self.example_batch)(rng)

    def _param_shardings(self) -> PyTree:
        import flax.linen as nn

        with nn.logical_axis_rules(self.rules):
            self._boxed_params = jax.eval_shape(self._model_init, jax.random.PRNGKey(0))
        return partitioning.logical_shardings(self._boxed_params, self.mesh, self.rules)

    def init_state(self, params: Optional[PyTree] = None) -> TrainState:
        """A fresh sharded state: random params from `config.seed` (or the given params, e.g. an
        initial checkpoint), a new optimizer state, step 0."""
        seed_key = jax.random.PRNGKey(self.config.seed)
        init_key, state_key = jax.random.split(seed_key)
        if params is None:
            params, _ = partitioning.shard_init(self._model_init, self.mesh, self.rules, init_key)
        else:
            params = self.shard_params(params)
        opt_state = partitioning.jit_on_mesh(
            self.tx.init, self.mesh, self.rules, out_shardings=self.state_shardings.opt_state
        )(params)
        rep = partitioning.replicated(self.mesh)
        return TrainState(
            params=params,
            opt_state=opt_state,
            step=jax.device_put(jnp.zeros([], jnp.int32), rep),
            rng=jax.device_put(state_key, rep),
        )

    def shard_params(self, params: PyTree) -> PyTree:
        """Places host (numpy) params onto this trainer's param shardings, checking shapes."""
        check_tree_shapes(self.abstract_state.params, params, "params")
        return jax.tree.map(
            lambda x, s, a: jax.device_put(np.asarray(x, dtype=a.dtype), s),
            params, self.param_shardings, self.abstract_state.params,
        )

    def train_step(self, state: TrainState, host_batch: dict) -> tuple[TrainState, dict]:
        """One step on this process's slice of the global batch (donates `state`)."""
        batch = partitioning.host_batch_to_global(host_batch, self.mesh)
        teacher_params = None if self.teacher is None else self.teacher.params
        return self._train_step(state, batch, teacher_params)

    def eval_step(self, params: PyTree, host_batch: dict) -> dict:
        """Eval metrics of this process's slice of the global batch."""
        return self._eval_step(params, partitioning.host_batch_to_global(host_batch, self.mesh))


def model_init_fn(model: Any, example_batch: Optional[dict] = None) -> Callable[[Array], PyTree]:
    """`rng -> boxed params` of a model, called on dummy inputs shaped like `example_batch` (or
    [1, 8] tokens: param shapes do not depend on the input length)."""
    example = example_batch or {}

    def tokens(name):
        shape = example[name].shape if name in example else (1, 8)
        return jnp.ones(shape, jnp.int32)

    def init(rng):
        if isinstance(getattr(model, "config", None), EncoderDecoderConfig):
            args = (tokens("encoder_input_tokens"), tokens("decoder_input_tokens"))
        else:
            args = (tokens("decoder_input_tokens"),)
        return model.init({"params": rng}, *args)["params"]

    return init


def place_params(model: Any, params: PyTree, mesh: Mesh, rules: partitioning.LogicalRules) -> PyTree:
    """Puts host params of `model` (e.g. a frozen teacher) on `mesh` with the model's logical shardings."""
    import flax.linen as nn

    with nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(model_init_fn(model), jax.random.PRNGKey(0))
    abstract = nn_unbox(boxed)
    check_tree_shapes(abstract, params, "params")
    shardings = partitioning.logical_shardings(boxed, mesh, rules)
    return jax.tree.map(lambda x, s, a: jax.device_put(np.asarray(x, dtype=a.dtype), s), params, shardings, abstract)


def nn_unbox(tree: PyTree) -> PyTree:
    """Strips flax partitioning boxes."""
    import flax.linen as nn

    return nn.meta.unbox(tree)


def check_tree_shapes(expected: PyTree, found: PyTree, what: str) -> None:
    """Raises `CheckpointError` (a ValueError) naming the first parameter whose path or shape differs."""
    from adaptation.checkpoints.common import check_shapes

    exp = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(found)[0]}
    check_shapes(exp, got, what, "the model")


# ---------------------------------------------------------------------------------------------
# FLOPs and MFU.

# Dense peak FLOP/s per device (bf16) by `device_kind` substring.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def _stack_forward_flops(
    cfg: TransformerConfig, batch: int, length: int, enc_length: int = 0
) -> float:
    """Forward matmul FLOPs of one stack (no embedding lookup, no output head)."""
    n, k, h, d, f = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim, cfg.hidden_dim
    tokens = batch * length
    enc_tokens = batch * enc_length
    total = 0.0
    for kind in cfg.layer_kinds:
        keys = length
        if kind.value == "local" and cfg.sliding_window is not None:
            keys = min(length, cfg.sliding_window if cfg.causal else 2 * cfg.sliding_window + 1)
        layer = 2 * tokens * d * (n * h + 2 * k * h) + 2 * tokens * n * h * d  # q, k, v, o
        layer += 4 * batch * length * keys * n * h  # scores and weighted values
        layer += 3 * 2 * tokens * d * f  # GeGLU: gate, up, down
        if cfg.cross_attention:
            e = cfg.kv_input_dim
            layer += 2 * tokens * d * n * h + 2 * tokens * n * h * d + 2 * 2 * enc_tokens * e * k * h
            layer += 4 * batch * length * enc_length * n * h
        if cfg.merged_attention:
            layer += 2 * 2 * enc_tokens * cfg.kv_input_dim * k * h + 4 * batch * length * enc_length * n * h
        total += layer
    return total


def training_flops_per_step(
    config: Union[EncoderDecoderConfig, TransformerConfig], batch_size: int, inputs_length: int, targets_length: int
) -> float:
    """Model FLOPs of one training step = 3 x forward (backward = 2 x forward), no recomputation.

    Forward counts every matmul at 2 FLOPs per multiply-add: q/k/v/o projections on their own token
    counts (cross-attention k/v on the encoder tokens), GeGLU as three matrices, the output head
    over the target tokens, plus 4 x B x Tq x Tkv x heads x head_dim per attention (sliding layers
    see at most their window; no causal halving). Decoder-only models: `inputs_length` is ignored.
    """
    if isinstance(config, EncoderDecoderConfig):
        fwd = _stack_forward_flops(config.encoder, batch_size, inputs_length)
        fwd += _stack_forward_flops(config.decoder, batch_size, targets_length, inputs_length)
        head = config.decoder
    else:
        fwd = _stack_forward_flops(config, batch_size, targets_length)
        head = config
    fwd += 2 * batch_size * targets_length * head.embed_dim * head.vocab_size
    return 3.0 * fwd


def peak_flops_per_device(device: Any = None) -> Optional[float]:
    """Dense bf16 peak of a device from `PEAK_FLOPS`; None when unknown (CPU)."""
    kind = getattr(device or jax.devices()[0], "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak: Optional[float]) -> float:
    """Model FLOPs utilization; NaN when the peak is unknown."""
    if not peak or step_seconds <= 0:
        return math.nan
    return flops_per_step / step_seconds / (num_devices * peak)

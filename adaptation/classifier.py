"""Encoder classifiers in the trainer: the model config, the model, init from any checkpoint, run dirs.

`ClassifierConfig(encoder, head, pad_side)` is the trainer's `model_config` for encoder-only
classification, regression and ranking (the Gemma Encoder recipe and the T5Gemma paper's SuperGLUE
protocol): `encoder` is the stack (`causal=False` bidirectional, `causal=True` for the study's causal
variant; `dropout_rate` residual dropout), `head` the pooler + MLP head (`HeadConfig`), `pad_side`
where the model moves padding before encoding ("right" or "left"; a study option: with our
segment-derived positions and rank-based poolers both give the same function, up to float error).

`Classifier` is `EncoderClassifier` plus two conveniences: tokens are re-padded on `pad_side`, and
any leading dims are accepted (`[B, L, T]` ranking lists give `[B, L]` scores). Its params are
exactly `EncoderClassifier`'s.

Run directories: the trainer writes `model_config.json` in the native format of the encoder stack
plus a `"classifier"` entry `{"head": HeadConfig fields, "pad_side"}`; `load_classifier(path)`
reads a run directory (latest step) or a model directory written by `save_classifier`.
`classifier_params(config, path, rng)` initializes a classifier from any checkpoint
`adaptation.load_checkpoint` reads (decoder-only, encoder-decoder: its encoder, a T5Gemma
classifier) with a fresh head, or from a classifier run (everything, head included).

No TensorFlow, no seqio, no gin.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from adaptation.encoder import encoder_config, encoder_params, init_head
from adaptation.models import layout, presets
from adaptation.models.config import EncoderDecoderConfig, TransformerConfig
from adaptation.models.heads import EncoderClassifier, HeadConfig

Array = jnp.ndarray
PAD_SIDES = ("right", "left")
CLASSIFIER_KEY = "classifier"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """An encoder-only classifier: the stack, the head, and the padding side."""

    encoder: TransformerConfig
    head: HeadConfig = HeadConfig()
    pad_side: str = "right"

    def __post_init__(self):
        if self.pad_side not in PAD_SIDES:
            raise ValueError(f"pad_side must be one of {PAD_SIDES}, got {self.pad_side!r}.")
        if self.encoder.cross_attention or self.encoder.merged_attention:
            raise ValueError("a classifier's encoder has no cross- or merged attention; build it with "
                             "adaptation.encoder.encoder_config(...).")

    def replace(self, **changes) -> "ClassifierConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def repad(tokens: Array, side: str) -> Array:
    """Moves the non-pad tokens (id != 0) of each row of `[..., T]` ids to the right or left padding layout,
    keeping their order."""
    if side not in PAD_SIDES:
        raise ValueError(f"pad side must be one of {PAD_SIDES}, got {side!r}.")
    real = tokens != 0
    key = ~real if side == "right" else real  # False sorts first
    order = jnp.argsort(key, axis=-1, stable=True)
    return jnp.take_along_axis(tokens, order, axis=-1)


class Classifier(EncoderClassifier):
    """`EncoderClassifier` that re-pads its input on `pad_side` and takes any leading dims.

    `apply({"params": p}, tokens[..., T]) -> [..., C]` logits or `[...]` values.
    """

    pad_side: str = "right"

    def __call__(self, tokens: Array, segment_ids: Optional[Array] = None, positions: Optional[Array] = None,
                 enable_dropout: bool = False) -> Array:
        lead = tokens.shape[:-1]
        flat = tokens.reshape((-1, tokens.shape[-1]))
        if segment_ids is None and positions is None:
            flat = repad(flat, self.pad_side)
        else:
            segment_ids = None if segment_ids is None else segment_ids.reshape(flat.shape)
            positions = None if positions is None else positions.reshape(flat.shape)
        out = super().__call__(flat, segment_ids, positions, enable_dropout)
        return out.reshape(lead + out.shape[1:])


def build_classifier(config: ClassifierConfig) -> Classifier:
    """The Flax module of a `ClassifierConfig`."""
    return Classifier(config.encoder, config.head, pad_side=config.pad_side)


def encoder_classifier(
    preset: Optional[str] = None,
    *,
    checkpoint: Optional[str] = None,
    causal: bool = False,
    head: HeadConfig = HeadConfig(),
    pad_side: str = "right",
    checkpoint_preset: Optional[str] = None,
    **overrides: Any,
) -> ClassifierConfig:
    """A `ClassifierConfig` whose encoder is a decoder-only preset or the stack of a checkpoint.

    Args:
      preset: a decoder-only preset name ("tiny", "gemma2_2b", ...), run bidirectionally.
      checkpoint: instead of `preset`, any checkpoint `adaptation.load_checkpoint` reads (its
        config is read, no tensor): a decoder-only model gives its stack, an encoder-decoder its
        encoder; a classifier run directory gives its encoder (and its head/pad side are ignored:
        pass them).
      causal: keep causal self-attention (the study's variant); default bidirectional.
      head: the pooler and head.
      pad_side: "right" or "left".
      checkpoint_preset: preset name for official Gemma checkpoints (their shapes do not tell).
      **overrides: `TransformerConfig` fields (dropout_rate, dtype, param_dtype, scan_layers,
        remat_policy, vocab_size, ...).
    """
    if (preset is None) == (checkpoint is None):
        raise ValueError("encoder_classifier needs exactly one of preset= (a decoder-only preset name) or "
                         "checkpoint= (a checkpoint path).")
    if preset is not None:
        source: Union[TransformerConfig, EncoderDecoderConfig] = presets.decoder_only(preset)
    else:
        stored = read_classifier_config(checkpoint) if is_classifier_dir(checkpoint) else None
        if stored is not None:
            source = stored.encoder
        else:
            from adaptation.checkpoints.loader import read_config

            source = read_config(checkpoint, config=checkpoint_preset)
    encoder = encoder_config(source, causal=causal).replace(**overrides)
    return ClassifierConfig(encoder=encoder, head=head, pad_side=pad_side)


# ----------------------------------------------------------------------------------------------
# Params.


def abstract_params(config: ClassifierConfig) -> Any:
    """Shapes of the classifier params (unboxed ShapeDtypeStructs)."""
    from flax.core import meta

    model = build_classifier(config)
    tokens = jnp.ones((1, 2), jnp.int32)
    return meta.unbox(jax.eval_shape(lambda r: model.init(r, tokens), jax.random.PRNGKey(0))["params"])


def classifier_params(config: ClassifierConfig, path: str, rng: Optional[jax.Array] = None,
                      checkpoint_preset: Optional[str] = None) -> dict:
    """Params of `config` initialized from the checkpoint at `path`.

    A classifier run/model directory gives every param (head included); any other checkpoint gives
    the encoder (a decoder-only stack run as encoder, an encoder-decoder's encoder) and a fresh head
    from `rng`. Shapes are checked against `config`, naming the first parameter that differs.
    """
    from adaptation.trainer import check_tree_shapes

    if is_classifier_dir(path):
        _, params = load_classifier(path, config=config)
        return params
    from adaptation.checkpoints.loader import read_checkpoint

    _, params = read_checkpoint(path, config=checkpoint_preset)
    tree = encoder_params(params)
    tree = {"embedder": tree["embedder"],
            "encoder": layout.to_config_layout(tree["encoder"], config.encoder.scan_layers)}
    expected = abstract_params(config)
    check_tree_shapes({k: expected[k] for k in ("embedder", "encoder")}, tree, f"encoder params of {path}")
    return init_head(build_classifier(config), tree, rng)


# ----------------------------------------------------------------------------------------------
# Run / model directories.


def config_to_json(config: ClassifierConfig) -> dict:
    """The model_config.json object: the encoder stack in the native format + the classifier entry."""
    from adaptation.checkpoints import native

    obj = native.config_to_json(config.encoder)
    obj[CLASSIFIER_KEY] = {"head": dataclasses.asdict(config.head), "pad_side": config.pad_side}
    return obj


def config_from_json(obj: dict, source: str) -> ClassifierConfig:
    """The `ClassifierConfig` of a model_config.json object with a classifier entry."""
    from adaptation.checkpoints import native

    entry = obj.get(CLASSIFIER_KEY)
    if not isinstance(entry, dict):
        raise ValueError(f"{source}: no {CLASSIFIER_KEY!r} entry; this is not an encoder classifier.")
    encoder = native.config_from_json(obj, source)
    try:
        head = HeadConfig(**entry.get("head", {}))
    except TypeError as e:
        raise ValueError(f"{source}: bad classifier head ({e}).") from None
    return ClassifierConfig(encoder=encoder, head=head, pad_side=entry.get("pad_side", "right"))


def _config_file(path: str) -> str:
    from adaptation.checkpoints.native import MODEL_CONFIG

    return os.path.join(os.fspath(path), MODEL_CONFIG)


def is_classifier_dir(path: Optional[str]) -> bool:
    """Whether `path` is a classifier run/model directory (model_config.json with a classifier entry)."""
    if not path:
        return False
    file = _config_file(path)
    if not os.path.isfile(file):
        return False
    with open(file) as f:
        try:
            return CLASSIFIER_KEY in json.load(f)
        except json.JSONDecodeError:
            return False


def read_classifier_config(path: str) -> ClassifierConfig:
    """The `ClassifierConfig` of a classifier run/model directory."""
    file = _config_file(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path!r} has no model_config.json: not a classifier run or model directory.")
    with open(file) as f:
        return config_from_json(json.load(f), file)


def write_classifier_config(directory: str, config: ClassifierConfig) -> str:
    """Writes `directory/model_config.json` (process 0 only); returns its path."""
    file = _config_file(directory)
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        with open(file, "w") as f:
            json.dump(config_to_json(config), f, indent=2)
    return file


def _unbox(tree: Any) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {k: _unbox(v) for k, v in tree.items()}
    return tree


def load_classifier(path: str, config: Optional[ClassifierConfig] = None) -> tuple[Classifier, dict]:
    """(model, numpy params) of a classifier run directory (its latest step) or model directory.

    `config` replaces the stored one (same shapes; e.g. another dropout or `scan_layers`).
    """
    from adaptation.checkpoints import native
    from adaptation.trainer import check_tree_shapes

    config = config or read_classifier_config(path)
    directory = native.params_directory(path)
    tree = _unbox(native.restore_tree(directory))
    if set(tree) == {native.PARAMS}:
        tree = tree[native.PARAMS]
    tree = dict(tree)
    tree["encoder"] = layout.to_config_layout(tree["encoder"], config.encoder.scan_layers)
    check_tree_shapes(abstract_params(config), tree, f"classifier params in {directory}")
    return build_classifier(config), tree


def save_classifier(path: str, config: ClassifierConfig, params: dict) -> None:
    """Writes a classifier model directory (model_config.json + orbax `params/`)."""
    from adaptation.checkpoints import native

    os.makedirs(path, exist_ok=True)
    write_classifier_config(path, config)
    native.save_tree(os.path.join(path, native.PARAMS), jax.tree.map(np.asarray, dict(params)))


def training_flops_per_step(config: ClassifierConfig, rows: int, length: int) -> float:
    """Model FLOPs of one classifier training step (3 x the encoder's forward; the head is negligible)."""
    from adaptation.trainer import _stack_forward_flops

    return 3.0 * _stack_forward_flops(config.encoder, rows, length)

"""Shared pieces of checkpoint conversion: errors, atomic directories, name maps as data.

A family's conversion is data: a `NameMap` names, for every parameter of our per-layer tree, the
tensor that holds it in the foreign format and the `Hook` that turns one layout into the other.
The map is walked over the parameter shapes that our model expects for a config (obtained with
`jax.eval_shape` on the model's `init`), so a family entry lists names once and a config decides
which entries apply (e.g. QK-norm scales only exist when `use_qk_norm`).

Our layout (per-layer, see `adaptation.models.transformer`): projections are stored input-axis
first (`q [D, N, H]`, `k/v [D, K, H]`, `o [N, H, D]`, `gate/up [D, F]`, `down [F, D]`); Hugging
Face stores `nn.Linear` weights output-axis first and heads folded (`q_proj (N*H, D)`). The hooks:

- `IDENTITY`: same array (norm scales, embedding tables, biases).
- `IN_PROJ`: ours `(In, *Out)` <-> theirs `(prod(Out), In)`, e.g. q/k/v, gate/up, a head kernel.
- `OUT_PROJ`: ours `(*In, Out)` <-> theirs `(Out, prod(In))`, e.g. o, down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import numpy as np

from adaptation.models.config import EncoderDecoderConfig, TransformerConfig

AnyConfig = Union[TransformerConfig, EncoderDecoderConfig]
Shape = tuple[int, ...]

DECODER_ONLY = "decoder_only"
ENCODER_DECODER = "encoder_decoder"
ENCODER_ONLY = "encoder_only"
KINDS = (DECODER_ONLY, ENCODER_DECODER, ENCODER_ONLY)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written as asked; the message names the file/tensor and the fix."""


# ----------------------------------------------------------------------------------------------
# Trees.


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b/c": leaf} -> nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def check_shapes(expected: Mapping[str, tuple], found: Mapping[str, Any], what: str, against: str = "the config") -> None:
    """Flat `{"a/b": shape}` expectations against flat `{"a/b": array}`: same names, same shapes.

    Raises `CheckpointError` naming the missing/unexpected parameters or the first shape mismatch
    (`what` says whose params, `against` what they should match).
    """
    missing = [k for k in expected if k not in found]
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{what} do not match {against}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}."
        )
    for name, shape in expected.items():
        got = tuple(np.shape(found[name]))
        if got != tuple(shape):
            raise CheckpointError(f"{what}: parameter {name!r} has shape {got}, {against} expects {tuple(shape)}.")


def kind_of(config: AnyConfig) -> str:
    """"decoder_only", "encoder_decoder" or "encoder_only" for a config."""
    if isinstance(config, EncoderDecoderConfig):
        return ENCODER_DECODER
    return DECODER_ONLY if config.causal else ENCODER_ONLY


def per_layer(config: AnyConfig) -> AnyConfig:
    """The config with `scan_layers=False` on every stack (checkpoint code works per layer)."""
    if isinstance(config, EncoderDecoderConfig):
        return config.replace(encoder=config.encoder.replace(scan_layers=False),
                              decoder=config.decoder.replace(scan_layers=False))
    return config.replace(scan_layers=False)


def model_for(config: AnyConfig):
    """The Flax module for a config: `DecoderOnlyLM`, `EncoderDecoder` or `EncoderOnly`."""
    from adaptation.models.transformer import DecoderOnlyLM, EncoderDecoder, EncoderOnly

    return {DECODER_ONLY: DecoderOnlyLM, ENCODER_DECODER: EncoderDecoder, ENCODER_ONLY: EncoderOnly}[
        kind_of(config)
    ](config)


def expected_shapes(config: AnyConfig) -> dict[str, Shape]:
    """{"/"-joined param path: shape} of the per-layer param tree our model builds for `config`."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    config = per_layer(config)
    model = model_for(config)
    tokens = jnp.zeros((1, 1), jnp.int32)
    args = (tokens, tokens) if kind_of(config) == ENCODER_DECODER else (tokens,)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))
    params = nn.meta.unbox(variables["params"])
    return {path: tuple(leaf.shape) for path, leaf in flatten(params).items()}


def cast_tree(params: Mapping[str, Any], dtype: Optional[Any]) -> dict[str, Any]:
    """Casts every floating leaf to `dtype` (None: unchanged). Numpy in, numpy out."""
    if dtype is None:
        return dict(params)
    dtype = np.dtype(dtype_of(dtype))
    out = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out[key] = cast_tree(value, dtype)
        else:
            value = np.asarray(value)
            out[key] = value.astype(dtype) if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16" else value
    return out


def dtype_of(name: Any) -> np.dtype:
    """A numpy dtype from a name ("bfloat16", "float32", ...) or a dtype; bfloat16 via ml_dtypes."""
    if isinstance(name, str) and name in ("bfloat16", "bf16"):
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    import jax.numpy as jnp

    return np.dtype(jnp.dtype(name))


# ----------------------------------------------------------------------------------------------
# Layout hooks and name maps.


@dataclasses.dataclass(frozen=True)
class Hook:
    """Converts one tensor between our layout and a foreign one.

    `to_ours(x, our_shape)`, `to_theirs(x)`, and `their_shape(our_shape)` (to check a foreign
    tensor's shape before converting it).
    """

    name: str
    to_ours: Callable[[np.ndarray, Shape], np.ndarray]
    to_theirs: Callable[[np.ndarray], np.ndarray]
    their_shape: Callable[[Shape], Shape]


IDENTITY = Hook("identity", lambda x, s: x, lambda x: x, lambda s: tuple(s))
IN_PROJ = Hook(
    "in_proj",
    lambda x, s: x.T.reshape(s),
    lambda x: x.reshape(x.shape[0], -1).T,
    lambda s: (math.prod(s[1:]), s[0]),
)
OUT_PROJ = Hook(
    "out_proj",
    lambda x, s: x.T.reshape(s),
    lambda x: x.reshape(-1, x.shape[-1]).T,
    lambda s: (s[-1], math.prod(s[:-1])),
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: our path and shape, the foreign name and shape, and the hook between them."""

    ours: str
    theirs: str
    hook: Hook
    our_shape: Shape

    @property
    def their_shape(self) -> Shape:
        return self.hook.their_shape(self.our_shape)


_LAYER_PATH = re.compile(r"^(?P<stack>[^/]+)/layers_(?P<index>\d+)/(?P<rest>.+)$")


@dataclasses.dataclass(frozen=True)
class NameMap:
    """A family's names: top-level params, per-stack layer prefixes, and a block table.

    Attributes:
      top: our full path -> (their name, hook), for params outside the layers.
      stacks: our stack name ("decoder", "encoder") -> their layer prefix with `{i}`
        (e.g. "model.layers.{i}.").
      block: our path inside a block ("attn/q") -> (their suffix, hook) (e.g. "self_attn.q_proj.weight").
    """

    top: Mapping[str, tuple[str, Hook]]
    stacks: Mapping[str, str]
    block: Mapping[str, tuple[str, Hook]]

    def entry(self, ours: str, shape: Shape) -> Entry:
        """The entry of one of our params; a CheckpointError when the map has no name for it."""
        if ours in self.top:
            theirs, hook = self.top[ours]
            return Entry(ours, theirs, hook, shape)
        match = _LAYER_PATH.match(ours)
        if match and match["stack"] in self.stacks and match["rest"] in self.block:
            suffix, hook = self.block[match["rest"]]
            return Entry(ours, self.stacks[match["stack"]].format(i=int(match["index"])) + suffix, hook, shape)
        raise CheckpointError(
            f"this format has no name for parameter {ours!r}: the config asks for a parameter that the "
            f"format cannot store (add it to the family's name map)."
        )

    def entries(self, shapes: Mapping[str, Shape]) -> list[Entry]:
        """Entries for every param of an expected-shapes dict, in its order."""
        return [self.entry(ours, shape) for ours, shape in shapes.items()]


# ----------------------------------------------------------------------------------------------
# Files.


def require_dir(path: Union[str, os.PathLike], what: str = "checkpoint") -> str:
    """The path as a string; a CheckpointError when it is not an existing directory."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{what} directory {path!r} does not exist.")
    if not os.path.isdir(path):
        raise CheckpointError(f"{what} path {path!r} is a file; expected a directory.")
    return path


@contextlib.contextmanager
def atomic_directory(target: Union[str, os.PathLike], overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory next to `target`, renamed to `target` on success.

    On any exception the temporary directory is removed and `target` is untouched, so a failed
    write leaves nothing half-written. An existing `target` is an error unless `overwrite`.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not overwrite:
        raise CheckpointError(f"output {target!r} already exists; remove it or choose another path.")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
        os.rename(target, os.path.join(old, "x"))
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)

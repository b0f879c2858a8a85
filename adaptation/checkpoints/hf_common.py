"""What every Hugging Face family shares: config.json fields of one Gemma stack, and the generic
import (tensor by tensor, checked against the shapes our model expects) and export (streamed).

A Gemma stack's config.json fields (`Gemma2Config`, `T5GemmaModuleConfig`, and the text part of
later Gemma configs) map to `TransformerConfig` as:
  vocab_size, num_hidden_layers -> num_layers, hidden_size -> embed_dim,
  intermediate_size -> hidden_dim, num_attention_heads -> num_heads,
  num_key_value_heads -> num_kv_heads, head_dim, query_pre_attn_scalar,
  attn_logit_softcapping -> attn_logits_soft_cap, final_logit_softcapping -> final_logit_soft_cap,
  sliding_window, layer_types ("sliding_attention"/"full_attention") -> attention_pattern (the
  shortest period that repeats them; absent: `sliding_window_pattern`, every P-th layer global),
  rms_norm_eps -> norm_eps, and RoPE:
  - Gemma 2 style (`GEMMA2_STYLE`): rope_parameters.rope_theta (or rope_theta) -> both RoPE bases;
  - Gemma 3 style (`GEMMA3_STYLE`: Gemma3TextConfig, T5Gemma2 text/decoder configs): rope_parameters
    per layer type, `{"sliding_attention": {rope_type, rope_theta}, "full_attention": {...}}` ->
    rope_base_local / rope_base_global; "linear" scaling on full-attention layers (`factor`) ->
    rope_scale_global (legacy fields: rope_theta, rope_local_base_freq, rope_scaling). QK-norm is
    always on; fields that config.json omits take the class defaults.
A `StackStyle` says which of these a Hugging Face class implements. Fields our block cannot
express (another activation, attention biases, another RoPE scaling type) are rejected with the
field's name.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Mapping, Optional

import numpy as np

from adaptation.checkpoints.common import (
    CheckpointError,
    Entry,
    NameMap,
    check_shapes,
    dtype_of,
    flatten,
    unflatten,
)
from adaptation.checkpoints.safetensors_io import SafetensorsReader
from adaptation.models.config import AttentionKind, TransformerConfig

LOCAL_NAME, GLOBAL_NAME = "sliding_attention", "full_attention"
_KIND_BY_NAME = {LOCAL_NAME: AttentionKind.LOCAL, GLOBAL_NAME: AttentionKind.GLOBAL}
_NAME_BY_KIND = {v: k for k, v in _KIND_BY_NAME.items()}
GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")
SPECIAL_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}

log = logging.getLogger(__name__)

# Gemma3TextConfig / T5Gemma2TextConfig class defaults for the fields a config.json may omit
# (the released multimodal configs list only a few text fields).
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "rms_norm_eps": 1e-6,
    "sliding_window_pattern": 6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
}


@dataclasses.dataclass(frozen=True)
class StackStyle:
    """What one Hugging Face Gemma stack class implements.

    Attributes:
      qk_norm: the class always has q_norm / k_norm (Gemma 3); otherwise it has none.
      rope_per_layer_type: rope_parameters per layer type with optional linear scaling on
        full-attention layers (Gemma 3); otherwise one RoPE base for every layer.
      attn_soft_cap: the class applies attn_logit_softcapping (Gemma 2); Gemma 3 classes ignore it.
      defaults: class defaults of config.json fields that may be omitted.
      pattern_period: every P-th layer is global when neither layer_types nor sliding_window_pattern is given.
    """

    qk_norm: bool = False
    rope_per_layer_type: bool = False
    attn_soft_cap: bool = True
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pattern_period: int = 2


GEMMA2_STYLE = StackStyle()
GEMMA3_STYLE = StackStyle(
    qk_norm=True, rope_per_layer_type=True, attn_soft_cap=False, defaults=GEMMA3_TEXT_DEFAULTS, pattern_period=6
)


def _field(hf: Mapping[str, Any], key: str, source: str, default: Any = KeyError) -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is KeyError:
        raise CheckpointError(f"{source}: missing field {key!r}.")
    return default


def _int_if_integral(x: float) -> Any:
    """HF config classes type some scalars as int (query_pre_attn_scalar) and validate strictly."""
    return int(x) if float(x).is_integer() else float(x)


def pattern_from_layer_types(layer_types: list[str], source: str) -> tuple[AttentionKind, ...]:
    """The shortest repeating pattern of HF `layer_types`."""
    unknown = sorted(set(layer_types) - set(_KIND_BY_NAME))
    if unknown:
        raise CheckpointError(f"{source}: layer_types has unknown kinds {unknown}; expected {sorted(_KIND_BY_NAME)}.")
    kinds = [_KIND_BY_NAME[t] for t in layer_types]
    for period in range(1, len(kinds) + 1):
        if all(kinds[i] == kinds[i % period] for i in range(len(kinds))):
            return tuple(kinds[:period])
    raise AssertionError("unreachable")


def _rope_per_layer_type(hf: Mapping[str, Any], source: str) -> dict:
    """rope_base_local / rope_base_global / rope_scale_global of a Gemma 3 style config.json."""
    rope = dict(hf.get("rope_parameters") or {})
    if rope and not ({LOCAL_NAME, GLOBAL_NAME} & set(rope)):
        raise CheckpointError(
            f"{source}: rope_parameters {rope} is not per layer type; Gemma 3 style configs give "
            f"{{{LOCAL_NAME!r}: {{...}}, {GLOBAL_NAME!r}: {{...}}}}."
        )
    full = dict(rope.get(GLOBAL_NAME) or {"rope_type": "default"})
    sliding = dict(rope.get(LOCAL_NAME) or {"rope_type": "default"})
    if hf.get("rope_scaling"):
        full.update(hf["rope_scaling"])
    full.setdefault("rope_theta", hf.get("rope_theta"))
    sliding.setdefault("rope_theta", hf.get("rope_local_base_freq"))
    if full.get("rope_theta") is None:
        full["rope_theta"] = GEMMA3_TEXT_DEFAULTS["rope_theta"]
    if sliding.get("rope_theta") is None:
        sliding["rope_theta"] = GEMMA3_TEXT_DEFAULTS["rope_local_base_freq"]
    sliding_type = sliding.get("rope_type", sliding.get("type", "default"))
    if sliding_type != "default":
        raise CheckpointError(
            f"{source}: rope_parameters.{LOCAL_NAME}.rope_type {sliding_type!r} is not supported; sliding layers "
            f"use plain RoPE (only full-attention layers may use 'linear' scaling)."
        )
    full_type = full.get("rope_type", full.get("type", "default"))
    if full_type == "default":
        scale = 1.0
    elif full_type == "linear":
        scale = float(_field(full, "factor", f"{source} (rope_parameters.{GLOBAL_NAME})"))
    else:
        raise CheckpointError(
            f"{source}: rope_parameters.{GLOBAL_NAME}.rope_type {full_type!r} is not supported; expected 'default' "
            f"or 'linear' (Gemma 3)."
        )
    return dict(rope_base_local=float(sliding["rope_theta"]), rope_base_global=float(full["rope_theta"]),
                rope_scale_global=scale)


def _rope_single(hf: Mapping[str, Any], source: str) -> dict:
    """One RoPE base for every layer (Gemma 2 style)."""
    rope = hf.get("rope_parameters") or {}
    if {LOCAL_NAME, GLOBAL_NAME} & set(rope):
        raise CheckpointError(f"{source}: rope_parameters per layer type are not supported by this (Gemma 2 style) class.")
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise CheckpointError(f"{source}: RoPE scaling {rope.get('rope_type') or hf.get('rope_scaling')!r} is not supported.")
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    return dict(rope_base_local=theta, rope_base_global=theta)


def stack_config_from_hf(
    hf: Mapping[str, Any], source: str, style: StackStyle = GEMMA2_STYLE, **overrides
) -> TransformerConfig:
    """One Gemma stack's `TransformerConfig` from its config.json fields (see the module docstring)."""
    hf = {**style.defaults, **hf}
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or GELU_TANH[0]
    if activation not in GELU_TANH:
        raise CheckpointError(f"{source}: hidden_activation {activation!r} is not supported; Gemma uses {GELU_TANH[0]!r}.")
    if hf.get("attention_bias"):
        raise CheckpointError(f"{source}: attention_bias=true is not supported (Gemma has no biases).")
    if hf.get("use_bidirectional_attention"):
        raise CheckpointError(
            f"{source}: use_bidirectional_attention=true (an embedding model) is not supported; expected a causal LM."
        )
    rope = _rope_per_layer_type(hf, source) if style.rope_per_layer_type else _rope_single(hf, source)
    attn_cap = hf.get("attn_logit_softcapping")
    if attn_cap is not None and not style.attn_soft_cap:
        log.warning("%s: attn_logit_softcapping=%s is ignored, as transformers' Gemma 3 classes ignore it.", source, attn_cap)
        attn_cap = None
    layers = int(_field(hf, "num_hidden_layers", source))
    heads = int(_field(hf, "num_attention_heads", source))
    hidden = int(_field(hf, "hidden_size", source))
    head_dim = int(_field(hf, "head_dim", source, hidden // heads))
    period = int(hf.get("sliding_window_pattern") or style.pattern_period)
    layer_types = hf.get("layer_types") or [LOCAL_NAME if (i + 1) % period else GLOBAL_NAME for i in range(layers)]
    if len(layer_types) != layers:
        raise CheckpointError(f"{source}: layer_types lists {len(layer_types)} layers, num_hidden_layers is {layers}.")
    fields = dict(
        vocab_size=int(_field(hf, "vocab_size", source)),
        num_layers=layers,
        embed_dim=hidden,
        hidden_dim=int(_field(hf, "intermediate_size", source)),
        num_heads=heads,
        num_kv_heads=int(_field(hf, "num_key_value_heads", source, heads)),
        head_dim=head_dim,
        query_pre_attn_scalar=_field(hf, "query_pre_attn_scalar", source, head_dim),
        attn_logits_soft_cap=attn_cap,
        final_logit_soft_cap=hf.get("final_logit_softcapping"),
        sliding_window=hf.get("sliding_window"),
        attention_pattern=pattern_from_layer_types(list(layer_types), source),
        use_qk_norm=style.qk_norm,
        norm_eps=float(_field(hf, "rms_norm_eps", source, 1e-6)),
        **rope,
    )
    fields.update(overrides)
    try:
        return TransformerConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _rope_to_hf(cfg: TransformerConfig, style: StackStyle) -> dict:
    if not style.rope_per_layer_type:
        return {"rope_type": "default", "rope_theta": cfg.rope_base_global}
    full = {"rope_type": "default", "rope_theta": cfg.rope_base_global}
    if cfg.rope_scale_global != 1.0:
        full.update(rope_type="linear", factor=cfg.rope_scale_global)
    return {LOCAL_NAME: {"rope_type": "default", "rope_theta": cfg.rope_base_local}, GLOBAL_NAME: full}


def stack_config_to_hf(cfg: TransformerConfig, what: str, style: StackStyle = GEMMA2_STYLE) -> dict:
    """config.json fields of one Gemma stack; a CheckpointError for what the HF class (`style`) cannot express."""
    problems = []
    if not style.rope_per_layer_type and (cfg.rope_base_local != cfg.rope_base_global or cfg.rope_scale_global != 1.0):
        problems.append("different local/global RoPE bases or a global RoPE scale")
    if cfg.use_qk_norm != style.qk_norm:
        problems.append("QK-norm" if cfg.use_qk_norm else "no QK-norm (its attention always norms queries and keys)")
    if cfg.attn_logits_soft_cap is not None and not style.attn_soft_cap:
        problems.append(f"an attention-logit soft-cap ({cfg.attn_logits_soft_cap}; the class ignores it)")
    if not (cfg.use_post_attn_norm and cfg.use_post_ffw_norm):
        problems.append("no post-attention/post-FFN norms")
    if cfg.merged_attention:
        problems.append("merged attention")
    if problems:
        raise CheckpointError(f"{what} cannot express this config: {', '.join(problems)}.")
    kinds = cfg.layer_kinds if cfg.sliding_window is not None else (AttentionKind.GLOBAL,) * cfg.num_layers
    return {
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.num_layers,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "query_pre_attn_scalar": _int_if_integral(cfg.query_pre_attn_scalar or cfg.head_dim),
        "attn_logit_softcapping": cfg.attn_logits_soft_cap,
        "final_logit_softcapping": cfg.final_logit_soft_cap,
        "sliding_window": cfg.sliding_window if cfg.sliding_window is not None else 4096,
        "layer_types": [_NAME_BY_KIND[k] for k in kinds],
        "rope_parameters": _rope_to_hf(cfg, style),
        "rms_norm_eps": cfg.norm_eps,
        "hidden_activation": GELU_TANH[0],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "max_position_embeddings": 8192 if not style.rope_per_layer_type else 131_072,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "use_cache": True,
        **SPECIAL_IDS,
    }


def read_params(
    reader: SafetensorsReader,
    entries: list[Entry],
    *,
    tied: Optional[Mapping[str, str]] = None,
    source: str = "config.json",
    stacks: Optional[Mapping[str, tuple[str, int]]] = None,
    skip: Optional[Mapping[str, str]] = None,
) -> dict:
    """Reads every entry's tensor (shape-checked) into our nested per-layer tree.

    `tied` maps optional extra tensors to the tensor they must equal (an output head stored
    beside the embedding it is tied to). `stacks` ({our stack: (their layer prefix with `{i}`,
    the config's layer count)}) checks the checkpoint's layer count first, naming both numbers.
    `skip` ({tensor-name prefix: what it is}) names tensors left out on purpose (a vision tower);
    a warning says how many were skipped. Any other tensor that no entry names is an error.
    """
    names = set(reader.names())
    counts = layer_counts(names, stacks or {})
    for stack, (template, expected) in (stacks or {}).items():
        if counts[stack] < expected:
            raise CheckpointError(_layer_count_message(source, reader.path, stack, template, expected, counts[stack]))
    flat = {}
    for e in entries:
        if e.theirs not in names:
            raise CheckpointError(
                f"checkpoint {reader.path!r} has no tensor {e.theirs!r} (shape {e.their_shape}, needed for "
                f"{e.ours}); {source} and the weights disagree, or the checkpoint is incomplete."
            )
        x = reader.get(e.theirs, e.their_shape, source)
        flat[e.ours] = np.ascontiguousarray(e.hook.to_ours(x, e.our_shape))
    used = {e.theirs for e in entries}
    for extra, same_as in (tied or {}).items():
        if extra in names:
            if not np.array_equal(reader.get(extra), reader.get(same_as)):
                raise CheckpointError(
                    f"tensor {extra!r} in {reader.path!r} differs from {same_as!r}: an untied output head is not "
                    f"supported (the model ties the head to the embedding)."
                )
            used.add(extra)
    for prefix, what in (skip or {}).items():
        skipped = sorted(n for n in names - used if n.startswith(prefix))
        if skipped:
            log.warning("%s: skipping %d tensors of the %s (%s*): text model only.", reader.path, len(skipped), what, prefix)
            used.update(skipped)
    unknown = sorted(names - used)
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        layers = "".join(
            " " + _layer_count_message(source, reader.path, stack, template, expected, counts[stack])
            for stack, (template, expected) in (stacks or {}).items() if counts[stack] != expected
        )
        raise CheckpointError(
            f"checkpoint {reader.path!r} has tensors that {source} does not account for: {unknown[:5]}{more}; "
            f"the config and the weights disagree (e.g. num_hidden_layers) or the tensors are unknown.{layers}"
        )
    return unflatten(flat)


def layer_counts(names, stacks: Mapping[str, tuple[str, int]]) -> dict[str, int]:
    """{stack: 1 + the largest layer index among tensor `names` under its prefix template} (0: none)."""
    out = {}
    for stack, (template, _) in stacks.items():
        pattern = re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)"))
        found = [int(m[1]) for n in names if (m := pattern.match(n))]
        out[stack] = 1 + max(found) if found else 0
    return out


def _layer_count_message(source: str, path: str, stack: str, template: str, expected: int, found: int) -> str:
    first, last = template.format(i=0).rstrip("."), template.format(i=found - 1).rstrip(".")
    where = f"{first} to {last}" if found else f"no {template.format(i='N')}*"
    return (
        f"{source}: the config describes {expected} {stack} layers (num_hidden_layers / layer_types) but checkpoint "
        f"{path!r} holds {found} ({where}); fix num_hidden_layers and layer_types, or use the matching weights."
    )


def stacks_of(names: NameMap, config_layers: Mapping[str, int]) -> dict[str, tuple[str, int]]:
    """The `stacks` argument of `read_params`: {our stack: (their layer prefix, layer count)}."""
    return {stack: (template, config_layers[stack]) for stack, template in names.stacks.items() if stack in config_layers}


def check_params(params: Mapping[str, Any], entries: list[Entry], what: str = "params") -> dict[str, np.ndarray]:
    """Flat params, checked against the entries: every name present, no extra, shapes equal."""
    flat = flatten(params)
    check_shapes({e.ours: e.our_shape for e in entries}, flat, what)
    return flat


def hf_tensors(entries: list[Entry], flat: Mapping[str, Any], dtype: Optional[Any] = None):
    """Yields (HF name, array) for each entry, converted to the HF layout and cast to `dtype`."""
    target = None if dtype is None else dtype_of(dtype)
    for e in entries:
        x = np.asarray(flat[e.ours])
        if target is not None:
            x = x.astype(target)
        yield e.theirs, e.hook.to_theirs(x)


def dtype_name(params: Mapping[str, Any], dtype: Optional[Any]) -> str:
    """The dtype name written to config.json: `dtype` if given, else that of the first leaf."""
    if dtype is not None:
        return dtype_of(dtype).name
    first = next(iter(flatten(params).values()))
    return np.asarray(first).dtype.name


def params_dtype(params: Mapping[str, Any]) -> str:
    """The common dtype name of the floating params ('float32' when mixed)."""
    names = {np.asarray(x).dtype.name for x in flatten(params).values()}
    return names.pop() if len(names) == 1 else "float32"


__all__ = [
    "GEMMA2_STYLE",
    "GEMMA3_STYLE",
    "StackStyle",
    "check_params",
    "hf_tensors",
    "pattern_from_layer_types",
    "read_params",
    "stack_config_from_hf",
    "stack_config_to_hf",
]

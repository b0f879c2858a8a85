"""What every Hugging Face family shares: config.json fields of one Gemma stack, and the generic
import (tensor by tensor, checked against the shapes our model expects) and export (streamed).

A Gemma stack's config.json fields (`Gemma2Config`, `T5GemmaModuleConfig`, and the text part of
later Gemma configs) map to `TransformerConfig` as:
  vocab_size, num_hidden_layers -> num_layers, hidden_size -> embed_dim,
  intermediate_size -> hidden_dim, num_attention_heads -> num_heads,
  num_key_value_heads -> num_kv_heads, head_dim, query_pre_attn_scalar,
  attn_logit_softcapping -> attn_logits_soft_cap, final_logit_softcapping -> final_logit_soft_cap,
  sliding_window, layer_types ("sliding_attention"/"full_attention") -> attention_pattern (the
  shortest period that repeats them), rope_parameters.rope_theta (or rope_theta) -> both RoPE
  bases, rms_norm_eps -> norm_eps.
Fields our block cannot express (another activation, attention biases, a RoPE scaling type) are
rejected with the field's name.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from adaptation.checkpoints.common import (
    CheckpointError,
    Entry,
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


def stack_config_from_hf(hf: Mapping[str, Any], source: str, **overrides) -> TransformerConfig:
    """One Gemma stack's `TransformerConfig` from its config.json fields (see the module docstring)."""
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or GELU_TANH[0]
    if activation not in GELU_TANH:
        raise CheckpointError(f"{source}: hidden_activation {activation!r} is not supported; Gemma uses {GELU_TANH[0]!r}.")
    if hf.get("attention_bias"):
        raise CheckpointError(f"{source}: attention_bias=true is not supported (Gemma has no biases).")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise CheckpointError(f"{source}: RoPE scaling {rope.get('rope_type') or hf.get('rope_scaling')!r} is not supported.")
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    layers = int(_field(hf, "num_hidden_layers", source))
    heads = int(_field(hf, "num_attention_heads", source))
    hidden = int(_field(hf, "hidden_size", source))
    head_dim = int(_field(hf, "head_dim", source, hidden // heads))
    layer_types = hf.get("layer_types") or [LOCAL_NAME if i % 2 == 0 else GLOBAL_NAME for i in range(layers)]
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
        attn_logits_soft_cap=hf.get("attn_logit_softcapping"),
        final_logit_soft_cap=hf.get("final_logit_softcapping"),
        sliding_window=hf.get("sliding_window"),
        attention_pattern=pattern_from_layer_types(list(layer_types), source),
        rope_base_local=theta,
        rope_base_global=theta,
        norm_eps=float(_field(hf, "rms_norm_eps", source, 1e-6)),
    )
    fields.update(overrides)
    try:
        return TransformerConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def stack_config_to_hf(cfg: TransformerConfig, what: str) -> dict:
    """config.json fields of one Gemma stack; a CheckpointError for what the HF classes cannot express."""
    problems = []
    if cfg.rope_base_local != cfg.rope_base_global or cfg.rope_scale_global != 1.0:
        problems.append("different local/global RoPE bases or a global RoPE scale")
    if cfg.use_qk_norm:
        problems.append("QK-norm")
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
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base_global},
        "rms_norm_eps": cfg.norm_eps,
        "hidden_activation": GELU_TANH[0],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "max_position_embeddings": 8192,
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
) -> dict:
    """Reads every entry's tensor (shape-checked) into our nested per-layer tree.

    `tied` maps optional extra tensors to the tensor they must equal (an output head stored
    beside the embedding it is tied to). Tensors that no entry names are an error listing them.
    """
    names = set(reader.names())
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
    unknown = sorted(names - used)
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CheckpointError(
            f"checkpoint {reader.path!r} has tensors that {source} does not account for: {unknown[:5]}{more}; "
            f"the config and the weights disagree (e.g. num_hidden_layers) or the tensors are unknown."
        )
    return unflatten(flat)


def check_params(params: Mapping[str, Any], entries: list[Entry], what: str = "params") -> dict[str, np.ndarray]:
    """Flat params, checked against the entries: every name present, no extra, shapes equal."""
    flat = flatten(params)
    expected = {e.ours: e.our_shape for e in entries}
    missing = [k for k in expected if k not in flat]
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{what} do not match the config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}."
        )
    for name, shape in expected.items():
        found = tuple(np.shape(flat[name]))
        if found != shape:
            raise CheckpointError(f"{what}: parameter {name!r} has shape {found}, the config expects {shape}.")
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
    "check_params",
    "hf_tensors",
    "pattern_from_layer_types",
    "read_params",
    "stack_config_from_hf",
    "stack_config_to_hf",
]

"""Import of official Gemma Flax/Orbax checkpoints (google-deepmind/gemma) into our `DecoderOnlyLM` params.

The official checkpoints are orbax PyTree checkpoints in one of these structures (gemma
`gm/ckpts/_checkpoint.py`), all read here:
  FLAT (the released Gemma 2/3 files): top-level keys `transformer/embedder` -> {input_embedding},
      `transformer/layer_N/attn/q_einsum` -> {w}, `transformer/layer_N/mlp/gating_einsum` -> {w}, ...,
      `transformer/final_norm` -> {scale};
  NESTED (Flax `model.init()['params']`): {embedder: {input_embedding}, layer_N: {attn: {q_einsum: {w}},
      mlp: {gating_einsum, linear}, ...}, final_norm: {scale}}, optionally under `transformer` or
      `params` (Kauldron train states);
  STACKED: `transformer/stacked_layers/attention_type_P/...` with a leading axis; layer = slice *
      pattern length + P.
All are normalized to canonical names `layer_N/<module>/<param>` (the `w` of mlp einsums dropped).

Per layer (gemma `gm/nn/_modules.py`; N heads, K kv heads, D width, H head width, F FFN width):
  attn/q_einsum/w (N, D, H)          -> attn/q (D, N, H)
  attn/kv_einsum/w (2, K, D, H)      -> attn/k, attn/v (D, K, H)
  attn/qkv_einsum/w (3, N, D, H)     -> attn/q, k, v (when K == N)
  attn/attn_vec_einsum/w (N, H, D)   -> attn/o
  attn/_query_norm, _key_norm/scale  -> attn/query_norm, key_norm/scale (Gemma 3)
  mlp/gating_einsum (2, F, D) [transpose_gating_einsum: Gemma 2 9B/27B, Gemma 3] or (2, D, F)
      [Gemma 2 2B] -> mlp/gate (index 0), mlp/up (index 1); which one is read from the shapes
      (ambiguous only when F == D: pass `transpose_gating`)
  mlp/linear (F, D)                  -> mlp/down
  pre_attention_norm, post_attention_norm, pre_ffw_norm, post_ffw_norm/scale: same names.
The embedding table keeps all its rows: official checkpoints pad the vocabulary to 256 128 rows
(the HF ones have 256 000); `vocab_size` becomes the row count and a log line says so.

Shapes give every size; the sliding window, soft-caps, pattern and RoPE bases come from a preset
(`config="gemma2_2b"`), an explicit `TransformerConfig`, or, when neither is given, the preset
whose sizes match the checkpoint (else Gemma 2 defaults, or Gemma 3 defaults when QK-norm
scales are present), with a log line naming the choice.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from adaptation.checkpoints.common import CheckpointError, require_dir, unflatten
from adaptation.checkpoints.native import restore_tree, tree_metadata
from adaptation.models.config import TransformerConfig
from adaptation.models.presets import DECODER_ONLY, decoder_only

log = logging.getLogger(__name__)

ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")
SHAPE_FIELDS = ("num_layers", "embed_dim", "hidden_dim", "num_heads", "num_kv_heads", "head_dim", "use_qk_norm")
_LAYER = re.compile(r"^layer_(\d+)/(.+)$")
_STACKED = re.compile(r"^stacked_layers/attention_type_(\d+)/(.+)$")


def _t(w):
    return w.transpose(1, 0, 2)


# Canonical name inside a layer -> [(our block path, extractor(w, transpose_gating))].
Extract = Callable[[np.ndarray, bool], np.ndarray]
OFFICIAL_BLOCK: dict[str, list[tuple[str, Extract]]] = {
    "attn/q_einsum/w": [("attn/q", lambda w, tg: _t(w))],
    "attn/kv_einsum/w": [("attn/k", lambda w, tg: _t(w[0])), ("attn/v", lambda w, tg: _t(w[1]))],
    "attn/qkv_einsum/w": [
        ("attn/q", lambda w, tg: _t(w[0])),
        ("attn/k", lambda w, tg: _t(w[1])),
        ("attn/v", lambda w, tg: _t(w[2])),
    ],
    "attn/attn_vec_einsum/w": [("attn/o", lambda w, tg: w)],
    "attn/_query_norm/scale": [("attn/query_norm/scale", lambda w, tg: w)],
    "attn/_key_norm/scale": [("attn/key_norm/scale", lambda w, tg: w)],
    "mlp/gating_einsum": [
        ("mlp/gate", lambda w, tg: w[0].T if tg else w[0]),
        ("mlp/up", lambda w, tg: w[1].T if tg else w[1]),
    ],
    "mlp/linear": [("mlp/down", lambda w, tg: w)],
    "pre_attention_norm/scale": [("pre_attention_norm/scale", lambda w, tg: w)],
    "post_attention_norm/scale": [("post_attention_norm/scale", lambda w, tg: w)],
    "pre_ffw_norm/scale": [("pre_ffw_norm/scale", lambda w, tg: w)],
    "post_ffw_norm/scale": [("post_ffw_norm/scale", lambda w, tg: w)],
}
OFFICIAL_TOP = {
    "embedder/input_embedding": "embedder/embedding",
    "final_norm/scale": "decoder/final_norm/scale",
}
_MULTIMODAL = ("vision_encoder/", "embedder/mm_", "audio_encoder/", "embedder/audio_")


def is_orbax_directory(path: Union[str, os.PathLike]) -> bool:
    """True when the directory looks like an orbax checkpoint."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in ORBAX_MARKERS)


def _flatten_keys(tree: Mapping[str, Any], prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten_keys(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def canonical_names(tree: Mapping[str, Any]) -> dict[str, tuple[tuple, Optional[int]]]:
    """Canonical name -> (key path in the stored tree, slice index for stacked layouts or None).

    Works on a metadata tree or on a restored tree (only the keys are read).
    """
    if set(tree) == {"params"} or {"params", "step", "opt_state"} <= set(tree):
        return {k: ((("params",) + p), s) for k, (p, s) in canonical_names(tree["params"]).items()}
    flat = _flatten_keys(tree)
    joined = {"/".join(str(part) for part in path): path for path in flat}
    prefix = "transformer/"
    if joined and all(name.startswith(prefix) for name in joined):
        joined = {name[len(prefix):]: path for name, path in joined.items()}
    stacked = {name: path for name, path in joined.items() if _STACKED.match(name)}
    period = 1 + max((int(_STACKED.match(n)[1]) for n in stacked), default=-1)
    out: dict[str, tuple[tuple, Optional[int]]] = {}
    for name, path in joined.items():
        name = re.sub(r"(mlp/(?:gating_einsum|linear))/w$", r"\1", name)
        match = _STACKED.match(name)
        if match:
            slices = tuple(flat[path].shape)[0]
            for s in range(slices):
                out[f"layer_{s * period + int(match[1])}/{match[2]}"] = (path, s)
        else:
            out[name] = (path, None)
    return out


def _shape(meta_leaf: Any, index: Optional[int]) -> tuple[int, ...]:
    shape = tuple(meta_leaf.shape)
    return shape[1:] if index is not None else shape


def _find_transpose(gating: tuple, hidden: int, embed: int, given: Optional[bool], where: str) -> bool:
    if given is not None:
        expected = (2, hidden, embed) if given else (2, embed, hidden)
        if gating != expected:
            raise CheckpointError(f"{where}: gating_einsum has shape {gating}, expected {expected} with transpose_gating={given}.")
        return given
    if hidden == embed:
        raise CheckpointError(
            f"{where}: gating_einsum {gating} is square (ffn == d_model), so its orientation cannot be read from the "
            f"shapes; pass transpose_gating=True (Gemma 2 9B/27B, Gemma 3) or False (Gemma 2 2B)."
        )
    if gating == (2, hidden, embed):
        return True
    if gating == (2, embed, hidden):
        return False
    raise CheckpointError(f"{where}: gating_einsum has shape {gating}; expected (2, {hidden}, {embed}) or (2, {embed}, {hidden}).")


def infer_sizes(names: Mapping[str, tuple], meta_flat: Mapping[tuple, Any], where: str) -> dict:
    """Sizes that the shapes fix: vocab, layers, widths, heads, QK-norm, post norms."""

    def shape(name):
        if name not in names:
            raise CheckpointError(f"{where}: official Gemma checkpoint lacks {name!r}.")
        path, index = names[name]
        return _shape(meta_flat[path], index)

    vocab, embed = shape("embedder/input_embedding")
    layers = sorted({int(m[1]) for n in names if (m := _LAYER.match(n))})
    if layers != list(range(len(layers))) or not layers:
        raise CheckpointError(f"{where}: layers are not numbered 0..L-1 (found {layers[:5]}...).")
    if "layer_0/attn/qkv_einsum/w" in names:
        _, heads, _, head_dim = shape("layer_0/attn/qkv_einsum/w")
        kv_heads = heads
    else:
        heads, _, head_dim = shape("layer_0/attn/q_einsum/w")
        kv_heads = shape("layer_0/attn/kv_einsum/w")[1]
    hidden = shape("layer_0/mlp/linear")[0]
    return dict(
        vocab_size=vocab,
        num_layers=len(layers),
        embed_dim=embed,
        hidden_dim=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        use_qk_norm="layer_0/attn/_query_norm/scale" in names,
        use_post_attn_norm="layer_0/post_attention_norm/scale" in names,
        use_post_ffw_norm="layer_0/post_ffw_norm/scale" in names,
    )


def _config_for(sizes: dict, config: Union[None, str, TransformerConfig], where: str) -> TransformerConfig:
    if isinstance(config, str):
        config = decoder_only(config)
    if config is None:
        matches = [
            name for name, make in DECODER_ONLY.items()
            if all(getattr(make(), f) == sizes[f] for f in SHAPE_FIELDS)
        ]
        base_name = matches[0] if matches else ("gemma3_1b" if sizes["use_qk_norm"] else "gemma2_2b")
        config = decoder_only(base_name)
        if matches:
            log.warning("%s: sizes match preset %r; window, soft-caps and RoPE bases taken from it.", where, base_name)
        else:
            log.warning(
                "%s: no preset matches the sizes; window, soft-caps and RoPE bases default to %r's "
                "(pass config= to set them).", where, base_name,
            )
            config = config.replace(
                **{f: sizes[f] for f in SHAPE_FIELDS}, vocab_size=sizes["vocab_size"], query_pre_attn_scalar=sizes["head_dim"]
            )
    wrong = [
        f"{f}: config {getattr(config, f)}, checkpoint {sizes[f]}"
        for f in SHAPE_FIELDS + ("use_post_attn_norm", "use_post_ffw_norm")
        if getattr(config, f) != sizes[f]
    ]
    if wrong:
        raise CheckpointError(f"{where}: the config contradicts the weights ({'; '.join(wrong)}).")
    if config.vocab_size != sizes["vocab_size"]:
        log.warning(
            "%s: the embedding has %d rows (config vocab_size %d); keeping all rows, vocab_size=%d "
            "(official checkpoints pad the vocabulary).", where, sizes["vocab_size"], config.vocab_size, sizes["vocab_size"],
        )
    return config.replace(vocab_size=sizes["vocab_size"], causal=True, cross_attention=False, merged_attention=False,
                          cross_kv_dim=None)


def _select(meta: Mapping[str, Any], paths: list[tuple]) -> dict:
    out: dict = {}
    for path in paths:
        node, src = out, meta
        for key in path[:-1]:
            node, src = node.setdefault(key, {}), src[key]
        node[path[-1]] = src[path[-1]]
    return out


def _get(tree: Mapping[str, Any], path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _inspect(path: str, config, transpose_gating: Optional[bool]):
    """Metadata, canonical names, config and gating orientation of a checkpoint (no tensor read)."""
    meta = tree_metadata(path)
    names = canonical_names(meta)
    skipped = sorted(n for n in names if n.startswith(_MULTIMODAL))
    if skipped:
        log.warning("%s: skipping %d multimodal tensors (text model only), e.g. %s.", path, len(skipped), skipped[0])
        names = {n: v for n, v in names.items() if n not in skipped}
    meta_flat = _flatten_keys(meta)
    sizes = infer_sizes(names, meta_flat, path)
    config = _config_for(sizes, config, path)
    if "layer_0/mlp/gating_einsum" not in names:
        raise CheckpointError(f"{path}: official Gemma checkpoint lacks 'layer_0/mlp/gating_einsum'.")
    stored, index = names["layer_0/mlp/gating_einsum"]
    transposed = _find_transpose(_shape(meta_flat[stored], index), sizes["hidden_dim"], sizes["embed_dim"],
                                 transpose_gating, path)
    return meta, names, config, transposed


def read_gemma_flax_config(
    path: Union[str, os.PathLike],
    config: Union[None, str, TransformerConfig] = None,
    *,
    transpose_gating: Optional[bool] = None,
) -> TransformerConfig:
    """The config `import_gemma_flax` would return, from the metadata alone."""
    return _inspect(os.path.abspath(require_dir(path)), config, transpose_gating)[2]


def import_gemma_flax(
    path: Union[str, os.PathLike],
    config: Union[None, str, TransformerConfig] = None,
    *,
    transpose_gating: Optional[bool] = None,
) -> tuple[TransformerConfig, dict]:
    """(TransformerConfig, numpy per-layer params) of an official Gemma Flax/Orbax checkpoint.

    Args:
      path: the orbax checkpoint directory.
      config: a preset name, a `TransformerConfig`, or None (see the module docstring).
      transpose_gating: orientation of `mlp/gating_einsum`; None reads it from the shapes.

    Reads one layer at a time (orbax partial restore), in the stored dtype.
    """
    path = os.path.abspath(require_dir(path))
    meta, names, config, transposed = _inspect(path, config, transpose_gating)

    groups: dict[str, list[str]] = {"top": []}
    for name in names:
        match = _LAYER.match(name)
        if match:
            if match[2] not in OFFICIAL_BLOCK:
                raise CheckpointError(f"{path}: unknown tensor {name!r} in layer {match[1]}.")
            groups.setdefault(match[1], []).append(name)
        elif name in OFFICIAL_TOP:
            groups["top"].append(name)
        else:
            raise CheckpointError(f"{path}: unknown tensor {name!r}.")

    flat: dict[str, np.ndarray] = {}
    for group, members in groups.items():
        restored = restore_tree(path, _select(meta, sorted({names[n][0] for n in members})))
        for name in members:
            stored_path, index = names[name]
            w = np.asarray(_get(restored, stored_path))
            w = w[index] if index is not None else w
            if group == "top":
                flat[OFFICIAL_TOP[name]] = w
                continue
            rest = _LAYER.match(name)[2]
            for ours, extract in OFFICIAL_BLOCK[rest]:
                flat[f"decoder/layers_{group}/{ours}"] = np.ascontiguousarray(extract(w, transposed))
        del restored

    from adaptation.checkpoints.native import check_native_params

    params = unflatten(flat)
    check_native_params(params, config.replace(scan_layers=False), path)
    dtypes = {a.dtype.name for a in flat.values()}
    return config.replace(param_dtype=dtypes.pop() if len(dtypes) == 1 else "float32"), params

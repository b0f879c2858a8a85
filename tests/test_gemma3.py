"""Gemma 3 checkpoints: HF Gemma3ForCausalLM import/export parity, the multimodal directory (text weights,
vision tower skipped), the official Flax layout with QK-norm scales, and bad input."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from hf_oracle import copy_hf_dir, jit_apply, lm_logits, max_diff, randomize
from safetensors.numpy import load_file, save_file

from adaptation import load_checkpoint
from adaptation.checkpoints.common import CheckpointError, flatten
from adaptation.checkpoints.hf_gemma import export_gemma3, import_gemma3
from adaptation.checkpoints.native import save_tree
from adaptation.models import DecoderOnlyLM
from adaptation.models.config import AttentionKind

VOCAB = 96
WINDOW = 3
# Right-padded batch, longer than the sliding window.
TOKENS = np.array([[5, 17, 9, 33, 2, 71, 8, 40, 12, 3, 60], [4, 9, 33, 2, 7, 88, 0, 0, 0, 0, 0]], np.int32)
TEXT = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=7, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
    },
)
_L, _G = AttentionKind.LOCAL, AttentionKind.GLOBAL


def _max_diff(a, b, tokens=TOKENS) -> float:
    return max_diff(a, b, tokens, VOCAB)


@pytest.fixture(scope="module")
def hf_gemma3(tmp_path_factory):
    """A tiny Gemma3ForCausalLM: 7 layers (5 local, 1 global, 1 local), window 3, GQA, linear RoPE x8 on global."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**TEXT, attn_implementation="eager")).eval()
    randomize(model, 0)
    path = tmp_path_factory.mktemp("hf") / "gemma3"
    model.save_pretrained(path)
    return str(path), model, lm_logits(model, TOKENS)


def test_gemma3_load_checkpoint_parity(hf_gemma3):
    path, _, ref = hf_gemma3
    model, params = load_checkpoint(path)
    assert isinstance(model, DecoderOnlyLM)
    cfg = model.config
    assert cfg.use_qk_norm and cfg.attention_pattern == (_L, _L, _L, _L, _L, _G)
    assert (cfg.rope_base_local, cfg.rope_base_global, cfg.rope_scale_global) == (10_000.0, 1_000_000.0, 8.0)
    assert (cfg.sliding_window, cfg.attn_logits_soft_cap, cfg.final_logit_soft_cap) == (WINDOW, None, None)
    logits = jit_apply(model, params, TOKENS)
    diff = _max_diff(logits, ref)
    print(f"Gemma3ForCausalLM import parity (7 layers 5:1, window 3 < 11 tokens, right-padded, RoPE x8): "
          f"max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    # The global layer's RoPE scale and the QK-norm scales matter: changing either moves the logits.
    unscaled = jit_apply(DecoderOnlyLM(cfg.replace(rope_scale_global=1.0)), params, TOKENS)
    assert _max_diff(unscaled, ref) > 1e-3
    zeroed = flatten(params)
    zeroed = {k: (np.zeros_like(v) if "key_norm" in k else v) for k, v in zeroed.items()}
    from adaptation.checkpoints.common import unflatten

    assert _max_diff(jit_apply(model, unflatten(zeroed), TOKENS), ref) > 1e-3


def test_gemma3_export_reloads_in_transformers(hf_gemma3, tmp_path):
    from transformers import Gemma3ForCausalLM

    path, _, ref = hf_gemma3
    cfg, params = import_gemma3(path)
    out = tmp_path / "exported"
    export_gemma3(out, cfg, params)
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == ["Gemma3ForCausalLM"] and hf["model_type"] == "gemma3_text"
    assert hf["rope_parameters"]["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}
    reloaded = Gemma3ForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    diff = _max_diff(lm_logits(reloaded, TOKENS), ref)
    print(f"Gemma3 export -> transformers reload: max|diff| = {diff:.3g}")
    assert diff <= 1e-5
    cfg2, params2 = import_gemma3(out)
    assert cfg2 == cfg
    for name, value in flatten(params).items():
        np.testing.assert_array_equal(flatten(params2)[name], value, err_msg=name)


def test_gemma3_cli_round_trip(hf_gemma3, tmp_path):
    from adaptation.convert import main

    path, _, ref = hf_gemma3
    orbax_dir, hf_dir = tmp_path / "ours", tmp_path / "hf"
    assert main(["--input", path, "--output", str(orbax_dir), "--to", "orbax"]) == 0
    assert main(["--input", str(orbax_dir), "--output", str(hf_dir), "--to", "hf"]) == 0
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    model, params = load_checkpoint(hf_dir)
    assert _max_diff(jit_apply(model, params, TOKENS), ref) <= 1e-4


@pytest.fixture(scope="module")
def hf_gemma3_multimodal(tmp_path_factory):
    """A tiny Gemma3ForConditionalGeneration (SigLIP tower of one layer) whose text model is randomized."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    torch.manual_seed(1)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=4)
    config = Gemma3Config(text_config=Gemma3TextConfig(**TEXT), vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=90, eoi_token_index=91, image_token_index=92, attn_implementation="eager")
    model = Gemma3ForConditionalGeneration(config).eval()
    randomize(model, 1)
    path = tmp_path_factory.mktemp("hf") / "gemma3_mm"
    model.save_pretrained(path)
    return str(path), lm_logits(model, TOKENS)


def test_gemma3_multimodal_loads_text_weights(hf_gemma3_multimodal, tmp_path, caplog):
    path, ref = hf_gemma3_multimodal
    names = load_file(os.path.join(path, "model.safetensors"))
    # transformers 5.23 writes the released names: `language_model.model.*`, `vision_tower.*`.
    assert any(n.startswith("language_model.model.layers.6.") for n in names)
    assert any(n.startswith("vision_tower.") for n in names)
    with caplog.at_level(logging.WARNING):
        model, params = load_checkpoint(path)
    assert "vision tower" in caplog.text and "skipped" in caplog.text
    diff = _max_diff(jit_apply(model, params, TOKENS), ref)
    print(f"Gemma3ForConditionalGeneration text path parity: max|diff| = {diff:.3g}")
    assert diff <= 1e-4

    # The in-memory names (`model.language_model.*`, head `lm_head.weight`) are read too.
    legacy = tmp_path / "in_memory_names"
    os.makedirs(legacy)
    renamed = {}
    for name, value in names.items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name[len("language_model.model."):]
        else:
            name = "model." + name
        renamed[name] = value
    renamed["lm_head.weight"] = renamed["model.language_model.embed_tokens.weight"]
    save_file(renamed, str(legacy / "model.safetensors"))
    (legacy / "config.json").write_text((open(os.path.join(path, "config.json")).read()))
    model2, params2 = load_checkpoint(legacy)
    assert _max_diff(jit_apply(model2, params2, TOKENS), ref) <= 1e-4


def _official_gemma3_tree(params: dict) -> dict:
    """Our params in the released official Gemma 3 Flax layout (FLAT; gating (2, F, D); QK-norm scales)."""
    dec = params["decoder"]
    tree = {"transformer/embedder": {"input_embedding": params["embedder"]["embedding"]},
            "transformer/final_norm": {"scale": dec["final_norm"]["scale"]}}
    for i in range(len([k for k in dec if k.startswith("layers_")])):
        b, p = dec[f"layers_{i}"], f"transformer/layer_{i}"
        a = b["attn"]
        tree[f"{p}/attn/q_einsum"] = {"w": a["q"].transpose(1, 0, 2)}
        tree[f"{p}/attn/kv_einsum"] = {"w": np.stack([a["k"].transpose(1, 0, 2), a["v"].transpose(1, 0, 2)])}
        tree[f"{p}/attn/attn_vec_einsum"] = {"w": a["o"]}
        tree[f"{p}/attn/_query_norm"] = {"scale": a["query_norm"]["scale"]}
        tree[f"{p}/attn/_key_norm"] = {"scale": a["key_norm"]["scale"]}
        tree[f"{p}/mlp/gating_einsum"] = {"w": np.stack([b["mlp"]["gate"].T, b["mlp"]["up"].T])}
        tree[f"{p}/mlp/linear"] = {"w": b["mlp"]["down"]}
        for n in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"):
            tree[f"{p}/{n}"] = {"scale": b[n]["scale"]}
    return tree


def test_official_gemma3_flax_layout_matches_hf(hf_gemma3, tmp_path):
    path, _, ref = hf_gemma3
    cfg, params = import_gemma3(path)
    out = tmp_path / "official"
    save_tree(out, _official_gemma3_tree(params))
    model, loaded = load_checkpoint(out, config=cfg)
    assert model.config.use_qk_norm
    diff = _max_diff(jit_apply(model, loaded, TOKENS), ref)
    print(f"official Gemma 3 Flax layout (_query_norm/_key_norm) vs HF: max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    # Without a config the sizes (QK-norm included) come from the shapes, the rest from Gemma 3 defaults.
    model2, _ = load_checkpoint(out)
    assert model2.config.use_qk_norm and model2.config.attention_pattern == (_L, _L, _L, _L, _L, _G)
    # A preset whose sizes differ is refused, naming both values.
    with pytest.raises(CheckpointError, match="num_layers: config 7, checkpoint 7|embed_dim: config 1152, checkpoint 32"):
        load_checkpoint(out, config="gemma3_1b")


def test_bad_input_messages(hf_gemma3, tmp_path):
    path, _, _ = hf_gemma3
    six = ["sliding_attention"] * 5 + ["full_attention"]
    # The config describes more layers than the checkpoint holds: both numbers named.
    more = copy_hf_dir(path, tmp_path / "more", config_edit={"num_hidden_layers": 12, "layer_types": six * 2})
    with pytest.raises(CheckpointError, match=r"describes 12 decoder layers .* holds 7 \(model\.layers\.0 to model\.layers\.6\)"):
        load_checkpoint(more)
    # Fewer: the extra layer's tensors are named, and both counts.
    fewer = copy_hf_dir(path, tmp_path / "fewer", config_edit={"num_hidden_layers": 6, "layer_types": six})
    with pytest.raises(CheckpointError, match=r"model\.layers\.6\..*describes 6 decoder layers .* holds 7"):
        load_checkpoint(fewer)
    # A layer pattern whose length differs from the layer count.
    pattern = copy_hf_dir(path, tmp_path / "pattern", config_edit={"layer_types": six})
    with pytest.raises(CheckpointError, match="layer_types lists 6 layers, num_hidden_layers is 7"):
        load_checkpoint(pattern)
    # RoPE types the block cannot express.
    yarn = copy_hf_dir(path, tmp_path / "yarn", config_edit={"rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6}}})
    with pytest.raises(CheckpointError, match="rope_type 'yarn' is not supported"):
        load_checkpoint(yarn)
    # An explicit config with another layer pattern / count than the checkpoint.
    cfg, _ = import_gemma3(path)
    with pytest.raises(CheckpointError, match="contradicts the checkpoint"):
        load_checkpoint(path, config=cfg.replace(num_layers=8))
    # Gemma 2 cannot express QK-norm: the CLI picks Gemma3ForCausalLM, and Gemma 2 export refuses.
    from adaptation.checkpoints.hf_gemma import export_gemma2

    with pytest.raises(CheckpointError, match="Gemma2ForCausalLM cannot express this config: .*QK-norm"):
        export_gemma2(tmp_path / "g2", *import_gemma3(path))


def test_legacy_gemma3_config_fields(hf_gemma3, tmp_path):
    """Older config.json files: rope_theta / rope_local_base_freq / rope_scaling, sliding_window_pattern."""
    path, _, ref = hf_gemma3
    legacy = copy_hf_dir(path, tmp_path / "legacy", config_edit={
        "rope_parameters": None, "layer_types": None, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6})
    model, params = load_checkpoint(legacy)
    assert model.config.attention_pattern == (_L, _L, _L, _L, _L, _G) and model.config.rope_scale_global == 8.0
    assert _max_diff(jit_apply(model, params, TOKENS), ref) <= 1e-4

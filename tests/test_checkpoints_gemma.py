"""Gemma 2 checkpoints: HF import parity, export, shards, the official Flax layout, our format, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_oracle import copy_hf_dir, lm_logits, max_diff, randomize

from adaptation import load_checkpoint
from adaptation.checkpoints.common import CheckpointError, flatten
from adaptation.checkpoints.hf_gemma import export_gemma2, import_gemma2
from adaptation.checkpoints.native import save_model, save_tree, write_model_config
from adaptation.models import DecoderOnlyLM

VOCAB = 96
# Right-padded batch, longer than the sliding window (3).
TOKENS = np.array([[5, 17, 9, 33, 2, 71, 8, 40, 12, 3, 60], [4, 9, 33, 2, 7, 88, 0, 0, 0, 0, 0]], np.int32)


def _max_diff(a, b, tokens=TOKENS) -> float:
    return max_diff(a, b, tokens, VOCAB)


@pytest.fixture(scope="module")
def hf_gemma2(tmp_path_factory):
    """A tiny Gemma2ForCausalLM: GQA (4 q / 2 kv heads), window 3, strong soft-caps; saved to a directory."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
        attn_logit_softcapping=2.0, final_logit_softcapping=1.5, attn_implementation="eager",
    )
    model = Gemma2ForCausalLM(config).eval()
    randomize(model, 0)
    path = tmp_path_factory.mktemp("hf") / "gemma2"
    model.save_pretrained(path)
    return str(path), model, lm_logits(model, TOKENS)


def test_gemma2_load_checkpoint_parity(hf_gemma2):
    path, _, ref = hf_gemma2
    model, params = load_checkpoint(path)
    assert isinstance(model, DecoderOnlyLM)
    cfg = model.config
    assert (cfg.num_kv_heads, cfg.num_heads, cfg.sliding_window) == (2, 4, 3)
    assert (cfg.attn_logits_soft_cap, cfg.final_logit_soft_cap) == (2.0, 1.5)
    logits = model.apply({"params": params}, TOKENS)
    diff = _max_diff(logits, ref)
    print(f"Gemma2 HF import parity (GQA, window 3 < 11 tokens, right-padded, soft-caps): max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    # The soft-caps matter here: final logits sit inside (-1.5, 1.5).
    assert np.abs(ref).max() < 1.5 and np.abs(ref).max() > 0.5


def test_gemma2_scanned_and_dtype(hf_gemma2):
    path, _, ref = hf_gemma2
    cfg, _ = import_gemma2(path)
    model, params = load_checkpoint(path, config=cfg.replace(scan_layers=True))
    assert "layers" in params["decoder"]
    assert _max_diff(model.apply({"params": params}, TOKENS), ref) <= 1e-4
    model, params = load_checkpoint(path, dtype="bfloat16")
    assert params["embedder"]["embedding"].dtype.name == "bfloat16"
    assert model.config.param_dtype == "bfloat16"


def test_gemma2_export_reloads_in_transformers(hf_gemma2, tmp_path):
    from transformers import Gemma2ForCausalLM

    path, _, ref = hf_gemma2
    cfg, params = import_gemma2(path)
    out = tmp_path / "export"
    export_gemma2(out, cfg, params)
    reloaded = Gemma2ForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    diff = _max_diff(lm_logits(reloaded, TOKENS), ref)
    print(f"Gemma2 export -> transformers reload: max|diff| = {diff:.3g}")
    assert diff <= 1e-6


def test_sharded_round_trip_keeps_dtype(hf_gemma2, tmp_path):
    path, _, _ = hf_gemma2
    cfg, params = import_gemma2(path)
    out = tmp_path / "sharded"
    export_gemma2(out, cfg, params, dtype="bfloat16", max_shard_bytes=8_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    cfg2, params2 = import_gemma2(out)
    assert cfg2.replace(param_dtype="float32") == cfg
    flat, flat2 = flatten(params), flatten(params2)
    assert set(flat) == set(flat2)
    for name, value in flat.items():
        assert flat2[name].dtype.name == "bfloat16", name
        np.testing.assert_array_equal(flat2[name], value.astype(flat2[name].dtype), err_msg=name)
    # No temporary directory left next to the output.
    assert sorted(os.listdir(tmp_path)) == ["sharded"]


def _official_tree(params: dict, pad_rows: int, layout: str) -> dict:
    """Our params written in the official Gemma Flax layout (FLAT or NESTED), vocab padded."""
    emb = params["embedder"]["embedding"]
    emb = np.concatenate([emb, np.zeros((pad_rows, emb.shape[1]), emb.dtype)])
    dec = params["decoder"]
    transposed = layout == "flat"  # FLAT: Gemma 2 9B-style (2, F, D); NESTED: 2B-style (2, D, F)
    layers = {}
    for i in range(len([k for k in dec if k.startswith("layers_")])):
        b = dec[f"layers_{i}"]
        a = b["attn"]
        gate, up = b["mlp"]["gate"], b["mlp"]["up"]
        layers[f"layer_{i}"] = {
            "attn": {
                "q_einsum": {"w": a["q"].transpose(1, 0, 2)},
                "kv_einsum": {"w": np.stack([a["k"].transpose(1, 0, 2), a["v"].transpose(1, 0, 2)])},
                "attn_vec_einsum": {"w": a["o"]},
            },
            "mlp": {
                "gating_einsum": np.stack([gate.T, up.T]) if transposed else np.stack([gate, up]),
                "linear": b["mlp"]["down"],
            },
            **{n: {"scale": b[n]["scale"]} for n in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm",
                                                      "post_ffw_norm")},
        }
    nested = {"embedder": {"input_embedding": emb}, **layers, "final_norm": {"scale": dec["final_norm"]["scale"]}}
    if layout == "nested":
        return nested
    # FLAT, as released: 'transformer/layer_0/attn/q_einsum': {'w': ...}, mlp einsums keep their 'w'.
    flat = {}
    for path, value in flatten(nested).items():
        module, leaf = path.rsplit("/", 1)
        if module.endswith("mlp"):
            module, leaf = path, "w"
        flat.setdefault(f"transformer/{module}", {})[leaf] = value
    return flat


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_official_flax_layout_matches_hf(hf_gemma2, tmp_path, layout, caplog):
    path, _, ref = hf_gemma2
    cfg, params = import_gemma2(path)
    tree = _official_tree(params, pad_rows=8, layout=layout)
    if layout == "flat":
        assert "transformer/layer_0/attn/q_einsum" in tree and "w" in tree["transformer/layer_0/mlp/gating_einsum"]
    out = tmp_path / "official"
    save_tree(out, tree)
    model, loaded = load_checkpoint(out, config=cfg)
    assert model.config.vocab_size == VOCAB + 8
    assert "keeping all rows" in caplog.text
    logits = model.apply({"params": loaded}, TOKENS)
    diff = _max_diff(logits, ref)
    print(f"official Flax layout ({layout}) vs HF: max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    # Without a config the sizes come from the shapes; the window must then be given.
    model2, _ = load_checkpoint(out)
    assert (model2.config.embed_dim, model2.config.num_layers, model2.config.num_kv_heads) == (32, 3, 2)


def test_native_model_and_trainer_run(hf_gemma2, tmp_path):
    import orbax.checkpoint as ocp

    from adaptation.models import layout

    path, _, ref = hf_gemma2
    cfg, params = import_gemma2(path)
    out = tmp_path / "native"
    save_model(out, cfg.replace(scan_layers=True), layout.map_stacks(params, layout.stack_layers))
    model, loaded = load_checkpoint(out)
    assert model.config.scan_layers and "layers" in loaded["decoder"]
    assert _max_diff(model.apply({"params": loaded}, TOKENS), ref) <= 1e-4

    run = tmp_path / "run"
    write_model_config(run, cfg)
    manager = ocp.CheckpointManager(os.path.abspath(run / "checkpoints"), item_names=("params",))
    zeros = {k: np.zeros_like(v) for k, v in flatten(params).items()}
    from adaptation.checkpoints.common import unflatten

    manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(unflatten(zeros))))
    manager.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
    model, loaded = load_checkpoint(run)
    assert _max_diff(model.apply({"params": loaded}, TOKENS), ref) <= 1e-4


def test_bad_input_messages(hf_gemma2, tmp_path):
    path, _, _ = hf_gemma2
    missing = copy_hf_dir(path, tmp_path / "missing", drop="model.layers.2.mlp.up_proj.weight")
    with pytest.raises(CheckpointError, match=r"no tensor 'model\.layers\.2\.mlp\.up_proj\.weight'"):
        load_checkpoint(missing)
    wrong = copy_hf_dir(path, tmp_path / "wrong", config_edit={"intermediate_size": 40})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(wrong)
    assert "model.layers.0.mlp.down_proj.weight" in str(err.value)
    assert "expected shape (32, 40)" in str(err.value) and "found (32, 48)" in str(err.value)
    extra = copy_hf_dir(path, tmp_path / "extra", config_edit={"num_hidden_layers": 2, "layer_types": None})
    with pytest.raises(CheckpointError, match=r"does not account for: \['model\.layers\.2\."):
        load_checkpoint(extra)
    untied = copy_hf_dir(path, tmp_path / "untied", replace={"lm_head.weight": np.ones((VOCAB, 32), np.float32)})
    with pytest.raises(CheckpointError, match="untied output head"):
        load_checkpoint(untied)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a recognized checkpoint"):
        load_checkpoint(tmp_path / "empty")
    cfg, params = import_gemma2(path)
    with pytest.raises(CheckpointError, match="already exists"):
        export_gemma2(tmp_path / "empty", cfg, params)
    bad = dict(params, embedder={"embedding": np.zeros((VOCAB, 31), np.float32)})
    with pytest.raises(CheckpointError, match=r"'embedder/embedding' has shape \(96, 31\)"):
        export_gemma2(tmp_path / "bad", cfg, bad)
    assert not (tmp_path / "bad").exists()


def test_package_import_is_light():
    code = (
        "import sys, adaptation\n"
        "assert 'jax' not in sys.modules, 'import adaptation pulled jax'\n"
        "import adaptation.checkpoints.loader, adaptation.convert\n"
        "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules\n"
        "assert callable(adaptation.load_checkpoint)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})

"""The conversion CLI: HF Gemma 2 -> adapt -> orbax -> HF T5Gemma, dry runs, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from adaptation import load_checkpoint
from adaptation.checkpoints.common import flatten
from adaptation.convert import main

VOCAB = 72
ENC = np.array([[5, 17, 9, 33, 2, 71, 8, 40, 12], [4, 9, 33, 2, 7, 0, 0, 0, 0]], np.int32)
DEC = np.array([[2, 6, 7, 8, 9, 10, 11], [2, 9, 33, 44, 0, 0, 0]], np.int32)


def _gemma2_dir(path, hidden: int, inter: int, layers: int, seed: int) -> str:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
    )
    model = Gemma2ForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {
        "big": _gemma2_dir(root / "big", 48, 64, 3, seed=3),
        "small": _gemma2_dir(root / "small", 32, 48, 2, seed=4),
    }


def _run(*args: str) -> int:
    return main([str(a) for a in args])


def test_adapt_balanced_to_orbax_to_hf_t5gemma(sources, tmp_path, capsys):
    from transformers import T5GemmaForConditionalGeneration

    orbax_dir, hf_dir = tmp_path / "adapted", tmp_path / "t5gemma"
    assert _run("--input", sources["small"], "--output", orbax_dir, "--to", "orbax", "--adapt", "balanced") == 0
    assert _run("--input", orbax_dir, "--output", hf_dir, "--to", "hf") == 0
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == ["T5GemmaForConditionalGeneration"]

    model, params = load_checkpoint(orbax_dir)
    ours = np.asarray(model.apply({"params": params}, ENC, DEC))
    hf = T5GemmaForConditionalGeneration.from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        e, d = torch.tensor(ENC, dtype=torch.long), torch.tensor(DEC, dtype=torch.long)
        ref = hf(input_ids=e, attention_mask=(e != 0).long(), decoder_input_ids=d,
                 decoder_attention_mask=(d != 0).long()).logits.numpy()
    diff = float(np.abs(ours - ref)[DEC != 0].max())
    print(f"CLI round trip HF Gemma2 -> adapt balanced -> orbax -> HF T5Gemma: max|diff| = {diff:.3g}")
    assert diff <= 1e-4

    # The adapted stacks hold the source weights; cross-attention copies self-attention.
    _, source = load_checkpoint(sources["small"])
    dec = params["decoder"]["layers_1"]
    np.testing.assert_array_equal(dec["mlp"]["up"], source["decoder"]["layers_1"]["mlp"]["up"])
    np.testing.assert_array_equal(dec["cross_attn"]["k"], dec["attn"]["k"])
    np.testing.assert_array_equal(params["encoder"]["layers_0"]["attn"]["q"], source["decoder"]["layers_0"]["attn"]["q"])


def test_adapt_unbalanced_dry_run_and_bfloat16(sources, tmp_path, capsys):
    out = tmp_path / "unbalanced"
    args = ["--input", sources["big"], "--input_decoder", sources["small"], "--output", out, "--to", "hf",
            "--adapt", "unbalanced"]
    assert _run(*args, "--dry_run") == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    assert "model.decoder.layers.0.cross_attn.k_proj.weight  (16, 48)  <- decoder/layers_0/cross_attn/k (48, 2, 8)  [new]" in printed
    assert "model.encoder.layers.2.mlp.gate_proj.weight  (64, 48)" in printed
    assert _run("--input", sources["big"], "--input_decoder", sources["small"], "--output", out, "--to", "orbax",
                "--adapt", "unbalanced", "--dtype", "bfloat16") == 0
    model, params = load_checkpoint(out)
    assert model.config.encoder.embed_dim == 48 and model.config.decoder.embed_dim == 32
    assert {v.dtype.name for v in flatten(params).values()} == {"bfloat16"}


def test_plain_conversion_dry_run_and_hf_round_trip(sources, tmp_path, capsys):
    assert _run("--input", sources["small"], "--output", tmp_path / "x", "--to", "orbax", "--dry_run") == 0
    printed = capsys.readouterr().out
    assert "decoder/layers_1/attn/q  (32, 4, 8)" in printed and not (tmp_path / "x").exists()
    assert _run("--input", sources["small"], "--output", tmp_path / "native", "--to", "orbax") == 0
    assert _run("--input", tmp_path / "native", "--output", tmp_path / "hf", "--to", "hf") == 0
    _, a = load_checkpoint(sources["small"])
    _, b = load_checkpoint(tmp_path / "hf")
    flat_b = flatten(b)
    assert all(np.array_equal(v, flat_b[k]) for k, v in flatten(a).items())


def test_bad_input_exits_2_with_one_line(sources, tmp_path, capsys):
    def error(*args) -> str:
        assert _run(*args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("adaptation-convert: error:"), err
        return err

    assert "is not an existing directory" in error("--input", tmp_path / "nowhere", "--output", tmp_path / "o",
                                                   "--to", "orbax")
    assert "'nowhere'" in error("--input", "nowhere", "--output", tmp_path / "o", "--to", "orbax")
    assert "needs --input_decoder" in error("--input", sources["big"], "--output", tmp_path / "o", "--to", "orbax",
                                            "--adapt", "unbalanced")
    (tmp_path / "exists").mkdir()
    assert "already exists" in error("--input", sources["small"], "--output", tmp_path / "exists", "--to", "hf")
    # A checkpoint missing a tensor: named in the message, nothing written.
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    tensors = load_file(os.path.join(sources["small"], "model.safetensors"))
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, broken / "model.safetensors")
    (broken / "config.json").write_text(open(os.path.join(sources["small"], "config.json")).read())
    out = tmp_path / "never"
    assert "model.layers.1.self_attn.v_proj.weight" in error("--input", broken, "--output", out, "--to", "orbax",
                                                             "--adapt", "balanced")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".never")]
    # Adapting an encoder-decoder checkpoint is refused, naming it.
    assert _run("--input", sources["small"], "--output", tmp_path / "ed", "--to", "orbax", "--adapt", "balanced") == 0
    capsys.readouterr()
    assert "decoder-only" in error("--input", tmp_path / "ed", "--output", tmp_path / "o", "--to", "orbax",
                                   "--adapt", "balanced")


def test_module_entry_point(sources, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "adaptation.convert", "--input", sources["small"], "--output", str(tmp_path / "o"),
         "--to", "hf", "--dry_run"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr
    assert "model.layers.0.self_attn.q_proj.weight  (32, 32)  <- decoder/layers_0/attn/q (32, 4, 8)" in result.stdout

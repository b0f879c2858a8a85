"""T5Gemma 2: HF T5Gemma2ForConditionalGeneration import/export parity (merged attention, tied embeddings,
padded encoder and decoder inputs), Gemma 3 -> adapt -> T5Gemma 2 through the CLI, greedy decoding
against transformers' generate, and bad input."""

import json
import logging
import os

import jax
import numpy as np
import pytest
import torch
from hf_oracle import copy_hf_dir, jit_apply, max_diff, randomize, seq2seq_logits
from safetensors.numpy import load_file

from adaptation import load_checkpoint
from adaptation.checkpoints.common import CheckpointError, flatten
from adaptation.checkpoints.hf_t5gemma2 import export_t5gemma2, import_t5gemma2
from adaptation.convert import main
from adaptation.models import EncoderDecoder
from adaptation.models.config import AttentionKind

VOCAB = 96
WINDOW = 4  # even: the T5Gemma 2 encoder window (W keys around the query) is asymmetric
ENC = np.array([[5, 17, 9, 33, 2, 71, 8, 40, 12, 3, 60], [4, 9, 33, 2, 7, 88, 0, 0, 0, 0, 0]], np.int32)
DEC = np.array([[2, 5, 9, 14, 33, 8, 21, 7, 3], [2, 44, 9, 5, 0, 0, 0, 0, 0]], np.int32)
TEXT = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=7, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
    },
)
_L, _G = AttentionKind.LOCAL, AttentionKind.GLOBAL


def _hf_config(**text):
    from transformers import SiglipVisionConfig, T5Gemma2Config
    from transformers.models.t5gemma2.configuration_t5gemma2 import (
        T5Gemma2DecoderConfig,
        T5Gemma2EncoderConfig,
        T5Gemma2TextConfig,
    )

    fields = {**TEXT, **text}
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=4)
    encoder = T5Gemma2EncoderConfig(text_config=T5Gemma2TextConfig(**fields), vision_config=vision, mm_tokens_per_image=4)
    return T5Gemma2Config(encoder=encoder, decoder=T5Gemma2DecoderConfig(**fields), attn_implementation="eager")


def _hf_logits(model, enc=ENC, dec=DEC) -> np.ndarray:
    return seq2seq_logits(model, enc, dec)


def _max_diff(a, b, tokens=DEC) -> float:
    return max_diff(a, b, tokens)


@pytest.fixture(scope="module")
def hf_t5gemma2(tmp_path_factory):
    """A tiny T5Gemma2ForConditionalGeneration (7 + 7 layers, 5:1, window 4, GQA, RoPE x8 on global layers)."""
    from transformers import T5Gemma2ForConditionalGeneration

    torch.manual_seed(0)
    model = T5Gemma2ForConditionalGeneration(_hf_config()).eval()
    randomize(model, 7, 0.1)  # a seed whose greedy outputs vary and hit eos in row 2
    path = tmp_path_factory.mktemp("hf") / "t5gemma2"
    model.save_pretrained(path)
    return str(path), model, _hf_logits(model)


def test_t5gemma2_import_parity(hf_t5gemma2, caplog):
    path, _, ref = hf_t5gemma2
    with caplog.at_level(logging.WARNING):
        model, params = load_checkpoint(path)
    assert "vision tower" in caplog.text and "skipped" in caplog.text
    assert isinstance(model, EncoderDecoder)
    cfg = model.config
    assert cfg.tie_all_embeddings and cfg.decoder.merged_attention and not cfg.decoder.cross_attention
    assert set(params) == {"embedder", "encoder", "decoder"}
    assert set(params["decoder"]["layers_0"]) == {"pre_attention_norm", "attn", "post_attention_norm", "pre_ffw_norm",
                                                 "mlp", "post_ffw_norm"}
    assert set(params["decoder"]["layers_0"]["attn"]) == {"q", "k", "v", "o", "query_norm", "key_norm"}
    assert cfg.encoder.bidirectional_window == "width" and cfg.encoder.attention_pattern == (_L,) * 5 + (_G,)
    assert (cfg.decoder.rope_base_global, cfg.decoder.rope_scale_global) == (1_000_000.0, 8.0)
    logits = jit_apply(model, params, ENC, DEC)
    diff = _max_diff(logits, ref)
    print(f"T5Gemma2ForConditionalGeneration import parity (7+7 layers, window 4 < 11/9 tokens, padded encoder and "
          f"decoder, merged attention, tied table): max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    # The encoder's window convention matters: the T5Gemma reading (|i - j| <= W) gives other logits.
    radius = cfg.replace(encoder=cfg.encoder.replace(bidirectional_window="radius"))
    assert _max_diff(jit_apply(EncoderDecoder(radius), params, ENC, DEC), ref) > 1e-3


def test_t5gemma2_export_reloads_in_transformers(hf_t5gemma2, tmp_path):
    from transformers import T5Gemma2ForConditionalGeneration

    path, _, ref = hf_t5gemma2
    cfg, params = import_t5gemma2(path)
    out = tmp_path / "exported"
    export_t5gemma2(out, cfg, params)
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == ["T5Gemma2ForConditionalGeneration"] and hf["tie_word_embeddings"]
    names = set(load_file(str(out / "model.safetensors")))
    assert "model.encoder.embed_tokens.weight" in names and "model.decoder.layers.6.self_attn.k_norm.weight" in names
    reloaded = T5Gemma2ForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    diff = _max_diff(_hf_logits(reloaded), ref)
    print(f"T5Gemma2 export -> transformers reload: max|diff| = {diff:.3g}")
    assert diff <= 1e-5
    cfg2, params2 = import_t5gemma2(out)
    assert cfg2 == cfg
    flat2 = flatten(params2)
    for name, value in flatten(params).items():
        np.testing.assert_array_equal(flat2[name], value, err_msg=name)


@pytest.fixture(scope="module")
def gemma3_source(tmp_path_factory):
    """A tiny HF Gemma3ForCausalLM (same sizes) as the adaptation source."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(1)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**TEXT, attn_implementation="eager")).eval()
    randomize(model, 1)
    path = tmp_path_factory.mktemp("hf") / "gemma3"
    model.save_pretrained(path)
    return str(path)


def _run(*argv) -> int:
    return main([str(a) for a in argv])


def test_gemma3_adapts_to_t5gemma2_through_the_cli(gemma3_source, tmp_path, capsys):
    from transformers import T5Gemma2ForConditionalGeneration

    ours, hf_dir, direct = tmp_path / "adapted", tmp_path / "t5gemma2", tmp_path / "direct"
    assert _run("--input", gemma3_source, "--output", ours, "--to", "orbax", "--adapt", "balanced") == 0
    assert "merged attention, tied embeddings (T5Gemma 2 style)" in capsys.readouterr().out
    model, params = load_checkpoint(ours)
    cfg = model.config
    assert cfg.decoder.merged_attention and cfg.tie_all_embeddings and cfg.encoder.bidirectional_window == "width"
    # Every merged-attention weight is the source self-attention; one table.
    src_model, src = load_checkpoint(gemma3_source)
    for name in ("q", "k", "v", "o", "query_norm/scale", "key_norm/scale"):
        np.testing.assert_array_equal(flatten(params["decoder"]["layers_3"]["attn"])[name],
                                      flatten(src["decoder"]["layers_3"]["attn"])[name])
    np.testing.assert_array_equal(params["embedder"]["embedding"], src["embedder"]["embedding"])
    ours_logits = jit_apply(model, params, ENC, DEC)

    assert _run("--input", ours, "--output", hf_dir, "--to", "hf") == 0
    assert _run("--input", gemma3_source, "--output", direct, "--to", "hf", "--adapt", "balanced") == 0
    for directory in (hf_dir, direct):
        reloaded = T5Gemma2ForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
        diff = _max_diff(_hf_logits(reloaded), ours_logits)
        print(f"Gemma3 -> adapt -> {directory.name} -> transformers T5Gemma2: max|diff| = {diff:.3g}")
        assert diff <= 1e-4

    # The dry run lists the T5Gemma 2 names.
    assert _run("--input", gemma3_source, "--output", tmp_path / "dry", "--to", "hf", "--adapt", "balanced",
                "--dry_run") == 0
    out = capsys.readouterr().out
    assert "model.decoder.layers.0.self_attn.q_norm.weight  (8,)  <- decoder/layers_0/attn/query_norm/scale" in out
    assert not (tmp_path / "dry").exists()


def test_greedy_decoding_matches_transformers_generate(hf_t5gemma2):
    from adaptation.decoding import generate

    path, hf_model, _ = hf_t5gemma2
    model, params = load_checkpoint(path)
    steps = 12  # longer than the window: the cache's local layers must slide
    ours = np.asarray(generate(model, params, ENC, max_decode_length=steps))
    with torch.no_grad():
        e = torch.tensor(ENC, dtype=torch.long)
        theirs = hf_model.generate(input_ids=e, attention_mask=(e != 0).long(), max_new_tokens=steps, do_sample=False,
                                   decoder_start_token_id=2, eos_token_id=1, pad_token_id=0).numpy()[:, 1:]
    theirs = np.pad(theirs, ((0, 0), (0, steps - theirs.shape[1])))
    print(f"greedy decoding, merged attention + cache: ours {ours.tolist()} / transformers {theirs.tolist()}")
    np.testing.assert_array_equal(ours, theirs)
    assert len(set(ours[0].tolist())) > 3 and 1 in ours[1]  # varied tokens; row 2 stops at eos


def test_bad_input_messages(hf_t5gemma2, gemma3_source, tmp_path, capsys, caplog):
    path, _, _ = hf_t5gemma2
    # Merged attention over different widths: both numbers named.
    wide = copy_hf_dir(path, tmp_path / "wide", config_edit={"decoder/hidden_size": 48})
    with pytest.raises(CheckpointError, match="encoder.text_config.hidden_size is 32 and decoder.hidden_size is 48"):
        load_checkpoint(wide)
    # A layer pattern that does not match the checkpoint's layer count.
    layers = copy_hf_dir(path, tmp_path / "layers", config_edit={"decoder/num_hidden_layers": 6, "decoder/layer_types": None})
    with pytest.raises(CheckpointError, match="describes 6 decoder layers .* holds 7"):
        load_checkpoint(layers)
    pattern = copy_hf_dir(path, tmp_path / "pattern", config_edit={"encoder/text_config/layer_types": ["full_attention"] * 6})
    with pytest.raises(CheckpointError, match="layer_types lists 6 layers, num_hidden_layers is 7"):
        load_checkpoint(pattern)
    # The CLI: merged attention asked of sources with different widths.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    narrow = tmp_path / "narrow"
    Gemma3ForCausalLM(Gemma3TextConfig(**{**TEXT, "hidden_size": 16})).save_pretrained(narrow)
    assert _run("--input", gemma3_source, "--input_decoder", narrow, "--output", tmp_path / "x", "--to", "orbax",
                "--adapt", "unbalanced", "--merged_attention") == 2
    err = capsys.readouterr().err
    assert "merged attention needs equal encoder and decoder widths" in err and "32" in err and "16" in err, err
    assert not (tmp_path / "x").exists()
    # T5Gemma-style configs do not become T5Gemma2 directories.
    cfg, params = import_t5gemma2(path)
    with pytest.raises(CheckpointError, match="bidirectional_window='width'"):
        export_t5gemma2(tmp_path / "radius", cfg.replace(encoder=cfg.encoder.replace(bidirectional_window="radius")),
                        params)
    assert _run("--input", gemma3_source, "--output", tmp_path / "t5g", "--to", "orbax", "--adapt", "balanced",
                "--no-merged_attention", "--no-tie_embeddings") == 0
    model, t5g = load_checkpoint(tmp_path / "t5g")
    assert model.config.decoder.cross_attention and not model.config.tie_all_embeddings
    with pytest.raises(CheckpointError, match="needs merged attention"):
        export_t5gemma2(tmp_path / "cross", model.config, t5g)
    # ... and a T5Gemma directory cannot hold a T5Gemma 2 encoder window.
    from adaptation.checkpoints.hf_t5gemma import export_t5gemma

    width = model.config.replace(encoder=model.config.encoder.replace(bidirectional_window="width"))
    with pytest.raises(CheckpointError, match="T5Gemma encoders read the sliding window as a radius"):
        export_t5gemma(tmp_path / "t5gemma_width", width, t5g)
    # An eoi_embedding that is not the table row of the end-of-image token is skipped with a warning.
    table = load_file(os.path.join(path, "model.safetensors"))["model.encoder.embed_tokens.weight"]
    big = copy_hf_dir(path, tmp_path / "eoi", config_edit={"encoder/eoi_token_index": 7, "eoi_token_index": 7})
    with caplog.at_level(logging.WARNING):
        import_t5gemma2(big)
    assert "eoi_embedding differs from the embedding of token 7" in caplog.text
    assert table.shape == (VOCAB, 32)


@pytest.mark.slow
def test_tiny_gemma3_source_adapts_and_trains_ul2_from_the_command_line(tmp_path):
    """HF Gemma 3 source -> `adaptation-convert --adapt balanced` -> `adaptation.train` with the T5Gemma 2
    UL2 run gin (demo task, small vocabulary): 30 steps, the loss falls."""
    import subprocess
    import sys

    import flax.linen as nn
    import jax.numpy as jnp

    from adaptation.checkpoints.hf_gemma import export_gemma3
    from adaptation.models import DecoderOnlyLM, decoder_only

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = decoder_only("tiny_gemma3", vocab_size=2256)
    params = nn.meta.unbox(DecoderOnlyLM(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
    export_gemma3(tmp_path / "gemma3", cfg, params)
    assert _run("--input", tmp_path / "gemma3", "--output", tmp_path / "adapted", "--to", "orbax",
                "--adapt", "balanced") == 0
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable, "-m", "adaptation.train",
        "--gin_file=models/t5gemma2_tiny.gin",
        "--gin_file=runs/pretrain_ul2_t5gemma2.gin",
        f"--gin.MODEL_DIR='{tmp_path}/run'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path}/adapted'",
        "--gin.encoder_decoder.vocab_size=2256",
        "--gin.MIXTURE_OR_TASK_NAME='pydoc_ul2'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}",
        "--gin.TRAIN_STEPS=30",
        "--gin.BATCH_SIZE=8",
        "--gin.WARMUP_STEPS=2",
        "--gin.LEARNING_RATE=1e-2",
        "--gin.LOG_EVERY_STEPS=1",
        "--gin.SAVE_EVERY_STEPS=1000",
    ]
    run = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "run" / "train_metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f]
    assert len(losses) == 30 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"T5Gemma 2 tiny UL2 from the CLI: mean loss of steps 1-5 {first:.3f} -> steps 26-30 {last:.3f}")
    # Starts near ln(vocab) (embeddings N(0, 0.02)): the last 5 steps must sit 0.25 nats below the first 5.
    assert last < first - 0.25, (first, last)
    # The trained run is a T5Gemma 2 model that load_checkpoint reads.
    model, _ = load_checkpoint(tmp_path / "run")
    assert model.config.decoder.merged_attention and model.config.tie_all_embeddings

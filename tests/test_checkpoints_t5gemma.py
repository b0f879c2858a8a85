"""T5Gemma checkpoints: import parity vs transformers (balanced and unbalanced), export, classifier."""

import numpy as np
import pytest
import torch
from hf_oracle import max_diff, randomize, seq2seq_logits

from adaptation import load_checkpoint
from adaptation.checkpoints.common import CheckpointError, flatten
from adaptation.checkpoints.hf_t5gemma import (
    export_t5gemma,
    export_t5gemma_classifier,
    import_t5gemma,
    import_t5gemma_classifier,
)
from adaptation.models import EncoderDecoder

VOCAB = 80
# Right-padded on both sides; the window (3) is shorter than both sequences.
ENC = np.array([[5, 17, 9, 33, 2, 71, 8, 40, 12], [4, 9, 33, 2, 7, 0, 0, 0, 0]], np.int32)
DEC = np.array([[2, 6, 7, 8, 9, 10, 11], [2, 9, 33, 44, 0, 0, 0]], np.int32)


def _module(hidden: int, inter: int, layers: int, **kw):
    from transformers import T5GemmaModuleConfig

    return T5GemmaModuleConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
        attn_logit_softcapping=2.0, final_logit_softcapping=1.5, **kw,
    )


def _t5gemma_config(encoder, decoder, **kw):
    from transformers import T5GemmaConfig

    return T5GemmaConfig(encoder=encoder, decoder=decoder, vocab_size=VOCAB, attn_implementation="eager", **kw)


def _seq2seq_logits(model) -> np.ndarray:
    return seq2seq_logits(model, ENC, DEC)


def _diff(a, b) -> float:
    return max_diff(a, b, DEC)


@pytest.fixture(scope="module", params=["balanced", "unbalanced"])
def hf_t5gemma(request, tmp_path_factory):
    from transformers import T5GemmaForConditionalGeneration

    torch.manual_seed(1)
    if request.param == "balanced":
        encoder, decoder = _module(32, 48, 2), _module(32, 48, 2)
    else:  # encoder wider (and deeper) than the decoder
        encoder, decoder = _module(48, 64, 3), _module(32, 40, 2)
    model = T5GemmaForConditionalGeneration(_t5gemma_config(encoder, decoder)).eval()
    randomize(model, 1)
    path = tmp_path_factory.mktemp("hf") / f"t5gemma_{request.param}"
    model.save_pretrained(path)
    return request.param, str(path), _seq2seq_logits(model)


def test_t5gemma_import_parity(hf_t5gemma):
    pair, path, ref = hf_t5gemma
    model, params = load_checkpoint(path)
    assert isinstance(model, EncoderDecoder)
    cfg = model.config
    assert cfg.decoder.cross_kv_dim == cfg.encoder.embed_dim
    if pair == "unbalanced":
        assert params["decoder"]["layers_0"]["cross_attn"]["k"].shape == (48, 2, 8)
        assert params["decoder"]["layers_0"]["cross_attn"]["q"].shape == (32, 4, 8)
    logits = model.apply({"params": params}, ENC, DEC)
    diff = _diff(logits, ref)
    print(f"T5Gemma {pair} import parity (window 3 < 9/7 tokens, right-padded both sides): max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    assert np.abs(ref).max() > 0.5  # logits are not degenerate


def test_t5gemma_export_reloads_in_transformers(hf_t5gemma, tmp_path):
    from transformers import T5GemmaForConditionalGeneration

    pair, path, ref = hf_t5gemma
    cfg, params = import_t5gemma(path)
    out = tmp_path / "export"
    export_t5gemma(out, cfg, params)
    reloaded = T5GemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    diff = _diff(_seq2seq_logits(reloaded), ref)
    print(f"T5Gemma {pair} export -> transformers reload: max|diff| = {diff:.3g}")
    assert diff <= 1e-6
    cfg2, params2 = import_t5gemma(out)
    assert cfg2 == cfg
    assert all(np.array_equal(a, flatten(params2)[k]) for k, a in flatten(params).items())


def test_tied_embeddings_export_writes_both_tables(hf_t5gemma, tmp_path):
    pair, path, ref = hf_t5gemma
    if pair != "balanced":
        pytest.skip("tied embeddings need equal widths")
    cfg, params = import_t5gemma(path)
    table = params["decoder_embedder"]["embedding"]
    tied = {k: v for k, v in params.items() if not k.endswith("_embedder")}
    tied["embedder"] = {"embedding": table}
    export_t5gemma(tmp_path / "tied", cfg.replace(tie_all_embeddings=True), tied)
    _, params2 = import_t5gemma(tmp_path / "tied")
    np.testing.assert_array_equal(params2["encoder_embedder"]["embedding"], table)
    np.testing.assert_array_equal(params2["decoder_embedder"]["embedding"], table)


def test_t5gemma_bad_input(hf_t5gemma, tmp_path):
    import json
    import shutil

    pair, path, _ = hf_t5gemma
    if pair != "balanced":
        pytest.skip("one pair is enough")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    config = json.loads((bad / "config.json").read_text())
    config["decoder"]["cross_attention_hidden_size"] = 64
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cross_attention_hidden_size 64 differs from the encoder hidden_size 32"):
        load_checkpoint(bad)


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    from transformers import T5GemmaForSequenceClassification

    torch.manual_seed(2)
    config = _t5gemma_config(_module(32, 48, 2), _module(32, 48, 2), num_labels=3)
    model = T5GemmaForSequenceClassification(config, is_encoder_decoder=False).eval()
    randomize(model, 2)
    path = tmp_path_factory.mktemp("hf") / "classifier"
    model.save_pretrained(path)
    return str(path), _classifier_logits(model)


def _classifier_logits(model) -> np.ndarray:
    with torch.no_grad():
        e = torch.tensor(ENC, dtype=torch.long)
        return model(input_ids=e, attention_mask=(e != 0).long()).logits.numpy()


def test_classifier_round_trip(hf_classifier, tmp_path):
    from transformers import T5GemmaForSequenceClassification

    path, ref = hf_classifier
    cfg, params = import_t5gemma_classifier(path)
    assert params["head"]["kernel"].shape == (32, 3) and params["head"]["bias"].shape == (3,)
    assert not cfg.causal
    model, loaded = load_checkpoint(path)
    diff = float(np.abs(np.asarray(model.apply({"params": loaded}, ENC)) - ref).max())
    print(f"T5Gemma classifier (encoder-only, last non-pad token) parity: max|diff| = {diff:.3g}")
    assert diff <= 1e-4
    out = tmp_path / "classifier"
    export_t5gemma_classifier(out, cfg, params)
    reloaded = T5GemmaForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    assert not reloaded.config.is_encoder_decoder
    np.testing.assert_allclose(_classifier_logits(reloaded), ref, atol=1e-6)

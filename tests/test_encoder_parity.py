"""Encoder-only parity: a Gemma 2 decoder-only model run bidirectionally equals transformers' T5Gemma encoder.

The oracle is `T5GemmaForSequenceClassification(config, is_encoder_decoder=False)` (tiny random weights,
float32, eager attention, CPU). Its encoder weights are written into a *decoder-only* param tree
(`{"embedder", "decoder"}`) which `adaptation.encoder.encoder_from_params` turns into the encoder.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from adaptation.encoder import encoder_from_params, encoder_params  # noqa: E402
from adaptation.models import DecoderOnlyLM, decoder_only, masks  # noqa: E402
from adaptation.models.heads import EncoderClassifier, HeadConfig  # noqa: E402

NUM_CLASSES = 3


def _hf_classifier(cfg, seed=0):
    """A tiny random T5Gemma encoder-only classifier matching our `cfg`."""
    from transformers import T5GemmaConfig, T5GemmaForSequenceClassification
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

    torch.manual_seed(seed)
    module = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.embed_dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        query_pre_attn_scalar=cfg.query_pre_attn_scalar,
        sliding_window=cfg.sliding_window,
        attn_logit_softcapping=cfg.attn_logits_soft_cap,
        final_logit_softcapping=cfg.final_logit_soft_cap,
    )
    config = T5GemmaConfig(
        encoder=T5GemmaModuleConfig(**module),
        decoder=T5GemmaModuleConfig(**module),
        is_encoder_decoder=False,
        num_labels=NUM_CLASSES,
        vocab_size=cfg.vocab_size,
    )
    config._attn_implementation = "eager"
    config.encoder._attn_implementation = "eager"
    model = T5GemmaForSequenceClassification(config, is_encoder_decoder=False).float().eval()
    with torch.no_grad():  # random norms and bias so that every weight matters
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif name.startswith("score"):
                p.copy_(0.5 * torch.randn_like(p))
    return model


def _decoder_only_params(hf_model, cfg) -> dict:
    """HF T5Gemma encoder weights -> our decoder-only tree {"embedder", "decoder"} (per-layer layout)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf_model.state_dict().items()}
    prefix = "model.encoder."
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    stack = {"final_norm": {"scale": sd[prefix + "norm.weight"]}}
    for i in range(cfg.num_layers):
        p = f"{prefix}layers.{i}."
        stack[f"layers_{i}"] = {
            "pre_attention_norm": {"scale": sd[p + "pre_self_attn_layernorm.weight"]},
            "post_attention_norm": {"scale": sd[p + "post_self_attn_layernorm.weight"]},
            "pre_ffw_norm": {"scale": sd[p + "pre_feedforward_layernorm.weight"]},
            "post_ffw_norm": {"scale": sd[p + "post_feedforward_layernorm.weight"]},
            "attn": {
                "q": sd[p + "self_attn.q_proj.weight"].T.reshape(d, n, h),
                "k": sd[p + "self_attn.k_proj.weight"].T.reshape(d, k, h),
                "v": sd[p + "self_attn.v_proj.weight"].T.reshape(d, k, h),
                "o": sd[p + "self_attn.o_proj.weight"].T.reshape(n, h, d),
            },
            "mlp": {
                "gate": sd[p + "mlp.gate_proj.weight"].T,
                "up": sd[p + "mlp.up_proj.weight"].T,
                "down": sd[p + "mlp.down_proj.weight"].T,
            },
        }
    return {"embedder": {"embedding": sd[prefix + "embed_tokens.weight"]}, "decoder": stack}


def _batch(cfg, length=20):
    """A right-padded batch: one full row, rows shorter and longer than the window, one tiny row."""
    rng = np.random.default_rng(0)
    lengths = [length, 13, 7, 2]
    tokens = np.zeros((len(lengths), length), np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(3, cfg.vocab_size, n)
    return tokens


def _left_pad(tokens):
    out = np.zeros_like(tokens)
    for i, row in enumerate(tokens):
        real = row[row != 0]
        out[i, len(row) - len(real):] = real
    return out


@pytest.fixture(scope="module")
def setup():
    cfg = decoder_only("tiny", num_layers=4)  # window 8 < length 20; local, global, local, global
    assert cfg.sliding_window < 20
    hf = _hf_classifier(cfg)
    return cfg, hf, _decoder_only_params(hf, cfg)


def _hf_hidden(hf, tokens, position_ids=None):
    with torch.no_grad():
        ids = torch.tensor(tokens)
        kw = {} if position_ids is None else {"position_ids": torch.tensor(position_ids)}
        return hf.model(input_ids=ids, attention_mask=(ids != 0).long(), **kw).last_hidden_state.numpy()


def test_decoder_only_as_encoder_matches_t5gemma_encoder(setup):
    cfg, hf, dec_params = setup
    # The source really is a decoder-only model: it runs as a causal LM.
    lm_logits = DecoderOnlyLM(cfg).apply({"params": dec_params}, jnp.asarray(_batch(cfg)[:1]))
    assert np.isfinite(np.asarray(lm_logits)).all()

    model, params = encoder_from_params(cfg, dec_params)
    assert not model.config.causal
    tokens = _batch(cfg)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
    theirs = _hf_hidden(hf, tokens)
    real = tokens != 0
    diff = np.abs(ours - theirs)[real].max()
    print(f"encoder hidden-state parity (right padding): max |diff| = {diff:.3e}")
    assert diff <= 1e-4

    # Left padding: positions count from the first real token (passed to HF explicitly).
    left = _left_pad(tokens)
    positions = np.asarray(masks.positions_from_segments(masks.segment_ids_from_tokens(jnp.asarray(left))))
    ours_left = np.asarray(model.apply({"params": params}, jnp.asarray(left)))
    theirs_left = _hf_hidden(hf, left, positions)
    diff_left = np.abs(ours_left - theirs_left)[left != 0].max()
    print(f"encoder hidden-state parity (left padding): max |diff| = {diff_left:.3e}")
    assert diff_left <= 1e-4
    # And our left- and right-padded outputs agree token for token.
    assert np.abs(ours_left[left != 0] - ours[real]).max() <= 1e-5


def test_causal_option_differs(setup):
    cfg, _, dec_params = setup
    tokens = jnp.asarray(_batch(cfg))
    bi_model, params = encoder_from_params(cfg, dec_params)
    causal_model, _ = encoder_from_params(cfg, dec_params, causal=True)
    assert causal_model.config.causal
    bi = np.asarray(bi_model.apply({"params": params}, tokens))
    causal = np.asarray(causal_model.apply({"params": params}, tokens))
    assert np.abs(bi - causal)[np.asarray(tokens) != 0].max() > 1e-3


def test_classifier_logits_match_t5gemma_sequence_classification(setup):
    cfg, hf, dec_params = setup
    head = HeadConfig(output="classification", num_classes=NUM_CLASSES, pooler="last", pool_k=1, mlp_depth=0)
    model, params = encoder_from_params(cfg, dec_params, head=head)
    assert set(params) == {"embedder", "encoder", "head"}
    assert params["head"]["kernel"].shape == (cfg.embed_dim, NUM_CLASSES)
    sd = hf.state_dict()
    params["head"] = {
        "kernel": sd["score.out_proj.weight"].numpy().T,
        "bias": sd["score.out_proj.bias"].numpy(),
    }
    tokens = _batch(cfg)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
    with torch.no_grad():
        ids = torch.tensor(tokens)
        theirs = hf(input_ids=ids, attention_mask=(ids != 0).long()).logits.numpy()
    diff = np.abs(ours - theirs).max()
    print(f"classifier logit parity: max |diff| = {diff:.3e}")
    assert ours.shape == (tokens.shape[0], NUM_CLASSES)
    assert diff <= 1e-4
    # Left padding gives the same logits (last non-pad token, pad-aware positions).
    ours_left = np.asarray(model.apply({"params": params}, jnp.asarray(_left_pad(tokens))))
    assert np.abs(ours_left - ours).max() <= 1e-5


def test_encoder_of_encoder_decoder_tree(setup):
    cfg, _, dec_params = setup
    tree = {"encoder_embedder": dec_params["embedder"], "decoder_embedder": {"embedding": np.zeros(1)},
            "encoder": dec_params["decoder"], "decoder": {"x": np.zeros(1)}}
    got = encoder_params(tree)
    assert got["embedder"] is dec_params["embedder"] and got["encoder"] is dec_params["decoder"]
    with pytest.raises(ValueError, match="cannot find an encoder"):
        encoder_params({"foo": {}})


def test_scanned_layout_gives_same_hidden_states(setup):
    cfg, _, dec_params = setup
    tokens = jnp.asarray(_batch(cfg))
    model, params = encoder_from_params(cfg, dec_params)
    scanned_model, scanned = encoder_from_params(cfg, dec_params, scan_layers=True)
    assert "layers" in scanned["encoder"]
    a = np.asarray(model.apply({"params": params}, tokens))
    b = np.asarray(scanned_model.apply({"params": scanned}, tokens))
    assert np.abs(a - b)[np.asarray(tokens) != 0].max() <= 1e-5
    assert isinstance(EncoderClassifier, type)
    jax.clear_caches()


def test_load_encoder_from_a_gemma2_checkpoint_directory(tmp_path):
    """A saved HF Gemma 2 decoder-only checkpoint -> `adaptation.load_encoder` == T5Gemma encoder on its weights."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    import adaptation

    cfg = decoder_only("tiny", num_layers=2)
    torch.manual_seed(1)
    gemma2 = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, query_pre_attn_scalar=cfg.query_pre_attn_scalar, sliding_window=cfg.sliding_window,
        attn_logit_softcapping=cfg.attn_logits_soft_cap, final_logit_softcapping=cfg.final_logit_soft_cap,
    )).float().eval()
    with torch.no_grad():
        for name, p in gemma2.named_parameters():
            if "norm" in name:
                p.copy_(0.3 * torch.randn_like(p))
    gemma2.save_pretrained(tmp_path)

    # The oracle: T5Gemma's encoder holding the Gemma 2 weights.
    encoder = _hf_classifier(cfg).model
    renames = {"input_layernorm": "pre_self_attn_layernorm", "post_attention_layernorm": "post_self_attn_layernorm"}
    state = {}
    for name, value in gemma2.state_dict().items():
        if name == "lm_head.weight":
            continue
        name = name.replace("model.", "encoder.", 1)
        for old, new in renames.items():
            name = name.replace(f".{old}.", f".{new}.")
        state[name] = value
    missing, unexpected = encoder.load_state_dict(state, strict=True)
    assert not missing and not unexpected

    model, params = adaptation.load_encoder(str(tmp_path))
    assert not model.config.causal and set(params) == {"embedder", "encoder"}
    tokens = _batch(cfg)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
    with torch.no_grad():
        ids = torch.tensor(tokens)
        theirs = encoder(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state.numpy()
    diff = np.abs(ours - theirs)[tokens != 0].max()
    print(f"load_encoder(Gemma 2 dir) vs T5Gemma encoder: max |diff| = {diff:.3e}")
    assert diff <= 1e-4

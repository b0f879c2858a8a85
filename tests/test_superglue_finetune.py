"""Finetuning a tiny model on a real CB subset in both castings: training accuracy beats the majority class.

Library-level (the castings, the models, optax, the report); the command-line run through
`adaptation.train` / `adaptation.eval` with `gin/superglue/*.gin` is wired once those entry points exist.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sentencepiece as spm

from adaptation import superglue_report as rep
from adaptation.encoder import encoder_config
from adaptation.models import presets
from adaptation.models.heads import EncoderClassifier, HeadConfig
from adaptation.models.transformer import EncoderDecoder
from tasks import superglue as sgt

N_EXAMPLES, INPUT_LEN, TARGET_LEN, STEPS = 24, 40, 12, 80


@pytest.fixture(scope="module")
def cb_subset(shared_data):
    raw, _ = sgt.read_jsonl("cb", "train", str(shared_data / "superglue"))
    sp = spm.SentencePieceProcessor(model_file=str(shared_data / "models" / "stories260K" / "tok512.model"))
    per_class = N_EXAMPLES // 3  # balanced: 8 of each class (majority 1/3)
    subset = [ex for c in range(3) for ex in [r for r in raw if r["label"] == c][:per_class]]
    return subset, sp


def _tokens(sp, texts, length):
    """Ids + EOS, truncated and right-padded with 0 (tok512: bos 1, eos 2; id 0 is never produced here)."""
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        ids = sp.encode(t)[: length - 1] + [sp.eos_id()]
        out[i, : len(ids)] = ids
    return out


def _majority(labels):
    return collections.Counter(labels).most_common(1)[0][1] / len(labels)


def _fit(loss_fn, params, steps, lr=3e-3):
    tx = optax.adamw(lr, weight_decay=0.0)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, rng)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    rng = jax.random.PRNGKey(1)
    losses = []
    for i in range(steps):
        params, opt, loss = step(params, opt, jax.random.fold_in(rng, i))
        losses.append(float(loss))
    return params, losses


@pytest.mark.slow
def test_classifier_casting_paper_head_learns_cb(cb_subset):
    raw, sp = cb_subset
    examples = [c for ex in raw for c in sgt.cast_classifier("cb", ex, "train")]
    tokens = jnp.asarray(_tokens(sp, [e["inputs"] for e in examples], INPUT_LEN))
    labels = jnp.asarray([e["label"] for e in examples])
    cfg = encoder_config(presets.decoder_only("tiny"))
    model = EncoderClassifier(cfg, HeadConfig(num_classes=3, pooler="last", pool_k=1, mlp_depth=0, dropout_rate=0.1))
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]

    def loss_fn(p, rng):
        logits = model.apply({"params": p}, tokens, enable_dropout=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    params, losses = _fit(loss_fn, params, STEPS)
    logits = np.asarray(model.apply({"params": params}, tokens))
    result = rep.evaluate("cb", "classifier", examples, list(logits))
    majority = _majority([e["label"] for e in examples])
    assert losses[-1] < losses[0]
    assert result["metrics"]["accuracy"] > majority + 0.2, (result, majority)


def _greedy(model, params, enc_tokens, bos_id, eos_id, length):
    """Greedy decoding without a cache (targets are a few tokens): re-run the decoder on the prefix."""
    dec = np.zeros((enc_tokens.shape[0], length), np.int32)
    dec[:, 0] = bos_id
    out = np.zeros_like(dec)
    apply = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d))
    for t in range(length):
        logits = np.asarray(apply(params, enc_tokens, jnp.asarray(dec)))
        out[:, t] = logits[:, t].argmax(-1)
        if t + 1 < length:
            dec[:, t + 1] = out[:, t]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in out.tolist()]


@pytest.mark.slow
def test_text_casting_t5_style_learns_cb(cb_subset):
    raw, sp = cb_subset
    examples = [c for ex in raw for c in sgt.cast_text("cb", ex, "train")]
    enc = jnp.asarray(_tokens(sp, [e["inputs"] for e in examples], INPUT_LEN))
    targets = _tokens(sp, [e["targets"] for e in examples], TARGET_LEN)
    dec_in = np.concatenate([np.full((len(examples), 1), sp.bos_id(), np.int32), targets[:, :-1]], axis=1)
    dec_in[targets == 0] = 0
    model = EncoderDecoder(presets.encoder_decoder("tiny-tiny"))
    params = model.init(jax.random.PRNGKey(0), enc, jnp.asarray(dec_in))["params"]
    targets_j, dec_j, weights = jnp.asarray(targets), jnp.asarray(dec_in), jnp.asarray(targets != 0, jnp.float32)

    def loss_fn(p, rng):
        del rng
        logits = model.apply({"params": p}, enc, dec_j)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets_j)
        return (ce * weights).sum() / weights.sum()

    params, losses = _fit(loss_fn, params, STEPS)
    decoded = [sp.decode(ids) for ids in _greedy(model, params, enc, sp.bos_id(), sp.eos_id(), TARGET_LEN)]
    result = rep.evaluate("cb", "text", examples, decoded)
    majority = _majority([e["targets"] for e in examples])
    assert losses[-1] < losses[0]
    assert result["metrics"]["accuracy"] > majority + 0.2, (result, decoded[:5], majority)

"""Finetuning a tiny encoder adapted from a decoder-only model, on real data (library level).

- SST-2 (real train rows): the classifier's training accuracy rises above the majority class.
- MS MARCO triples (real): a listwise ranking finetune raises the training queries' MRR@10 over the
  untrained model.
The command-line run (`adaptation.train` with `gin/encoder/*.gin`) needs the trainer to build an
`EncoderClassifier` and classification batches; see the report.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sentencepiece as spm
from flax.core import meta

import adaptation.metrics
from adaptation.encoder import encoder_from_params, pad_batch
from adaptation.models import DecoderOnlyLM, decoder_only
from adaptation.models.heads import HeadConfig
from adaptation.objectives.ranking import positive_first_labels, ranking_loss
from tasks import glue, msmarco

CFG = decoder_only("tiny")  # the decoder-only source: 2 layers, width 64, vocabulary 512


@pytest.fixture(scope="module")
def source_params():
    """A random tiny decoder-only LM: the checkpoint the encoder is adapted from."""
    lm = DecoderOnlyLM(CFG)
    return meta.unbox(lm.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"])


@pytest.fixture(scope="module")
def sp(shared_data):
    return spm.SentencePieceProcessor(model_file=str(shared_data / "models" / "stories260K" / "tok512.model"))


def _encode(sp, texts, length, truncate_side="left"):
    # tok512 never produces id 0 (unk), so 0 stays padding.
    return pad_batch([sp.encode(t) + [sp.eos_id()] for t in texts], length, truncate_side=truncate_side)


def _fit(loss_fn, params, steps, lr):
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, rng)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for i in range(steps):
        params, opt, loss = step(params, opt, jax.random.PRNGKey(i))
        losses.append(float(loss))
    return params, losses


def test_sst2_subset_training_accuracy_beats_majority(shared_data, sp, source_params):
    rows, _ = glue.read_tsv("sst2", "train", str(shared_data / "glue"))
    rows = rows[:48]
    labels = np.asarray([r["label"] for r in rows])
    majority = collections.Counter(labels.tolist()).most_common(1)[0][1] / len(labels)
    tokens = jnp.asarray(_encode(sp, [glue.input_text("sst2", r) for r in rows], 32))
    head = glue.head_config("sst2", dropout_rate=0.1)
    model, params = encoder_from_params(CFG, source_params, head=head, rng=jax.random.PRNGKey(1))
    assert set(params) == {"embedder", "encoder", "head"}
    y = jnp.asarray(labels)

    def loss_fn(p, rng):
        logits = model.apply({"params": p}, tokens, enable_dropout=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    params, losses = _fit(loss_fn, params, steps=30, lr=2e-3)
    predictions = np.asarray(jnp.argmax(jax.jit(model.apply)({"params": params}, tokens), -1))
    acc = adaptation.metrics.glue_metrics("sst2", labels, predictions)["accuracy"]
    print(f"SST-2 subset: training accuracy {acc:.3f} vs majority {majority:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert acc > majority + 0.1
    assert losses[-1] < losses[0]


def test_msmarco_listwise_finetune_raises_training_mrr(shared_data, sp, source_params):
    triples = msmarco.read_triples(
        shared_data / "msmarco" / "triples_train_small" / "triples.train.small.first100.tsv", limit=16
    )
    lists = msmarco.training_lists(triples, num_negatives=3, seed=0)
    size = 4
    texts = [msmarco.input_text(x["query"], p) for x in lists for p in x["passages"]]
    tokens = jnp.asarray(_encode(sp, texts, 48, truncate_side="right"))  # keep the query at the start
    head = HeadConfig(output="ranking", pooler="mean")
    assert head.num_outputs == 1
    model, params = encoder_from_params(CFG, source_params, head=head, rng=jax.random.PRNGKey(2))
    num_lists = len(lists)
    labels = positive_first_labels(num_lists, size)
    score = jax.jit(lambda p: model.apply({"params": p}, tokens).reshape(num_lists, size))

    def mrr(p):
        scores = np.asarray(score(p))
        qrels = {str(i): {"0": 1} for i in range(num_lists)}
        run = {str(i): {str(j): float(scores[i, j]) for j in range(size)} for i in range(num_lists)}
        return adaptation.metrics.ranking(qrels, run)["mrr@10"]

    before = mrr(params)

    def loss_fn(p, rng):
        s = model.apply({"params": p}, tokens, enable_dropout=True, rngs={"dropout": rng}).reshape(num_lists, size)
        return ranking_loss("listwise", s, labels)

    params, losses = _fit(loss_fn, params, steps=25, lr=2e-3)
    after = mrr(params)
    print(f"MS MARCO triples: training MRR@10 {before:.3f} -> {after:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert after > before + 0.1

"""Encoder-only finetuning from the command line (`gin/encoder/*.gin`), from a decoder-only checkpoint.

- SST-2 (real subset): a tiny encoder adapted from a saved decoder-only checkpoint finetunes above
  the majority-class training accuracy; `adaptation.eval` with `encoder/eval_glue.gin` prints the
  table and writes metrics.json.
- MS MARCO triples (real): a listwise ranking finetune raises the training queries' MRR@10 over the
  untrained model (the checkpoint's encoder with the fresh head the run started from).
- Library pieces of the trainer path: the classifier re-pads on either side to the same outputs,
  ranking batches give [lists, candidates] scores, a head that does not fit the task fails early.

Training runs in a subprocess (`python -m adaptation.train`, one host device); evaluation calls the
entry point in this process (`adaptation.eval.main(argv)`).
"""

import collections
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from test_train_cli import cli_env

import gin
from adaptation.classifier import (
    ClassifierConfig,
    abstract_params,
    build_classifier,
    encoder_classifier,
    read_classifier_config,
)
from adaptation.models import DecoderOnlyLM, decoder_only
from adaptation.models.heads import HeadConfig

VOCAB_ROWS = 2256  # the small SentencePiece vocabulary (Gemma special ids) + 256 extra ids
SST2_ROWS = 48
TRIPLES_LIMIT, NUM_NEGATIVES = 16, 3


@pytest.fixture(scope="module")
def decoder_checkpoint(tmp_path_factory):
    """A random tiny Gemma 2 decoder-only model saved in our checkpoint format."""
    from adaptation.checkpoints.native import save_model

    cfg = decoder_only("tiny", vocab_size=VOCAB_ROWS)
    params = meta.unbox(DecoderOnlyLM(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"])
    path = tmp_path_factory.mktemp("ckpt") / "tiny_lm"
    save_model(path, cfg, params)
    return path


@pytest.fixture(scope="module")
def sst2_dir(shared_data, tmp_path_factory):
    """GLUE_DIR with the first 48 real SST-2 training rows as train and dev."""
    root = tmp_path_factory.mktemp("glue")
    lines = (shared_data / "glue" / "SST-2" / "train.tsv").read_text().split("\n")[: SST2_ROWS + 1]
    (root / "SST-2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (root / "SST-2" / name).write_text("\n".join(lines) + "\n")
    labels = [line.split("\t")[-1] for line in lines[1:]]
    return root, collections.Counter(labels).most_common(1)[0][1] / len(labels)


def _random_params(config, seed=0):
    """Random params of a classifier config without compiling its init (CPU compile time matters here)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), abstract_params(config))


def _train(tmp_path, gin_file, bindings):
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "adaptation.train", f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
           "--gin.ACTIVATION_DTYPE='float32'", "--gin.VOCABULARY='small'", "--gin.WARMUP_STEPS=5",
           "--gin.SAVE_EVERY_STEPS=1000", "--gin.LOG_EVERY_STEPS=20", *bindings]
    proc = subprocess.run(cmd, env=cli_env(tmp_path, devices=1), capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return model_dir, proc.stderr


def _eval(argv, capsys):
    from adaptation import eval as eval_cli

    gin.clear_config()
    try:
        assert eval_cli.main(argv) == 0
    finally:
        gin.clear_config()
    return capsys.readouterr().out


@pytest.mark.slow
def test_glue_finetune_from_decoder_checkpoint_beats_majority(decoder_checkpoint, sst2_dir, tmp_path, capsys):
    root, majority = sst2_dir
    model_dir, log = _train(tmp_path, "encoder/finetune_glue.gin", [
        f"--gin.INITIAL_CHECKPOINT_PATH='{decoder_checkpoint}'", f"--gin.GLUE_DIR='{root}'", "--gin.GLUE_TASK='sst2'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}", "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=60",
        "--gin.LEARNING_RATE=2e-3",
    ])
    assert f"initialized from {decoder_checkpoint}" in log and "step 60/60" in log
    config = read_classifier_config(str(model_dir))
    assert config.encoder.causal is False and config.encoder.vocab_size == VOCAB_ROWS
    assert config.head == HeadConfig(num_classes=2, pooler="last", dropout_rate=0.1)
    out = _eval(["--gin_file=encoder/eval_glue.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                 f"--gin.EVAL_OUTPUT_DIR='{model_dir / 'eval'}'", f"--gin.GLUE_DIR='{root}'",
                 "--gin.GLUE_TASKS=['sst2']", "--gin.VOCABULARY='small'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}",
                 "--gin.EVAL_SPLIT='train'"], capsys)
    assert "GLUE (train)" in out and "sst2" in out and "GLUE average" in out, out
    result = json.loads((model_dir / "eval" / "metrics.json").read_text())["tasks"]["sst2"]
    accuracy = result["metrics"]["accuracy"]
    print(f"SST-2 subset: training accuracy {accuracy:.3f} vs majority {majority:.3f}")
    assert result["num_examples"] == SST2_ROWS
    assert accuracy > majority + 0.1


@pytest.mark.slow
def test_ranking_finetune_raises_training_mrr(decoder_checkpoint, shared_data, tmp_path, capsys):
    from adaptation.benchmarks import ranking_benchmark
    from tasks.finetune_tasks import msmarco_rerank_task

    triples = shared_data / "msmarco" / "triples_train_small" / "triples.train.small.first100.tsv"
    lists = [f"--gin.TRIPLES='{triples}'", f"--gin.TRIPLES_LIMIT={TRIPLES_LIMIT}",
             f"--gin.NUM_NEGATIVES={NUM_NEGATIVES}", "--gin.TASK_FEATURE_LENGTHS={'inputs': 48}"]
    model_dir, log = _train(tmp_path, "encoder/finetune_msmarco.gin", [
        f"--gin.INITIAL_CHECKPOINT_PATH='{decoder_checkpoint}'", *lists, "--gin.BATCH_SIZE=4",
        "--gin.TRAIN_STEPS=40", "--gin.LEARNING_RATE=2e-3",
    ])
    assert "step 40/40" in log
    config = read_classifier_config(str(model_dir))
    assert config.head.output == "ranking" and config.head.pooler == "mean"

    # The untrained model: the checkpoint's encoder and the head the run started from (seed 0).
    task = msmarco_rerank_task(triples_path=str(triples), num_negatives=NUM_NEGATIVES, limit=TRIPLES_LIMIT,
                               vocabulary="small")
    before = ranking_benchmark(checkpoint_path=str(decoder_checkpoint), model_config=config, seed=0,
                               mixture_or_task_names=[task], task_feature_lengths={"inputs": 48},
                               output_dir=str(tmp_path / "before"))[task]["metrics"]["mrr@10"]
    out = _eval(["--gin_file=encoder/eval_msmarco.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                 f"--gin.EVAL_OUTPUT_DIR='{model_dir / 'eval'}'", *lists, "--gin.VOCABULARY='small'"], capsys)
    assert "Reranking" in out and "MRR@10" in out, out
    after = json.loads((model_dir / "eval" / "metrics.json").read_text())["tasks"][task]
    print(f"MS MARCO triples: training-query MRR@10 {before:.3f} -> {after['metrics']['mrr@10']:.3f}")
    assert after["num_examples"] >= 8
    assert after["metrics"]["mrr@10"] > before + 0.1


def test_classifier_repads_and_scores_lists():
    """Left and right padding give the same outputs; [B, L, T] lists give [B, L] scores."""
    cfg = encoder_classifier("tiny", head=HeadConfig(output="ranking", pooler="last"))
    rows = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    right = np.zeros((3, 6), np.int32)
    left = np.zeros((3, 6), np.int32)
    for i, r in enumerate(rows):
        right[i, : len(r)] = r
        left[i, 6 - len(r):] = r
    params = _random_params(cfg)
    lists = np.stack([right, left])  # [2 lists, 3 candidates, 6 tokens]: the same rows, padded both ways
    scores = {}
    for side in ("right", "left"):
        scores[side] = np.asarray(build_classifier(cfg.replace(pad_side=side)).apply({"params": params}, lists))
        assert scores[side].shape == (2, 3)
        np.testing.assert_allclose(scores[side][1], scores[side][0], atol=1e-5)
    np.testing.assert_allclose(scores["left"], scores["right"], atol=1e-5)
    assert np.abs(scores["right"][0] - scores["right"][0, 0]).max() > 1e-6  # different rows, different scores


def test_head_loss_fn_on_trainer_batches():
    """Classification and ranking batches (as the feature converter makes them) give finite losses and
    gradients; all-padding rows (the eval loop's filler) carry no weight."""
    from adaptation.objectives.classification import head_loss_fn

    tokens = np.array([[3, 4, 5, 0], [6, 7, 0, 0], [0, 0, 0, 0]], np.int32)
    clf_config = encoder_classifier("tiny", head=HeadConfig(num_classes=3))
    clf, params = build_classifier(clf_config), _random_params(clf_config)
    batch = {"encoder_input_tokens": tokens, "label": np.array([2, 0, 1], np.int32)}
    grad_fn = jax.jit(jax.value_and_grad(lambda p, r: head_loss_fn(p, batch, r, model=clf), has_aux=True))
    (loss, aux), grads = grad_fn(params, jax.random.PRNGKey(1))
    assert np.isfinite(loss) and float(aux["loss_denominator"]) == 2.0
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))

    ranker_config = encoder_classifier("tiny", head=HeadConfig(output="ranking", pooler="mean"))
    ranker, rparams = build_classifier(ranker_config), _random_params(ranker_config)
    lists = {"encoder_input_tokens": np.stack([tokens, tokens[[1, 0, 2]]]),
             "labels": np.array([[1, 0, 0], [1, 0, 0]], np.float32)}
    losses = jax.jit(lambda p: {name: head_loss_fn(p, lists, None, model=ranker, ranking_loss_name=name)
                                for name in ("listwise", "pairwise", "pointwise", "poly1")})(rparams)
    for loss, aux in losses.values():
        assert np.isfinite(loss) and float(aux["loss_denominator"]) == 2.0
        assert 0.0 <= float(aux["accuracy"]) <= 1.0


def test_head_that_does_not_fit_the_task_fails_at_configuration():
    from tasks.finetune_tasks import glue_head

    with pytest.raises(ValueError, match="regression task"):
        glue_head("stsb", output="classification")
    with pytest.raises(ValueError, match="2-class task"):
        glue_head("sst2", output="regression")
    assert glue_head("stsb").output == "regression"
    with pytest.raises(ValueError, match="exactly one of preset"):
        encoder_classifier()
    with pytest.raises(ValueError, match="pad_side"):
        ClassifierConfig(encoder=decoder_only("tiny"), pad_side="middle")


def test_attention_probability_dropout():
    """`attention_dropout_rate` acts only with dropout enabled; it changes outputs and keeps gradients finite."""
    tokens = np.array([[3, 4, 5, 6, 0], [7, 8, 9, 0, 0]], np.int32)
    head = HeadConfig(num_classes=2, dropout_rate=0.0)
    plain_config = encoder_classifier("tiny", head=head)
    plain, params = build_classifier(plain_config), _random_params(plain_config)
    dropped = build_classifier(encoder_classifier("tiny", head=head, attention_dropout_rate=0.5))
    rngs = {"dropout": jax.random.PRNGKey(3)}

    @jax.jit
    def run(p):
        noisy = lambda q: dropped.apply({"params": q}, tokens, enable_dropout=True, rngs=rngs)  # noqa: E731
        return (plain.apply({"params": p}, tokens), dropped.apply({"params": p}, tokens),
                plain.apply({"params": p}, tokens, enable_dropout=True, rngs=rngs), noisy(p),
                jax.grad(lambda q: noisy(q).sum())(p))

    base, dropped_off, plain_on, noisy, grads = run(params)
    np.testing.assert_allclose(dropped_off, base, atol=1e-6)
    np.testing.assert_allclose(plain_on, base, atol=1e-6)
    assert np.abs(np.asarray(noisy) - np.asarray(base)).max() > 1e-4
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))

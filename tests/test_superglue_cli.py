"""SuperGLUE from the command line: a tiny model finetuned on a real CB subset in both modes
(`gin/superglue/finetune_superglue_classifier.gin`, `finetune_superglue_t5.gin`) reaches training
accuracy above the majority class, and `adaptation.eval` with `gin/superglue/eval_superglue.gin`
prints the table and writes `metrics.json` and the leaderboard file.

Training runs in a subprocess (`python -m adaptation.train`, one host device); evaluation calls the
same entry point in this process (`adaptation.eval.main(argv)`), which saves a TensorFlow start-up.
Vocabulary: the small SentencePiece model (Gemma's special ids), so model tables have 2256 rows.
"""

import collections
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from test_train_cli import cli_env

import gin

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB_ROWS = 2256  # small vocabulary: 2000 pieces + 256 extra ids
PER_CLASS, NUM_TEST = 8, 6


@pytest.fixture(scope="module")
def cb_dir(shared_data, tmp_path_factory):
    """SUPERGLUE_DIR with a balanced real CB subset (8 per class) as train and val, and 6 test rows."""
    root = tmp_path_factory.mktemp("superglue")
    src = shared_data / "superglue" / "CB"
    rows = [json.loads(line) for line in (src / "train.jsonl").read_text().splitlines()]
    by_label = collections.defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    subset = [r for label in ("entailment", "contradiction", "neutral") for r in by_label[label][:PER_CLASS]]
    test = (src / "test.jsonl").read_text().splitlines()[:NUM_TEST]
    (root / "CB").mkdir()
    text = "".join(json.dumps(r) + "\n" for r in subset)
    (root / "CB" / "train.jsonl").write_text(text)
    (root / "CB" / "val.jsonl").write_text(text)
    (root / "CB" / "test.jsonl").write_text("\n".join(test) + "\n")
    majority = collections.Counter(r["label"] for r in subset).most_common(1)[0][1] / len(subset)
    return root, majority


def _train(tmp_path, gin_files, bindings):
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "adaptation.train", *[f"--gin_file={g}" for g in gin_files],
           f"--gin.MODEL_DIR='{model_dir}'", *bindings]
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


COMMON = ["--gin.VOCABULARY='small'", "--gin.BATCH_SIZE=8", "--gin.WARMUP_STEPS=10", "--gin.SAVE_EVERY_STEPS=1000",
          "--gin.LOG_EVERY_STEPS=50", "--gin.ACTIVATION_DTYPE='float32'", "--gin.SUPERGLUE_TASK='cb'"]


def _eval_argv(cb_root, model_dir, casting, lengths):
    return ["--gin_file=superglue/eval_superglue.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
            f"--gin.EVAL_OUTPUT_DIR='{model_dir / 'eval'}'", f"--gin.SUPERGLUE_DIR='{cb_root}'",
            "--gin.SUPERGLUE_TASKS=['cb']", f"--gin.CASTING='{casting}'", "--gin.VOCABULARY='small'",
            f"--gin.TASK_FEATURE_LENGTHS={lengths}", "--gin.EVAL_SPLIT='train'"]


def _check_outputs(model_dir, out, majority):
    assert "SuperGLUE" in out and "CB " in out and "paper score" in out, out
    metrics = json.loads((model_dir / "eval" / "metrics.json").read_text())
    cb = metrics["tasks"]["cb"]
    assert cb["num_examples"] == 3 * PER_CLASS
    print(f"CB training accuracy {cb['metrics']['accuracy']:.3f} vs majority {majority:.3f}")
    assert cb["metrics"]["accuracy"] > majority + 0.2, (cb, majority)
    rows = [json.loads(line) for line in (model_dir / "eval" / "CB.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in rows] == list(range(NUM_TEST))
    assert all(r["label"] in ("entailment", "contradiction", "neutral") for r in rows)
    return cb["metrics"]["accuracy"]


@pytest.mark.slow
def test_classifier_mode_finetunes_and_evaluates(cb_dir, tmp_path, capsys):
    root, majority = cb_dir
    model_dir, log = _train(tmp_path, ["superglue/finetune_superglue_classifier.gin"], [
        *COMMON, f"--gin.SUPERGLUE_DIR='{root}'", "--gin.ENCODER_PRESET='tiny'",
        f"--gin.encoder_classifier.vocab_size={VOCAB_ROWS}", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64}",
        "--gin.TRAIN_STEPS=60", "--gin.LEARNING_RATE=3e-3",
    ])
    assert "step 60/60" in log
    config = json.loads((model_dir / "model_config.json").read_text())
    assert config["classifier"]["head"]["num_classes"] == 3 and config["classifier"]["head"]["pooler"] == "last"
    assert config["config"]["causal"] is False
    out = _eval(_eval_argv(root, model_dir, "classifier", "{'inputs': 64}"), capsys)
    _check_outputs(model_dir, out, majority)


@pytest.mark.slow
def test_text_mode_finetunes_and_evaluates(cb_dir, tmp_path, capsys):
    root, majority = cb_dir
    lengths = "{'inputs': 64, 'targets': 8}"
    model_dir, log = _train(tmp_path, ["models/tiny_tiny.gin", "superglue/finetune_superglue_t5.gin"], [
        *COMMON, f"--gin.SUPERGLUE_DIR='{root}'", f"--gin.encoder_decoder.vocab_size={VOCAB_ROWS}",
        f"--gin.TASK_FEATURE_LENGTHS={lengths}", "--gin.TRAIN_STEPS=150", "--gin.LEARNING_RATE=5e-3",
        "--gin.DROPOUT_RATE=0.0",
    ])
    assert "step 150/150" in log
    out = _eval(_eval_argv(root, model_dir, "text", lengths), capsys)
    _check_outputs(model_dir, out, majority)


def test_eval_over_wrong_checkpoint_kind_is_a_clear_error(cb_dir, tmp_path):
    """The classifier casting refuses an encoder-decoder checkpoint (and says what it needs)."""
    import jax
    from flax.core import meta

    from adaptation.benchmarks import superglue_benchmark
    from adaptation.checkpoints.native import save_model
    from adaptation.models import EncoderDecoder, encoder_decoder
    from tasks.finetune_tasks import superglue_tasks

    root, _ = cb_dir
    cfg = encoder_decoder("tiny-tiny", vocab_size=VOCAB_ROWS)
    tokens = jax.numpy.ones((1, 4), jax.numpy.int32)
    shapes = meta.unbox(jax.eval_shape(EncoderDecoder(cfg).init, jax.random.PRNGKey(0), tokens, tokens)["params"])
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # no init compile: values do not matter
    save_model(tmp_path / "ed", cfg, params)
    names = superglue_tasks(["cb"], casting="classifier", data_dir=str(root), vocabulary="small")
    with pytest.raises(ValueError, match="needs an encoder classifier checkpoint"):
        superglue_benchmark(checkpoint_path=str(tmp_path / "ed"), mixture_or_task_names=names,
                            task_feature_lengths={"inputs": 32}, output_dir=str(tmp_path / "eval"), split="train")

"""PrefixLM: packed sequences of 2 * min(inputs, targets) tokens split exactly in half."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from adaptation.objectives import prefix_lm, vocabularies
from tasks import pretraining


def test_split_in_half_exactly():
    ds = tf.data.Dataset.from_generator(
        lambda: iter([np.arange(3, 3 + n, dtype=np.int32) for n in (8, 9, 2)]),
        output_signature=tf.TensorSpec([None], tf.int32),
    ).map(lambda t: {"targets": t})
    out = list(prefix_lm.split_in_half(ds).as_numpy_iterator())
    assert [(len(e["inputs"]), len(e["targets"])) for e in out] == [(4, 4), (4, 5), (1, 1)]
    np.testing.assert_array_equal(np.concatenate([out[1]["inputs"], out[1]["targets"]]), np.arange(3, 12))


def test_lengths_come_from_task_feature_lengths():
    assert prefix_lm.prefix_lm_length({"inputs": 4096, "targets": 4096}) == 8192
    assert prefix_lm.prefix_lm_length({"inputs": 512, "targets": 256}) == 512
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
        prefix_lm.prefix_lm_length({"targets": 64})


def test_prefix_lm_task_on_english_text_splits_the_stream_at_half(shared_data):
    path = shared_data / "text" / "wikitext-2" / "valid.txt"
    vocab = vocabularies.small_vocabulary()
    pretraining.register_file_tasks("wiki_test", str(path), "text", vocabulary=vocab)
    task = seqio.get_mixture_or_task("wiki_test_prefix_lm")
    ds = task.get_dataset({"inputs": 48, "targets": 48}, split="train", shuffle=False, seed=0)
    examples = list(ds.take(200).as_numpy_iterator())
    assert all(len(e["inputs"]) == 48 and len(e["targets"]) == 48 for e in examples)
    # The examples are consecutive pieces of the token stream (documents + eos, empty lines dropped).
    stream = np.concatenate([np.concatenate([e["inputs"], e["targets"]]) for e in examples])
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    expected = np.concatenate([np.asarray(vocab.encode(line) + [1], np.int32) for line in lines[:400]])
    np.testing.assert_array_equal(stream, expected[: len(stream)])

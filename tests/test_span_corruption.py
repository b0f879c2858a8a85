"""Span corruption on real English text: realized rates, span lengths, exact inversion, determinism."""

import numpy as np
import pytest
import tensorflow as tf

from adaptation.objectives import span_corruption, vocabularies

LENGTH = 256
EXAMPLES = 10_000


def english_chunks(shared_data, length: int = LENGTH) -> np.ndarray:
    """WikiText-2 + Tiny Shakespeare, tokenized with the small vocabulary, cut into rows of `length`."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(vocabularies.small_sentencepiece_path()))
    text = shared_data / "text"
    lines = []
    for path in ("wikitext-2/valid.txt", "wikitext-2/test.txt", "tinyshakespeare/input.txt"):
        lines += [line for line in (text / path).read_text(encoding="utf-8").splitlines() if line.strip()]
    stream = np.concatenate([np.asarray(ids + [vocabularies.EOS_ID], np.int32) for ids in sp.encode(lines)])
    rows = len(stream) // length
    return stream[: rows * length].reshape(rows, length)


def run(chunks: np.ndarray, count: int, **kw) -> list[dict]:
    """`count` examples (the real chunks, cycled) through `span_corruption`, as numpy."""
    rows = np.resize(chunks, (count, chunks.shape[1]))
    ds = tf.data.Dataset.from_tensor_slices({"targets": rows})
    out = span_corruption.span_corruption(ds, max_length=chunks.shape[1], batch_size=512, **kw)
    examples = []
    for batch in out.ragged_batch(4096).as_numpy_iterator():
        examples += [{"inputs": i, "targets": t} for i, t in zip(batch["inputs"], batch["targets"])]
    return examples, rows


@pytest.fixture(scope="module")
def chunks(shared_data):
    return english_chunks(shared_data)


@pytest.mark.parametrize("mean_span,rate", [(3, 0.15), (12, 0.5), (32, 0.15), (32, 0.5)])
def test_realized_rate_and_span_length_on_english_text(chunks, mean_span, rate):
    vocab_size = 2256
    sentinels = vocabularies.sentinel_ids(vocab_size, 256)
    examples, rows = run(chunks, EXAMPLES, seed=3, noise_density=rate, mean_span=mean_span, sentinel_ids=sentinels)
    assert len(examples) == EXAMPLES
    sentinel_floor = min(sentinels)
    noise = spans = 0
    for ex, source in zip(examples, rows):
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs[-1] == 1 and targets[-1] == 1  # eos
        inputs, targets = inputs[:-1], targets[:-1]
        assert targets[0] == sentinels[0]
        num_spans = int(np.sum(targets >= sentinel_floor))
        # Sentinels are numbered in order, counting down from the last id.
        np.testing.assert_array_equal(targets[targets >= sentinel_floor], sentinels[:num_spans])
        np.testing.assert_array_equal(inputs[inputs >= sentinel_floor], sentinels[:num_spans])
        spans += num_spans
        noise += len(targets) - num_spans
        assert span_corruption.invert_span_corruption(inputs, targets, sentinels) == source.tolist()
    realized_rate = noise / (EXAMPLES * LENGTH)
    realized_span = noise / spans
    assert abs(realized_rate - rate) <= 0.01, realized_rate
    assert abs(realized_span - mean_span) <= 0.1 * mean_span, realized_span


def test_short_and_ragged_examples_invert_exactly():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 500, size=n).astype(np.int32) for n in [2, 3, 4, 5, 9, 17, 40, 2, 100, 256]]
    ds = tf.data.Dataset.from_generator(lambda: iter(docs), output_signature=tf.TensorSpec([None], tf.int32))
    ds = ds.map(lambda t: {"targets": t})
    sentinels = tuple(range(999, 743, -1))
    for mean_span, rate in [(3, 0.15), (32, 0.5), (1, 0.9)]:
        out = span_corruption.span_corruption(
            ds, seed=1, noise_density=rate, mean_span=mean_span, sentinel_ids=sentinels, max_length=256, batch_size=4
        )
        for doc, ex in zip(docs, out.as_numpy_iterator()):
            targets = ex["targets"][:-1]
            noise = int(np.sum(targets < 744))
            assert 1 <= noise <= len(doc) - 1
            assert span_corruption.invert_span_corruption(ex["inputs"][:-1], targets, sentinels) == doc.tolist()


def test_deterministic_for_a_seed_and_independent_of_batch_size(chunks):
    sentinels = vocabularies.sentinel_ids(2256, 256)

    def outputs(seed, batch_size):
        ds = tf.data.Dataset.from_tensor_slices({"targets": chunks[:300]})
        out = span_corruption.span_corruption(
            ds, seed=seed, sentinel_ids=sentinels, max_length=LENGTH, batch_size=batch_size
        )
        return [np.concatenate([ex["inputs"], [-1], ex["targets"]]) for ex in out.as_numpy_iterator()]

    first = outputs(7, 64)
    for a, b in zip(first, outputs(7, 64)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, outputs(7, 13)):
        np.testing.assert_array_equal(a, b)
    different = sum(not np.array_equal(a, b) for a, b in zip(first, outputs(8, 64)))
    assert different > 290


def test_bad_configuration_is_rejected():
    ds = tf.data.Dataset.from_tensor_slices({"targets": np.ones((2, 64), np.int32) * 5})
    with pytest.raises(ValueError, match="noise_density"):
        span_corruption.span_corruption(ds, seed=0, noise_density=1.0, sentinel_ids=(99,), max_length=64)
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption.span_corruption(ds, seed=0, noise_density=0.5, mean_span=1, sentinel_ids=(99,), max_length=64)
    with pytest.raises(ValueError, match="no span"):
        span_corruption.invert_span_corruption([5, 99], [98, 7], (99, 98))


def test_default_sentinels_are_the_last_ids_counting_down():
    assert vocabularies.sentinel_ids(256_000, 3) == (255_999, 255_998, 255_997)
    vocab = vocabularies.small_vocabulary()
    assert vocab.vocab_size == vocabularies.SMALL_VOCAB_SIZE + vocabularies.SMALL_EXTRA_IDS
    # The small vocabulary's sentinels are its extra ids: never produced by text.
    ids = vocab.encode("The quick brown fox jumps over the lazy dog. 1234 ∑ é 漢字")
    assert max(ids) < vocabularies.SMALL_VOCAB_SIZE
    assert vocab.tokenizer.id_to_piece(1) == "</s>" and vocab.tokenizer.id_to_piece(2) == "<s>"
    assert vocabularies.mode_token_ids(vocab) == (4, 5, 6)

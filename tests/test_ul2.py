"""UL2 mixture of denoisers: configuration checks, mixture proportions, prefix-LM denoiser, mode tokens."""

import numpy as np
import pytest
import tensorflow as tf

from adaptation.objectives import span_corruption, ul2, vocabularies
from tests.test_span_corruption import english_chunks

SENTINELS = vocabularies.sentinel_ids(2256, 256)


@pytest.fixture(scope="module")
def chunks(shared_data):
    return english_chunks(shared_data, length=128)


def denoise(chunks, count, denoisers, seed=0):
    rows = np.resize(chunks, (count, chunks.shape[1]))
    ds = tf.data.Dataset.from_tensor_slices({"targets": rows})
    out = ul2.ul2_denoise(
        ds,
        denoisers,
        seed=seed,
        sentinel_ids=SENTINELS,
        max_length=chunks.shape[1],
        batch_size=1024,
        with_denoiser_id=True,
    )
    examples = []
    for batch in out.ragged_batch(8192).as_numpy_iterator():
        examples += [dict(zip(batch, values)) for values in zip(*batch.values())]
    return examples, rows


def test_default_is_the_t5gemma2_mixture():
    got = [(d.mean_span, d.corruption_rate, d.prefix_lm, d.weight) for d in ul2.t5gemma2_denoisers()]
    assert got[:4] == [(3, 0.15, False, 1), (12, 0.5, False, 1), (32, 0.15, False, 1), (32, 0.5, False, 1)]
    assert got[4][1:] == (0.75, True, 4)


def test_configuration_errors_are_raised_at_construction():
    with pytest.raises(ValueError, match="corruption_rate"):
        ul2.Denoiser(3, 1.0)
    with pytest.raises(ValueError, match="corruption_rate"):
        ul2.Denoiser(3, 0.0)
    with pytest.raises(ValueError, match="sum to"):
        ul2.validate_denoisers([ul2.Denoiser(3, 0.15, weight=0), ul2.Denoiser(8, 0.5, weight=0)])
    with pytest.raises(ValueError, match="empty"):
        ul2.validate_denoisers([])
    with pytest.raises(ValueError, match="mean_span"):
        ul2.Denoiser(0, 0.5)
    with pytest.raises(ValueError, match="sum to"):
        ul2.ul2_denoise(
            tf.data.Dataset.range(1), [ul2.Denoiser(weight=0.0)], seed=0, sentinel_ids=SENTINELS, max_length=8
        )


def test_t5gemma2_mixture_proportions_and_prefix_denoiser(chunks):
    count = 40_000
    examples, rows = denoise(chunks, count, ul2.T5GEMMA2_DENOISERS)
    ids = np.array([ex["denoiser"] for ex in examples])
    proportions = np.bincount(ids, minlength=5) / count
    np.testing.assert_allclose(proportions, [1 / 8] * 4 + [4 / 8], atol=0.02)
    # Prefix-LM denoiser: the last 75% of the tokens are the targets, no sentinels, eos appended.
    prefix = [(ex, src) for ex, src in zip(examples, rows) if ex["denoiser"] == 4]
    assert len(prefix) > 10_000
    for ex, source in prefix[:2000]:
        assert len(ex["targets"]) - 1 == 96 and len(ex["inputs"]) - 1 == 32
        np.testing.assert_array_equal(np.concatenate([ex["inputs"][:-1], ex["targets"][:-1]]), source)
    target_tokens = sum(len(ex["targets"]) - 1 for ex, _ in prefix)
    assert abs(target_tokens / (len(prefix) * 128) - 0.75) <= 0.01
    # Span denoisers inside the mixture keep their configured rates.
    for index, d in enumerate(ul2.T5GEMMA2_DENOISERS[:4]):
        chosen = [ex for ex in examples if ex["denoiser"] == index]
        spans = sum(int(np.sum(ex["targets"] >= min(SENTINELS))) for ex in chosen)
        noise = sum(len(ex["targets"]) - 1 for ex in chosen) - spans
        assert abs(noise / (len(chosen) * 128) - d.corruption_rate) <= 0.01


def test_original_ul2_mixture_with_mode_tokens(chunks):
    nlu, nlg, s2s = vocabularies.mode_token_ids(vocabularies.small_vocabulary())
    denoisers = ul2.original_ul2_denoisers(nlu, nlg, s2s)
    assert len(denoisers) == 7 and denoisers[-1].prefix_lm and denoisers[-1].corruption_rate == 0.25
    examples, rows = denoise(chunks, 7000, denoisers, seed=5)
    ids = np.array([ex["denoiser"] for ex in examples])
    np.testing.assert_allclose(np.bincount(ids, minlength=7) / len(ids), [1 / 7] * 7, atol=0.02)
    expected_mode = [nlu, nlu, nlg, nlg, nlg, nlg, s2s]
    for ex, source in zip(examples[:3000], rows):
        assert ex["inputs"][0] == expected_mode[ex["denoiser"]]
        inputs, targets = ex["inputs"][1:-1], ex["targets"][:-1]
        if denoisers[ex["denoiser"]].prefix_lm:
            restored = np.concatenate([inputs, targets]).tolist()
        else:
            restored = span_corruption.invert_span_corruption(inputs, targets, SENTINELS)
        assert restored == source.tolist()


def test_sampling_is_deterministic_per_seed(chunks):
    a, _ = denoise(chunks[:200], 200, ul2.T5GEMMA2_DENOISERS, seed=1)
    b, _ = denoise(chunks[:200], 200, ul2.T5GEMMA2_DENOISERS, seed=1)
    c, _ = denoise(chunks[:200], 200, ul2.T5GEMMA2_DENOISERS, seed=2)
    assert [x["denoiser"] for x in a] == [x["denoiser"] for x in b]
    assert all(np.array_equal(x["targets"], y["targets"]) for x, y in zip(a, b))
    assert [x["denoiser"] for x in a] != [x["denoiser"] for x in c]

"""Benchmark (not a test): tokens/s of each pretraining preprocessor on this machine.

    python bench/preprocessors.py [--length 512] [--examples 20000]

Source tokens per second: span corruption per T5Gemma 2 denoiser, the UL2 mixture, the original
UL2 mixture, the PrefixLM split, and the whole demo task pipeline (read, clean, tokenize, pack,
UL2) on CPython's pydoc text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from adaptation.objectives import prefix_lm, span_corruption, ul2, vocabularies  # noqa: E402


def _rate(ds: tf.data.Dataset, tokens: int) -> float:
    start = time.perf_counter()
    ds.reduce(np.int64(0), lambda acc, _: acc + 1).numpy()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()
    rows = np.random.default_rng(0).integers(3, 250_000, (args.examples, args.length)).astype(np.int32)
    source = tf.data.Dataset.from_tensor_slices({"targets": rows}).cache()
    source.reduce(np.int64(0), lambda acc, _: acc + 1)  # fill the cache
    tokens = rows.size
    sentinels = vocabularies.sentinel_ids(256_000, 4096)
    common = dict(seed=0, sentinel_ids=sentinels, max_length=args.length, batch_size=args.batch_size)
    print(f"{args.examples} examples x {args.length} tokens, batch {args.batch_size}; source tokens/s:")
    for d in ul2.T5GEMMA2_DENOISERS[:4]:
        ds = span_corruption.span_corruption(source, noise_density=d.corruption_rate, mean_span=d.mean_span, **common)
        print(f"  span corruption ({d.mean_span}, {d.corruption_rate}): {_rate(ds, tokens):12,.0f}")
    print(
        f"  UL2 T5Gemma 2 mixture:       {_rate(ul2.ul2_denoise(source, ul2.T5GEMMA2_DENOISERS, **common), tokens):12,.0f}"
    )
    original = ul2.original_ul2_denoisers(7, 8, 9)
    print(f"  UL2 original 7 denoisers:    {_rate(ul2.ul2_denoise(source, original, **common), tokens):12,.0f}")
    print(f"  PrefixLM split in half:      {_rate(prefix_lm.split_in_half(source), tokens):12,.0f}")

    import seqio

    from tasks import pretraining

    lengths = {"inputs": args.length, "targets": args.length}
    task = seqio.get_mixture_or_task("pydoc_ul2")
    stream = sum(
        len(ex["targets"])
        for ex in pretraining.tokenize_documents(
            pretraining.clean_documents(
                pretraining.pydoc_source().get_dataset("train"), pretraining.DocumentStats("x")
            ),
            vocabularies.small_vocabulary(),
            pretraining.DocumentStats("x"),
        ).as_numpy_iterator()
    )
    ds = task.get_dataset(lengths, shuffle=False, seed=0)
    print(f"  pydoc_ul2 task (read+clean+tokenize+pack+UL2, {stream} tokens): {_rate(ds, stream):12,.0f}")


if __name__ == "__main__":
    main()

"""PrefixLM (T5Gemma): every (packed) sequence split exactly in half.

The first half goes to the encoder ("inputs"), the second half is the decoder target ("targets"),
e.g. 4096 + 4096 tokens. Sequences come from `tasks.pretraining.pack_stream` with length
`prefix_lm_length(TASK_FEATURE_LENGTHS)`; the final, shorter piece of a stream is split at
floor(len / 2). No eos is added: the split is inside a running text stream.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf


def prefix_lm_length(sequence_length: Mapping[str, int]) -> int:
    """Packed sequence length for the split: 2 * min(inputs, targets) of TASK_FEATURE_LENGTHS."""
    if "inputs" not in sequence_length or "targets" not in sequence_length:
        raise ValueError(f"TASK_FEATURE_LENGTHS must give 'inputs' and 'targets', got {dict(sequence_length)}")
    return 2 * min(int(sequence_length["inputs"]), int(sequence_length["targets"]))


def split_in_half(dataset: tf.data.Dataset, feature: str = "targets") -> tf.data.Dataset:
    """Maps `{feature: tokens}` to `{"inputs": first half, "targets": second half}`."""

    def split(ex):
        tokens = ex[feature]
        half = tf.size(tokens) // 2
        return {"inputs": tokens[:half], "targets": tokens[half:]}

    return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)

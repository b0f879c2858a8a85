"""seqio feature converter for encoder classifiers (classification, regression, ranking lists).

Task features -> model features:
  inputs  [T]  int32        -> encoder_input_tokens [T]     padded with 0 on the right to the length
  inputs  [L, T] int32 (a ranking list of L candidates) -> encoder_input_tokens [L, T]
  label   []   int32/float32 -> label []   (class index; a float for regression)
  labels  [L]  float32       -> labels [L] (grades of a ranking list)
Other task features (idx, pretokenized text, ...) are dropped: model batches hold arrays only.
Inputs longer than the length are cut at the length (tasks append EOS after trimming, so EOS stays).
The padding side of the model is a model option (`ClassifierConfig.pad_side`); batches are
right-padded. Classification batches are never packed.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf


class ClassificationFeatureConverter(seqio.FeatureConverter):
    """Task `inputs` + `label`/`labels` -> `encoder_input_tokens` + `label`/`labels` (see the module docstring)."""

    TASK_FEATURES = {"inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {"encoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("classification batches cannot be packed (one pooled vector per row): set "
                             "DatasetConfig.pack = False (gin: PACK = False).")
        super().__init__(pack=False, **kwargs)

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        if "inputs" not in task_feature_lengths:
            raise ValueError(f"a classifier needs task_feature_lengths {{'inputs': N}}; got {dict(task_feature_lengths)}.")
        length = int(task_feature_lengths["inputs"])
        spec = ds.element_spec
        if "inputs" not in spec or ("label" not in spec and "labels" not in spec):
            raise ValueError(
                f"a classification task must provide 'inputs' and 'label' (or 'labels' for ranking lists); "
                f"this one provides {sorted(spec)}."
            )
        rank = spec["inputs"].shape.rank
        if rank not in (1, 2) or spec["inputs"].dtype != tf.int32:
            raise ValueError(f"task feature 'inputs' must be int32 ids of rank 1 (or 2 for ranking lists); "
                             f"got {spec['inputs'].dtype.name} of rank {rank}.")

        def convert(ex):
            tokens = ex["inputs"][..., :length]
            pad = [[0, 0]] * (rank - 1) + [[0, length - tf.shape(tokens)[-1]]]
            tokens = tf.pad(tokens, pad)
            tokens = tf.ensure_shape(tokens, ex["inputs"].shape[:-1].concatenate([length]))
            out = {"encoder_input_tokens": tokens}
            if "labels" in ex:
                out["labels"] = tf.cast(ex["labels"], tf.float32)
            else:
                out["label"] = ex["label"]
            return out

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        return self(ds, task_feature_lengths)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        return {"encoder_input_tokens": task_feature_lengths["inputs"]}

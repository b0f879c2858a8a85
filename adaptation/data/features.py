"""seqio feature converters producing the model features (Gemma conventions).

Encoder-decoder batches:
  encoder_input_tokens   [B, S]  the task's "inputs"
  decoder_target_tokens  [B, T]  the task's "targets"
  decoder_input_tokens   [B, T]  targets shifted right, starting with BOS (id 2, Gemma); 0 wherever
                                 the target is padding, so that the model's pad-id-0 convention
                                 marks the same positions as the loss weights
  decoder_loss_weights   [B, T]  1 on non-padding targets
  + encoder/decoder_segment_ids and _positions when packing (each packed example restarts at BOS).
Decoder-only (LM) batches: decoder_* features only (seqio `LMFeatureConverter` layout).
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

BOS_ID = 2  # Gemma tokenizer: pad 0, eos 1, bos 2.


def _zero_where_padding(decoder_input_tokens: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.equal(targets, 0), tf.zeros_like(decoder_input_tokens), decoder_input_tokens)


class EncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """seqio's encoder-decoder converter with BOS 2 and decoder inputs zeroed on target padding."""

    def __init__(self, pack: bool = False, bos_id: int = BOS_ID, **kwargs):
        super().__init__(pack=pack, bos_id=bos_id, **kwargs)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        d = dict(super()._convert_example(features))
        d["decoder_input_tokens"] = _zero_where_padding(d["decoder_input_tokens"], d["decoder_target_tokens"])
        return d


class LMFeatureConverter(seqio.LMFeatureConverter):
    """seqio's decoder-only LM converter with BOS 2 and inputs zeroed on target padding."""

    def __init__(self, pack: bool = False, bos_id: int = BOS_ID, **kwargs):
        super().__init__(pack=pack, bos_id=bos_id, **kwargs)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        ds = super()._convert_features(ds, task_feature_lengths)

        def fix(d):
            d = dict(d)
            d["decoder_input_tokens"] = _zero_where_padding(d["decoder_input_tokens"], d["decoder_target_tokens"])
            return d

        return ds.map(fix, num_parallel_calls=tf.data.AUTOTUNE)


CONVERTERS = {"encoder_decoder": EncDecFeatureConverter, "decoder_only": LMFeatureConverter}


def feature_converter(kind: str = "encoder_decoder", pack: bool = False) -> seqio.FeatureConverter:
    """A converter by model kind: "encoder_decoder", "decoder_only" or "classifier" (encoder classifiers,
    `adaptation.data.classification`)."""
    if kind == "classifier":
        from adaptation.data.classification import ClassificationFeatureConverter

        return ClassificationFeatureConverter(pack=pack)
    if kind not in CONVERTERS:
        raise ValueError(f"unknown feature converter kind {kind!r}; choose one of {sorted(CONVERTERS)}.")
    return CONVERTERS[kind](pack=pack)

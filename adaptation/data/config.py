"""`DatasetConfig`: which seqio task or mixture to read, and how (no TensorFlow import)."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """A seqio task or mixture read as batches.

    Attributes:
      mixture_or_task_name: registered seqio task or mixture.
      task_feature_lengths: e.g. {"inputs": 512, "targets": 512}.
      batch_size: global batch size (all processes together).
      split: dataset split.
      shuffle: shuffle examples (with `seed`).
      seed: shuffle / preprocessing seed; fixed so that the pipeline is reproducible.
      pack: pack several examples per row (segment ids and positions are added).
      use_cached: read seqio's offline cache.
      num_epochs: None repeats forever (training); 1 for one pass (evaluation).
      model_kind: "encoder_decoder" or "decoder_only" (feature converter).
      module: a Python module to import first (it registers the tasks), e.g. "tasks.ul2".
    """

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    split: str = "train"
    shuffle: bool = True
    seed: Optional[int] = 0
    pack: bool = False
    use_cached: bool = False
    num_epochs: Optional[int] = None
    model_kind: str = "encoder_decoder"
    module: Optional[str] = None

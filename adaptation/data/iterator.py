"""Per-host seqio datasets and a batch iterator whose position is saved with the train state.

The pipeline is deterministic (fixed shuffle seed, deterministic tf.data ops), so its position is
just the number of batches consumed: a restored iterator rebuilds the dataset and skips that many
batches, and a resumed run sees exactly the batches an uninterrupted run would.

Each process reads its own shard (`seqio.ShardInfo(process_index, process_count)`) and yields
`batch_size / process_count` rows; `adaptation.partitioning.host_batch_to_global` assembles them.
"""

from __future__ import annotations

import importlib
import logging
from typing import Callable, Iterator, Mapping, Optional

__all__ = ["BatchIterator", "DatasetConfig", "get_dataset", "host_shard", "pipeline_options"]

import jax
import numpy as np
import seqio
import tensorflow as tf

from adaptation.data.config import DatasetConfig
from adaptation.data.features import feature_converter

Batch = dict[str, np.ndarray]


def host_shard() -> seqio.ShardInfo:
    """This process's shard of the input."""
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def pipeline_options() -> tf.data.Options:
    """The tf.data options of every input pipeline: deterministic order, no autotuning.

    Autotuning is off because its model thread made the iterator's destructor wait up to ~40 s (at the
    end of a run, after every in-training eval) in half of the demo's finetune runs; parallel maps then
    use one thread per core, which keeps the pipelines far ahead of the train step (`make bench`
    measures them with these options).
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return options


def get_dataset(config: DatasetConfig, shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    """The batched model-feature dataset of this process (batch_size / num_shards rows per batch)."""
    if config.module:
        importlib.import_module(config.module)
    shard_info = shard_info or host_shard()
    if config.batch_size % shard_info.num_shards:
        raise ValueError(
            f"batch size {config.batch_size} is not divisible by the {shard_info.num_shards} input shards."
        )
    try:
        seqio.get_mixture_or_task(config.mixture_or_task_name)
    except ValueError as e:
        raise ValueError(
            f"{e} Register it in a module and name it in DatasetConfig.module or a gin `import` line."
        ) from None
    ds = seqio.get_dataset(
        config.mixture_or_task_name,
        task_feature_lengths=dict(config.task_feature_lengths),
        feature_converter=feature_converter(config.model_kind, config.pack),
        dataset_split=config.split,
        use_cached=config.use_cached,
        shuffle=config.shuffle,
        num_epochs=config.num_epochs,
        shard_info=shard_info,
        verbose=False,
        seed=config.seed,
    )
    ds = ds.with_options(pipeline_options())
    drop_remainder = config.num_epochs is None
    return ds.batch(config.batch_size // shard_info.num_shards, drop_remainder=drop_remainder)


class BatchIterator(Iterator[Batch]):
    """Numpy batches from a deterministic dataset factory, with a saveable position.

    Args:
      make_dataset: builds the (batched) dataset from scratch; must give the same sequence each time.
      name: recorded in the state and checked on restore.
    """

    def __init__(self, make_dataset: Callable[[], tf.data.Dataset], name: str = ""):
        self._make_dataset = make_dataset
        self.name = name
        self._consumed = 0
        self._it = None

    @classmethod
    def from_config(cls, config: DatasetConfig, shard_info: Optional[seqio.ShardInfo] = None) -> "BatchIterator":
        """An iterator over `get_dataset(config, shard_info)`."""
        return cls(lambda: get_dataset(config, shard_info), name=config.mixture_or_task_name)

    def _iterator(self):
        if self._it is None:
            ds = self._make_dataset()
            if self._consumed:
                ds = ds.skip(self._consumed)
            self._it = ds.as_numpy_iterator()
        return self._it

    def __next__(self) -> Batch:
        batch = next(self._iterator())
        self._consumed += 1
        return {k: np.asarray(v) for k, v in batch.items()}

    def peek_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of one batch (global batch shape: rows x process count)."""
        spec = self._make_dataset().element_spec
        rows = jax.process_count()
        return {
            k: jax.ShapeDtypeStruct((int(v.shape[0]) * rows, *map(int, v.shape[1:])), np.dtype(v.dtype.as_numpy_dtype))
            for k, v in spec.items()
        }

    def get_state(self) -> dict:
        """The position, as JSON-serializable data."""
        return {"batches_consumed": self._consumed, "name": self.name}

    def set_state(self, state: Mapping) -> None:
        """Moves to a saved position (takes effect on the next batch)."""
        if state.get("name") and self.name and state["name"] != self.name:
            logging.warning(
                "restoring the position of data %r into an iterator over %r: the batches will differ "
                "from an uninterrupted run.", state["name"], self.name,
            )
        self._consumed = int(state.get("batches_consumed", 0))
        self._it = None

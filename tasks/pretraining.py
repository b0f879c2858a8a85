"""Pretraining corpora as seqio tasks: UL2 and PrefixLM over C4 (TFDS) and local files.

Every task reads documents (`{"text": string}`), then:
1. `clean_documents`: empty / whitespace-only documents are dropped, non-UTF-8 documents are
   repaired (invalid bytes -> U+FFFD) and kept; both are counted in the task's `DocumentStats`.
2. tokenization with the task's vocabulary, eos (1) appended to every document; documents shorter
   than `min_doc_tokens` (default: one mean span, 3 tokens) are counted as "short" and kept: they
   are concatenated with their neighbours in step 3, so nothing short reaches the denoisers alone.
3. `pack_stream`: the token stream is cut into full-length pieces (the leftover < one piece at the
   end of the stream is dropped).
4. UL2 (`ul2.ul2_denoise`, pieces of `raw_length = min(inputs, targets) - 2` tokens so that mode
   token + eos fit) or PrefixLM (`prefix_lm.split_in_half`, pieces of 2 * min(inputs, targets)).

Outputs are "inputs" / "targets" token features; the feature converter (`adaptation.data.features`)
builds model batches (decoder inputs start with bos 2) and may pack them.

Counts: `document_stats(task_name).counts()` / `.report()` (tf.Variable counters updated as the
pipeline runs, one set per task, in this process).

Registered at import: `c4_ul2`, `c4_prefix_lm` (TFDS `c4/en:3.1.0`, Gemma 2 tokenizer at
`vocabularies.GEMMA2_TOKENIZER`, read lazily, nothing downloaded at registration), and the demo tasks
`pydoc_ul2`, `pydoc_prefix_lm` (CPython's pydoc text, the small vocabulary). Local files:
`register_file_tasks(name, file_pattern, file_format, ...)` (text lines, JSONL, TFRecord or
ArrayRecord of tf.train.Example / raw text).
"""

from __future__ import annotations

import dataclasses
import functools
import glob as glob_lib
import json
from typing import Any, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from adaptation.objectives import prefix_lm, ul2, vocabularies

DOC_STATUSES = ("ok", "empty", "non_utf8", "short")


class DocumentStats:
    """Counters of documents by status (`DOC_STATUSES`), updated in-graph as the data is read."""

    def __init__(self, name: str):
        self.name = name
        self._counts = tf.Variable(tf.zeros([len(DOC_STATUSES)], tf.int64), trainable=False, name="doc_stats")

    def add(self, status, count=1) -> tf.Tensor:
        """Counts `count` (0 or 1) documents of `status` (index into DOC_STATUSES)."""
        delta = tf.one_hot(status, len(DOC_STATUSES), dtype=tf.int64) * tf.cast(count, tf.int64)
        return self._counts.assign_add(delta)

    def counts(self) -> dict[str, int]:
        return dict(zip(DOC_STATUSES, (int(c) for c in self._counts.numpy())))

    def report(self) -> str:
        """One line: documents read and how many were empty (dropped), non-UTF-8 (repaired), short."""
        c = self.counts()
        total = c["ok"] + c["empty"] + c["non_utf8"]
        return (
            f"{self.name}: {total} documents read; {c['empty']} empty (dropped), {c['non_utf8']} non-UTF-8 "
            f"(invalid bytes replaced by U+FFFD, kept), {c['short']} shorter than one span (kept, concatenated)"
        )

    def reset(self) -> None:
        self._counts.assign(tf.zeros_like(self._counts))


_STATS: dict[str, DocumentStats] = {}


def document_stats(task_name: str) -> DocumentStats:
    """The document counters of a task (created on first use)."""
    if task_name not in _STATS:
        _STATS[task_name] = DocumentStats(task_name)
    return _STATS[task_name]


def clean_documents(dataset: tf.data.Dataset, stats: DocumentStats, text_key: str = "text") -> tf.data.Dataset:
    """Drops empty documents, repairs non-UTF-8 ones (U+FFFD), counts both; yields `{"text"}`."""

    def classify(ex):
        text = ex[text_key]
        repaired = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        empty = tf.strings.length(tf.strings.strip(text)) == 0
        status = tf.where(empty, 1, tf.where(tf.not_equal(repaired, text), 2, 0))
        with tf.control_dependencies([stats.add(status)]):
            return {"text": tf.identity(repaired), "empty": empty}

    # Sequential map: the counters are updated exactly once per document.
    def keep(ex):
        return tf.logical_not(ex["empty"])

    def text_only(ex):
        return {"text": ex["text"]}

    return dataset.map(classify).filter(keep).map(text_only)


def tokenize_documents(
    dataset: tf.data.Dataset,
    vocabulary: Any,
    stats: DocumentStats,
    eos_id: int = vocabularies.EOS_ID,
    min_doc_tokens: int = 3,
) -> tf.data.Dataset:
    """`{"text"}` -> `{"targets": tokens + [eos]}`; counts documents under `min_doc_tokens` as short."""

    def tokenize(ex):
        tokens = tf.cast(vocabulary.encode_tf(ex["text"]), tf.int32)
        short = tf.size(tokens) < min_doc_tokens
        with tf.control_dependencies([stats.add(3, tf.cast(short, tf.int64))]):
            return {"targets": tf.concat([tokens, [eos_id]], 0)}

    return dataset.map(tokenize)  # sequential: the counters are updated exactly once per document


def pack_stream(dataset: tf.data.Dataset, length: int, feature: str = "targets") -> tf.data.Dataset:
    """Concatenates the documents' tokens and cuts the stream into pieces of exactly `length` tokens."""

    def step(buffer, ex):
        stream = tf.concat([buffer, ex[feature]], 0)
        full = tf.size(stream) // length
        pieces = tf.reshape(stream[: full * length], [full, length])
        return stream[full * length :], pieces

    initial = tf.zeros([0], tf.int32)
    ds = dataset.scan(initial, step)
    return ds.unbatch().map(lambda tokens: {feature: tokens})


@dataclasses.dataclass(frozen=True)
class PretrainingConfig:
    """How documents become examples (shared by the UL2 and PrefixLM tasks of a corpus)."""

    denoisers: Sequence[ul2.Denoiser] = ul2.T5GEMMA2_DENOISERS
    seed: int = 0  # corruption / denoiser-sampling seed
    sentinel_ids: Optional[Sequence[int]] = None  # None: the last ids of the vocabulary, counting down
    min_doc_tokens: int = 3
    text_key: str = "text"  # the sources' text feature (file sources always yield "text")
    batch_size: int = 128  # rows per vectorized corruption batch

    def __post_init__(self):
        object.__setattr__(self, "denoisers", ul2.validate_denoisers(self.denoisers))


# What tasks registered without an explicit config use, resolved when a dataset is built (so gin
# bindings parsed after this module's import apply): `PretrainingConfig()`, through gin when gin
# has it registered (`register_gin_configurables`).
_config_factory: Any = PretrainingConfig


def default_config() -> PretrainingConfig:
    """The configuration of tasks registered with `config=None` (gin-bound when gin is in use)."""
    return _config_factory()


def register_gin_configurables() -> None:
    """Makes `PretrainingConfig`, `Denoiser` and the mixtures gin-configurable (idempotent).

    Gin files `import tasks.pretraining` and bind e.g. `PretrainingConfig.denoisers`.
    """
    global _config_factory
    try:
        import gin
    except ImportError:
        return
    if _config_factory is not PretrainingConfig:
        return
    _config_factory = gin.external_configurable(PretrainingConfig, module="tasks.pretraining")
    gin.external_configurable(ul2.Denoiser, module="tasks.pretraining")
    gin.external_configurable(ul2.t5gemma2_denoisers, module="tasks.pretraining")
    gin.external_configurable(ul2.original_ul2_denoisers, module="tasks.pretraining")


def _sentinels(config: PretrainingConfig, vocabulary: Any, count: int) -> Sequence[int]:
    if config.sentinel_ids is not None:
        return tuple(config.sentinel_ids)
    return vocabularies.sentinel_ids(vocabulary.vocab_size, count)


def _documents(dataset, output_features, config: PretrainingConfig, task_name: str):
    vocabulary = output_features["targets"].vocabulary
    stats = document_stats(task_name)
    ds = clean_documents(dataset, stats, config.text_key)
    return tokenize_documents(ds, vocabulary, stats, min_doc_tokens=config.min_doc_tokens), vocabulary


def ul2_preprocessor(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    *,
    config: Optional[PretrainingConfig],
    task_name: str,
) -> tf.data.Dataset:
    """Documents -> packed pieces -> UL2 mixture of denoisers (`{"inputs", "targets"}`)."""
    config = config or default_config()
    raw_length = min(int(sequence_length["inputs"]), int(sequence_length["targets"])) - 2
    if raw_length < 2:
        raise ValueError(f"TASK_FEATURE_LENGTHS {dict(sequence_length)} too short for UL2 (need >= 4 each)")
    ds, vocabulary = _documents(dataset, output_features, config, task_name)
    ds = pack_stream(ds, raw_length)
    sentinels = _sentinels(config, vocabulary, ul2.max_spans(config.denoisers, raw_length))
    return ul2.ul2_denoise(
        ds,
        config.denoisers,
        seed=config.seed,
        sentinel_ids=sentinels,
        max_length=raw_length,
        batch_size=config.batch_size,
    )


def prefix_lm_preprocessor(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    *,
    config: Optional[PretrainingConfig],
    task_name: str,
) -> tf.data.Dataset:
    """Documents -> packed sequences of 2 * min(inputs, targets) -> split exactly in half."""
    config = config or default_config()
    ds, _ = _documents(dataset, output_features, config, task_name)
    return prefix_lm.split_in_half(pack_stream(ds, prefix_lm.prefix_lm_length(sequence_length)))


def _output_features(vocabulary: Any) -> dict[str, seqio.Feature]:
    # Eos is placed by the preprocessors (UL2: after inputs and targets; PrefixLM: per document).
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=False, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=False),
    }


def register_tasks(
    name: str,
    source: seqio.DataSource,
    vocabulary: Any,
    config: Optional[PretrainingConfig] = None,
) -> tuple[str, str]:
    """Registers `{name}_ul2` and `{name}_prefix_lm` (replacing earlier registrations); returns the names."""
    names = (f"{name}_ul2", f"{name}_prefix_lm")
    for task_name, preprocessor in zip(names, (ul2_preprocessor, prefix_lm_preprocessor)):
        seqio.TaskRegistry.remove(task_name)
        seqio.TaskRegistry.add(
            task_name,
            source=source,
            preprocessors=[functools.partial(preprocessor, config=config, task_name=task_name)],
            output_features=_output_features(vocabulary),
            metric_fns=[],
        )
    return names


def register_mixture(name: str, tasks: Sequence[str], rates: Optional[Sequence[float]] = None) -> str:
    """A seqio mixture of registered tasks (equal rates by default)."""
    rates = rates or [1.0] * len(tasks)
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(zip(tasks, rates)))
    return name


# --- sources -----------------------------------------------------------------------------------


def c4_source(tfds_name: str = "c4/en:3.1.0", tfds_data_dir: Optional[str] = None) -> seqio.DataSource:
    """C4 through TFDS (prepared data; nothing is downloaded by the pipeline)."""
    return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=("train", "validation"))


def _files(pattern: str) -> list[str]:
    files = sorted(glob_lib.glob(pattern)) if not pattern.startswith("gs://") else tf.io.gfile.glob(pattern)
    if not files:
        raise ValueError(f"no files match {pattern!r}; check the path / glob")
    return files


def _parse_example(text_key: str):
    spec = {text_key: tf.io.FixedLenFeature([], tf.string)}
    return lambda record: {"text": tf.io.parse_single_example(record, spec)[text_key]}


def _jsonl_lines(path: str, text_key: str):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                try:  # invalid UTF-8 survives as surrogates and is counted / repaired in-graph
                    value = json.loads(line.decode("utf-8", errors="surrogateescape")).get(text_key, "")
                except (ValueError, AttributeError):  # malformed JSON line: an empty document
                    value = ""
                yield value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) else b""


def file_source(
    file_pattern: str | Mapping[str, str],
    file_format: str = "text",
    text_key: str = "text",
) -> seqio.DataSource:
    """`{"text"}` documents from local (or gs://) files by glob: "text" (one per line), "jsonl" (`text_key` field),
    "tfrecord" (tf.train.Example with a `text_key` bytes feature) or "array_record" (records of
    tf.train.Example, or raw UTF-8 text when they do not parse as one). A dict maps split -> glob.
    """
    splits = dict(file_pattern) if isinstance(file_pattern, Mapping) else {"train": file_pattern}
    if file_format == "text":
        return _KeyedSource(seqio.TextLineDataSource(splits, skip_header_lines=0), "text")

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        files = _files(splits[split])
        if file_format == "tfrecord":
            return tf.data.TFRecordDataset(files).map(_parse_example(text_key))
        if file_format == "jsonl":

            def gen():
                for path in files:
                    yield from _jsonl_lines(path, text_key)

        elif file_format == "array_record":
            from array_record.python import array_record_data_source

            def gen():
                source = array_record_data_source.ArrayRecordDataSource(files)
                for i in range(len(source)):
                    yield source[i]

        else:
            raise ValueError(f"unknown file_format {file_format!r}; use text, jsonl, tfrecord or array_record")
        ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.string))
        if file_format == "array_record":
            parse = _parse_example(text_key)

            def to_text(record):
                # Records that are not tf.train.Example are taken as raw text.
                is_example = tf.strings.regex_full_match(tf.strings.substr(record, 0, 1), "\n")
                return tf.cond(is_example, lambda: parse(record), lambda: {"text": record})

            return ds.map(to_text)
        return ds.map(lambda text: {"text": text})

    return seqio.FunctionDataSource(dataset_fn, splits=list(splits))


def register_file_tasks(
    name: str,
    file_pattern: str | Mapping[str, str],
    file_format: str = "text",
    vocabulary: Any = None,
    config: Optional[PretrainingConfig] = None,
    text_key: str = "text",
) -> tuple[str, str]:
    """Registers `{name}_ul2` / `{name}_prefix_lm` over local files (vocabulary default: Gemma 2).

    `text_key`: the JSONL field / tf.train.Example feature holding the text.
    """
    vocabulary = vocabulary or vocabularies.gemma_vocabulary()
    return register_tasks(name, file_source(file_pattern, file_format, text_key), vocabulary, config)


class _KeyedSource(seqio.DataSource):
    """Wraps a source of plain strings (TextLineDataSource) into `{text_key: line}` examples."""

    def __init__(self, inner: seqio.DataSource, text_key: str):
        self._inner = inner
        self._text_key = text_key
        super().__init__(splits=inner.splits, num_input_examples=None, caching_permitted=inner.caching_permitted)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return self._inner.supports_arbitrary_sharding

    def list_shards(self, split: str) -> Sequence[str]:
        return self._inner.list_shards(split)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None, shard_info=None, **kwargs):
        ds = self._inner.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info, **kwargs)
        return ds.map(lambda line: {self._text_key: line})


def pydoc_source() -> seqio.DataSource:
    """CPython's pydoc help text, one document per topic (train) — ships with Python (demo)."""
    from pydoc_data import topics

    texts = [topics.topics[k] for k in sorted(topics.topics)]

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({"text": texts})

    return seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"])


def register_demo_tasks(config: Optional[PretrainingConfig] = None) -> tuple[str, str]:
    """`pydoc_ul2` and `pydoc_prefix_lm`: pydoc text with the small vocabulary (trained on first use)."""
    return register_tasks("pydoc", pydoc_source(), vocabularies.small_vocabulary(), config)


def register_c4_tasks(
    tokenizer_path: str = vocabularies.GEMMA2_TOKENIZER,
    tfds_name: str = "c4/en:3.1.0",
    config: Optional[PretrainingConfig] = None,
) -> tuple[str, str]:
    """`c4_ul2` and `c4_prefix_lm` over TFDS C4 with a Gemma tokenizer."""
    return register_tasks("c4", c4_source(tfds_name), vocabularies.gemma_vocabulary(tokenizer_path), config)


register_gin_configurables()
register_c4_tasks()
register_demo_tasks()

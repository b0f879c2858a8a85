"""GLUE for encoder-only finetuning: readers for the official TSVs and TFDS `glue/*`, seqio tasks.

Two sources give the same raw examples (TFDS field names, TFDS class indices, `idx` the row number):
- "tsv": a local `GLUE_DIR` of the official `glue_data/` files (`CoLA/train.tsv`, `SST-2/dev.tsv`,
  `MNLI/dev_matched.tsv`, ...), read with CSV quoting off (many rows hold unbalanced `"`);
  files with a header are read by column name, CoLA (no header) by position;
- "tfds": `glue/<config>` from TensorFlow Datasets (the users' path; prepared by TFDS, never here).

| task | TSV dir | fields (TFDS)              | labels (class index = position)                 |
|------|---------|----------------------------|-------------------------------------------------|
| cola | CoLA    | sentence                   | unacceptable, acceptable (TSV 0/1)              |
| sst2 | SST-2   | sentence                   | negative, positive (TSV 0/1)                    |
| mrpc | MRPC    | sentence1, sentence2       | not_equivalent, equivalent (TSV Quality 0/1)    |
| stsb | STS-B   | sentence1, sentence2       | a similarity score in [0, 5] (regression)       |
| qqp  | QQP     | question1, question2       | not_duplicate, duplicate (TSV 0/1)              |
| mnli | MNLI    | premise, hypothesis        | entailment, neutral, contradiction (gold_label) |
| qnli | QNLI    | question, sentence         | entailment, not_entailment                      |
| rte  | RTE     | sentence1, sentence2       | entailment, not_entailment                      |
| wnli | WNLI    | sentence1, sentence2       | not_entailment, entailment (TSV 0/1)            |

Splits: train, validation (dev.tsv), test (test.tsv, label -1); MNLI has validation_matched /
validation_mismatched (dev_matched.tsv / dev_mismatched.tsv) and test_matched / test_mismatched.
The encoder input is T5's text form, e.g. `rte sentence1: ... sentence2: ...` (fields stripped).

Bad input (wrong column count, missing header column, unknown label, unparsable score): a
`GlueDataError` naming file and line, or, with `on_error="skip"`, the line is skipped and counted.
A file that yields no example is always an error. A head that does not fit the task (a
classification head on STS-B, a regression head elsewhere, a wrong class count) fails at
configuration time (`check_head`).

TensorFlow, TFDS and seqio are imported lazily (only `register_glue` and the TFDS reader need them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

logger = logging.getLogger(__name__)

TFDS_VERSION = "2.0.0"
_NLI2 = ("entailment", "not_entailment")


@dataclasses.dataclass(frozen=True)
class GlueSpec:
    """One GLUE task.

    Attributes:
      name: our short name and TFDS config ("sst2").
      directory: the official directory under GLUE_DIR ("SST-2").
      fields: TFDS text fields, in input order.
      columns: TSV header name of each field (same order); CoLA: column positions.
      label_column: TSV header name (or CoLA position) of the label.
      label_names: TFDS class names; () for the regression task.
      tsv_labels: TSV label strings in class order (None: the TSV holds the class index).
      num_columns: column count of a header-less file (CoLA).
      validation_splits: the dev splits and their files.
      train_size: official number of training examples.
    """

    name: str
    directory: str
    fields: tuple[str, ...]
    columns: tuple[Any, ...]
    label_column: Any
    label_names: tuple[str, ...]
    tsv_labels: Optional[tuple[str, ...]] = None
    num_columns: Optional[int] = None
    validation_splits: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)
    train_size: int = 0

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def split_files(self) -> dict[str, str]:
        files = {"train": "train.tsv", **dict(self.validation_splits)}
        for split, name in self.validation_splits:
            files[split.replace("validation", "test")] = name.replace("dev", "test")
        return files


SPECS: dict[str, GlueSpec] = {
    s.name: s
    for s in (
        GlueSpec("cola", "CoLA", ("sentence",), (3,), 1, ("unacceptable", "acceptable"), num_columns=4,
                 train_size=8551),
        GlueSpec("sst2", "SST-2", ("sentence",), ("sentence",), "label", ("negative", "positive"), train_size=67349),
        GlueSpec("mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality",
                 ("not_equivalent", "equivalent"), train_size=3668),
        GlueSpec("stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", (),
                 train_size=5749),
        GlueSpec("qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
                 ("not_duplicate", "duplicate"), train_size=363846),
        GlueSpec("mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
                 validation_splits=(("validation_matched", "dev_matched.tsv"),
                                    ("validation_mismatched", "dev_mismatched.tsv")),
                 train_size=392702),
        GlueSpec("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI2, _NLI2,
                 train_size=104743),
        GlueSpec("rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2, _NLI2,
                 train_size=2490),
        GlueSpec("wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
                 ("not_entailment", "entailment"), train_size=635),
    )
}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


class GlueDataError(ValueError):
    """A GLUE input file is malformed; the message names the file and line."""


@dataclasses.dataclass
class ReadStats:
    """What a read saw: the file, its data lines, and the skipped ones (with the first errors)."""

    path: str = ""
    lines: int = 0
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


def spec(task: str) -> GlueSpec:
    """The spec of a GLUE task by name ("rte", "SST-2", "sts-b", ...)."""
    key = _ALIASES.get(task.lower(), task.lower().replace("-", "").replace("_", ""))
    if key not in SPECS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(SPECS)}.")
    return SPECS[key]


def tsv_path(task: str, split: str, data_dir: str) -> str:
    """The official TSV of a split under GLUE_DIR; a clear error when it is missing."""
    s = spec(task)
    files = s.split_files
    if split not in files:
        raise ValueError(f"GLUE {s.name} has no split {split!r}; splits: {sorted(files)}.")
    path = os.path.join(data_dir, s.directory, files[split])
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"GLUE {s.name} {split}: {path} does not exist; GLUE_DIR must hold the official glue_data/ layout "
            f"({s.directory}/{files[split]})."
        )
    return path


def _label(s: GlueSpec, value: str, where: str) -> float | int:
    value = value.strip()
    if s.is_regression:
        try:
            return float(value)
        except ValueError:
            raise GlueDataError(f"{where}: score {value!r} is not a number") from None
    if s.tsv_labels is not None:
        if value not in s.tsv_labels:
            raise GlueDataError(f"{where}: unknown label {value!r} for {s.name}; expected one of {list(s.tsv_labels)}")
        return s.tsv_labels.index(value)
    if value not in [str(i) for i in range(s.num_classes)]:
        raise GlueDataError(
            f"{where}: unknown label {value!r} for {s.name}; expected one of {list(range(s.num_classes))}"
        )
    return int(value)


def iter_tsv(
    task: str, split: str, data_dir: str, *, on_error: str = "raise", stats: Optional[ReadStats] = None
) -> Iterator[dict[str, Any]]:
    """Streams raw examples `{idx, <fields>, label}` of an official TSV split (quoting off)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    s = spec(task)
    path = tsv_path(task, split, data_dir)
    stats = stats if stats is not None else ReadStats()
    stats.path = path
    produced = 0
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's BOM
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if s.num_columns is None:
        header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
        wanted = list(s.columns) + ([s.label_column] if not split.startswith("test") else [])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise GlueDataError(f"{path}:1: header {header} lacks the column(s) {missing} that {s.name} needs")
        columns = [header.index(c) for c in s.columns]
        label_col = header.index(s.label_column) if s.label_column in header else None
        width, first = len(header), 2
    else:
        columns, label_col, width, first = list(s.columns), s.label_column, s.num_columns, 1
    body = lines[1:] if s.num_columns is None else lines
    for lineno, line in enumerate(body, start=first):
        line = line.rstrip("\r")
        if not line:
            continue
        stats.lines += 1
        where = f"{path}:{lineno}"
        try:
            cells = line.split("\t")
            if len(cells) != width:
                raise GlueDataError(f"{where}: expected {width} tab-separated columns, found {len(cells)}")
            ex: dict[str, Any] = {"idx": produced}
            for field, col in zip(s.fields, columns):
                ex[field] = cells[col]
            ex["label"] = -1 if label_col is None else _label(s, cells[label_col], where)
        except GlueDataError as e:
            if on_error == "raise":
                raise
            stats.skipped += 1
            if len(stats.errors) < 20:
                stats.errors.append(str(e))
            continue
        produced += 1
        yield ex
    if stats.skipped:
        logger.warning("%s: skipped %d of %d lines (first: %s)", path, stats.skipped, stats.lines, stats.errors[0])
    if produced == 0:
        raise GlueDataError(f"{path}: no examples read ({stats.lines} lines, {stats.skipped} skipped)")


def read_tsv(task: str, split: str, data_dir: str, *, on_error: str = "raise") -> tuple[list[dict], ReadStats]:
    """All raw examples of an official TSV split, and what was skipped."""
    stats = ReadStats()
    return list(iter_tsv(task, split, data_dir, on_error=on_error, stats=stats)), stats


def _to_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item"):
        return value.item()
    return value


def iter_tfds(task: str, split: str, *, data_dir: Optional[str] = None, download: bool = False) -> Iterator[dict]:
    """Streams raw examples of TFDS `glue/<task>` (prepared beforehand unless `download`)."""
    import tensorflow_datasets as tfds  # lazy: the data layer only

    s = spec(task)
    ds = tfds.load(f"glue/{s.name}:{TFDS_VERSION}", split=split, data_dir=data_dir, download=download)
    for ex in ds.as_numpy_iterator():
        yield {k: _to_python(v) for k, v in ex.items()}


def iter_raw(
    task: str, split: str, *, source: str = "tsv", data_dir: Optional[str] = None, on_error: str = "raise",
    tfds_download: bool = False,
) -> Iterator[dict]:
    """Raw examples from either source ("tsv": `data_dir` is GLUE_DIR; "tfds": TFDS's data_dir)."""
    if source == "tsv":
        if not data_dir:
            raise ValueError("source='tsv' needs data_dir (the GLUE_DIR holding CoLA/, SST-2/, ...)")
        return iter_tsv(task, split, data_dir, on_error=on_error)
    if source == "tfds":
        return iter_tfds(task, split, data_dir=data_dir, download=tfds_download)
    raise ValueError(f"unknown GLUE source {source!r}; expected 'tsv' or 'tfds'")


def input_text(task: str, ex: Mapping[str, Any]) -> str:
    """The encoder input, T5's form: `<task> <field>: <text> ...` with each text stripped."""
    s = spec(task)
    return " ".join([s.name] + [f"{f}: {str(ex[f]).strip()}" for f in s.fields])


# ----------------------------------------------------------------------------------------------------
# Heads.


def head_config(task: str, **overrides: Any):
    """The `HeadConfig` a task needs (regression for STS-B, n classes otherwise) with `overrides`."""
    from adaptation.models.heads import HeadConfig

    s = spec(task)
    base = {"output": "regression"} if s.is_regression else {"output": "classification", "num_classes": s.num_classes}
    head = HeadConfig(**{**base, **overrides})
    check_head(task, head)
    return head


def check_head(task: str, head: Any) -> None:
    """Raises when `head` (a `HeadConfig`) cannot serve `task`."""
    s = spec(task)
    if s.is_regression and head.output != "regression":
        raise ValueError(f"GLUE {s.name} is a regression task (a score in [0, 5]); the head's output is "
                         f"{head.output!r}: set HeadConfig.output = 'regression'.")
    if not s.is_regression:
        if head.output != "classification":
            raise ValueError(f"GLUE {s.name} is a {s.num_classes}-class task; the head's output is {head.output!r}: "
                             "set HeadConfig.output = 'classification'.")
        if head.num_classes != s.num_classes:
            raise ValueError(f"GLUE {s.name} has {s.num_classes} classes {s.label_names}; the head has "
                             f"num_classes={head.num_classes}.")


# ----------------------------------------------------------------------------------------------------
# seqio.


def dataset_fn(task: str, *, source: str, data_dir: Optional[str], on_error: str = "raise",
               tfds_download: bool = False):
    """A seqio `dataset_fn(split, shuffle_files, seed=None)` of `{inputs, label, idx}`."""
    s = spec(task)

    def fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        import tensorflow as tf

        del shuffle_files, seed
        label_dtype = tf.float32 if s.is_regression else tf.int32
        signature = {"inputs": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], label_dtype),
                     "idx": tf.TensorSpec([], tf.int32)}

        def gen():
            for ex in iter_raw(s.name, split, source=source, data_dir=data_dir, on_error=on_error,
                               tfds_download=tfds_download):
                yield {"inputs": input_text(s.name, ex), "label": ex["label"], "idx": ex["idx"]}

        return tf.data.Dataset.from_generator(gen, output_signature=signature)

    return fn


def task_name(task: str, prefix: str = "glue") -> str:
    """Registered seqio name, e.g. `glue_rte_encoder`."""
    return f"{prefix}_{spec(task).name}_encoder"


def register_glue(
    vocabulary: Any,
    *,
    source: str = "tsv",
    data_dir: Optional[str] = None,
    prefix: str = "glue",
    tasks: Optional[Sequence[str]] = None,
    on_error: str = "raise",
    tfds_download: bool = False,
    overwrite: bool = True,
) -> list[str]:
    """Registers one seqio task per GLUE task (`<prefix>_<task>_encoder`: inputs, label, idx); returns names.

    `source`/`data_dir`: "tsv" with the GLUE_DIR, or "tfds" with TFDS's data_dir. Nothing is read here.
    """
    import seqio  # lazy: the data layer only

    if source not in ("tsv", "tfds"):
        raise ValueError(f"unknown GLUE source {source!r}; expected 'tsv' or 'tfds'")
    if source == "tsv" and not data_dir:
        raise ValueError("source='tsv' needs data_dir (the GLUE_DIR holding CoLA/, SST-2/, ...)")
    names = []
    for t in tasks or tuple(SPECS):
        s = spec(t)
        name = task_name(s.name, prefix)
        if overwrite and name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                dataset_fn(s.name, source=source, data_dir=data_dir, on_error=on_error, tfds_download=tfds_download),
                splits=tuple(s.split_files),
            ),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features={"inputs": seqio.Feature(vocabulary, add_eos=True)},
            shuffle_buffer_size=10_000,
        )
        names.append(name)
    return names

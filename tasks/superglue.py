"""SuperGLUE as seqio tasks: two sources, two castings, one preprocessing.

Sources. Both yield the same *raw examples*, the TFDS `super_glue/*` feature dicts (ints for labels
and idx, `str` text):
- "tfds": TFDS `super_glue/<config>:1.0.2` (downloads and prepares when a user is online; tests never
  read it);
- "jsonl": a local directory of the official SuperGLUE v2 files (`<dir>/RTE/train.jsonl`, `val.jsonl`,
  `test.jsonl`, `<dir>/AX-b/AX-b.jsonl`, ...; the gin macro `SUPERGLUE_DIR`), converted exactly as the
  TFDS builder converts them: MultiRC one example per answer option with `idx` {paragraph, question,
  answer}; ReCoRD one example per query with `entities` the sorted set of entity strings
  (`text[start:end + 1]`, end inclusive) and `answers` the sorted set of answer strings; WSC's `target`
  flattened; labels as indices into TFDS's class names; unlabelled (test) examples get label -1;
  AX-b's string `idx` ("0") becomes an int. A line with bad JSON, missing fields or an unknown label
  raises an error naming file and line (`on_error="skip"` skips and counts such lines instead).
Everything after the raw examples (`cast`) is plain Python shared by both sources.

Casting "text" (T5-style text-to-text; inputs as T5's `glue` preprocessor writes them, feature keys in
sorted order after the task name; targets are TFDS's class names, "<unk>" when unlabelled):
- BoolQ   `boolq passage: P question: Q` -> False | True
- CB      `cb hypothesis: H premise: P` -> entailment | contradiction | neutral
- COPA    `copa choice1: A choice2: B premise: P question: cause|effect` -> choice1 | choice2
- MultiRC `multirc question: Q answer: A paragraph: P` (`<br>` -> space, `<b>`/`</b>` removed), one
          example per answer option -> False | True
- ReCoRD  `record query: Q entities: E1, E2, ... passage: P` (`@highlight` lines joined into sentences
          as T5 does); training: one example per gold answer, target the answer; eval: one example per
          query, target the first gold answer, all gold answers carried in `answers`
- RTE     `rte hypothesis: H premise: P` -> entailment | not_entailment
- WiC     `wic sentence1: S1 sentence2: S2 word: W` -> False | True
- WSC     `wsc span1_text: S1 span2_text: S2 text: T` with the pronoun (span 2) marked `*he*` in T, so
          the right occurrence is named -> False | True (coreference yes/no, as the classifier)
- AX-b / AX-g: cast as RTE (`rte hypothesis: sentence2 premise: sentence1`), to be read by a model
  finetuned on RTE.
A decoded prediction maps back to a label by exact match with a class name (after stripping spaces);
anything else is label -1, always wrong. ReCoRD's prediction is the decoded answer string itself.

Casting "classifier" (the T5Gemma paper's protocol: an encoder classifier on the last non-pad token,
dropout + linear, all parameters trained): the same input texts, and `label` an int class index.
- BoolQ, CB (3 classes), RTE, WiC, AX-b, AX-g: the task's own classes, TFDS's order.
- MultiRC: one binary example per answer option (is this option correct?).
- WSC: span coreference as one binary example (does span 2 refer to span 1?).
- COPA: one binary example per candidate, `copa premise: P question: Q choice: Ck`, label 1 for the
  right choice; the prediction per question is the candidate with the higher score
  (score head: logit[1] - logit[0]).
- ReCoRD: one binary example per candidate entity, the query with `@placeholder` replaced by the
  entity: `record query: Q[entity] passage: P`, label 1 when the entity is a gold answer; the
  prediction per query is the highest-scoring entity.
Every cast example carries its `idx` (MultiRC `idx/paragraph`, `idx/question`, `idx/answer`; ReCoRD
`idx/passage`, `idx/query`) and, for candidates, `candidate` (COPA 0/1, ReCoRD the entity's rank in
`entities`), so predictions can be grouped back; see `adaptation.superglue_report`.

TensorFlow, TFDS and seqio are imported lazily (only `register_superglue` and the TFDS reader need
them); the casting and the JSONL reader are plain Python.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

CASTINGS = ("text", "classifier")
TFDS_VERSION = "1.0.2"
UNKNOWN_TARGET = "<unk>"
# Separates the gold answers of a ReCoRD query inside one string feature (never occurs in text).
ANSWER_SEPARATOR = "\x1f"

_BOOL = ("False", "True")
_NLI2 = ("entailment", "not_entailment")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One SuperGLUE task: names, files, fields and classes.

    Attributes:
      name: our short name ("rte"), used in task names and metrics.
      official: the official name, directory and leaderboard file stem ("RTE").
      tfds_config: the TFDS `super_glue` config.
      fields: fields every JSONL line must have (besides `label`).
      label_names: TFDS's class names; a class index is a position in this tuple.
      splits: the splits the task has.
      train_size: official number of training examples (mixture rates).
    """

    name: str
    official: str
    tfds_config: str
    fields: tuple[str, ...]
    label_names: tuple[str, ...]
    splits: tuple[str, ...] = ("train", "validation", "test")
    train_size: int = 0

    @property
    def num_classes(self) -> int:
        """Classes of the classifier casting (candidate tasks are binary)."""
        return len(self.label_names)


SPECS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        TaskSpec("boolq", "BoolQ", "boolq", ("question", "passage", "idx"), _BOOL, train_size=9427),
        TaskSpec("cb", "CB", "cb", ("premise", "hypothesis", "idx"), ("entailment", "contradiction", "neutral"),
                 train_size=250),
        TaskSpec("copa", "COPA", "copa", ("premise", "choice1", "choice2", "question", "idx"),
                 ("choice1", "choice2"), train_size=400),
        TaskSpec("multirc", "MultiRC", "multirc", ("idx", "passage"), _BOOL, train_size=27243),
        TaskSpec("record", "ReCoRD", "record", ("idx", "passage", "qas"), _BOOL, train_size=100730),
        TaskSpec("rte", "RTE", "rte", ("premise", "hypothesis", "idx"), _NLI2, train_size=2490),
        TaskSpec("wic", "WiC", "wic",
                 ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2", "idx"), _BOOL,
                 train_size=5428),
        TaskSpec("wsc", "WSC", "wsc", ("text", "target", "idx"), _BOOL, train_size=554),
        TaskSpec("axb", "AX-b", "axb", ("sentence1", "sentence2", "idx"), _NLI2, splits=("test",)),
        TaskSpec("axg", "AX-g", "axg", ("premise", "hypothesis", "idx"), _NLI2, splits=("test",)),
    )
}
TRAIN_TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
_SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}


class SuperGlueDataError(ValueError):
    """A SuperGLUE input file is malformed; the message names the file and line."""


def spec(task: str) -> TaskSpec:
    """The `TaskSpec` of a task name ("rte", ...; official names such as "RTE" or "AX-b" are accepted)."""
    key = task.lower().replace("-", "")
    if key not in SPECS:
        raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {sorted(SPECS)}")
    return SPECS[key]


def _check_split(s: TaskSpec, split: str) -> None:
    if split not in s.splits:
        raise ValueError(f"{s.official} has no split {split!r}; its splits are {s.splits}")


# ----------------------------------------------------------------------------------------------------
# Local JSONL source.


def jsonl_path(task: str, split: str, data_dir: str) -> str:
    """Path of the official JSONL file of a task split, with a clear error when it is absent."""
    s = spec(task)
    _check_split(s, split)
    task_dir = os.path.join(data_dir, s.official)
    if not os.path.isdir(task_dir):
        raise FileNotFoundError(
            f"SuperGLUE task directory {task_dir} does not exist; expected the official layout "
            f"<SUPERGLUE_DIR>/{s.official}/*.jsonl (set SUPERGLUE_DIR to the folder holding {s.official}/)"
        )
    name = f"{s.official}.jsonl" if s.name in ("axb", "axg") else _SPLIT_FILES[split]
    path = os.path.join(task_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; {task_dir} holds {sorted(os.listdir(task_dir))}")
    return path


def _label_index(s: TaskSpec, value: Any, where: str) -> int:
    """Index of a JSONL label among TFDS's class names (bool, 0/1 or class-name string)."""
    if s.name == "copa" or s.name == "multirc":
        if isinstance(value, bool) or value not in (0, 1):
            raise SuperGlueDataError(f"{where}: unknown label {value!r} for {s.official}; expected 0 or 1")
        return int(value)
    if s.label_names == _BOOL:
        if not isinstance(value, bool):
            raise SuperGlueDataError(f"{where}: unknown label {value!r} for {s.official}; expected true or false")
        return int(value)
    if value not in s.label_names:
        raise SuperGlueDataError(f"{where}: unknown label {value!r} for {s.official}; expected one of {s.label_names}")
    return s.label_names.index(value)


def _int_idx(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SuperGlueDataError(f"{where}: idx {value!r} is not an integer")
    try:
        return int(value)
    except ValueError:
        raise SuperGlueDataError(f"{where}: idx {value!r} is not an integer") from None


def _require(row: Mapping[str, Any], fields: Iterable[str], where: str, what: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise SuperGlueDataError(f"{where}: {what} is missing field(s) {missing}; it has {sorted(row)}")


def _labelled(s: TaskSpec, split: str, row: Mapping[str, Any], where: str, what: str) -> int:
    """The label index of a row, -1 for an unlabelled test row; a missing label elsewhere is an error."""
    if "label" in row:
        return _label_index(s, row["label"], where)
    if split == "test":
        return -1
    raise SuperGlueDataError(f"{where}: {what} is missing field(s) ['label'] (only test rows may be unlabelled)")


def raw_examples_from_row(s: TaskSpec, row: Mapping[str, Any], split: str, where: str) -> list[dict[str, Any]]:
    """The TFDS-format raw examples of one official JSONL row (several for MultiRC)."""
    if not isinstance(row, dict):
        raise SuperGlueDataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    _require(row, s.fields, where, f"this {s.official} line")
    if s.name == "multirc":
        passage = row["passage"]
        _require(passage, ("text", "questions"), where, "passage")
        out = []
        for question in passage["questions"]:
            _require(question, ("question", "idx", "answers"), where, "a question")
            for answer in question["answers"]:
                what = f"answer {answer.get('idx')!r} of question {question['idx']!r}"
                _require(answer, ("text", "idx"), where, what)
                out.append({
                    "paragraph": passage["text"], "question": question["question"], "answer": answer["text"],
                    "idx": {"paragraph": _int_idx(row["idx"], where), "question": _int_idx(question["idx"], where),
                            "answer": _int_idx(answer["idx"], where)},
                    "label": _labelled(s, split, answer, where, what),
                })
        return out
    if s.name == "record":
        passage = row["passage"]
        _require(passage, ("text", "entities"), where, "passage")
        text = passage["text"]
        entities = sorted({text[e["start"]: e["end"] + 1] for e in passage["entities"]})
        out = []
        for qa in row["qas"]:
            _require(qa, ("query", "idx"), where, "a query")
            if "answers" not in qa and split != "test":
                raise SuperGlueDataError(f"{where}: query {qa['idx']!r} is missing field(s) ['answers']")
            out.append({
                "passage": text, "query": qa["query"], "entities": entities,
                "answers": sorted({a["text"] for a in qa.get("answers", [])}),
                "idx": {"passage": _int_idx(row["idx"], where), "query": _int_idx(qa["idx"], where)},
            })
        return out
    row = dict(row)
    if s.name == "wsc":
        target = row["target"]
        _require(target, ("span1_index", "span2_index", "span1_text", "span2_text"), where, "target")
        row.update(target)
        fields = ("text", "span1_index", "span2_index", "span1_text", "span2_text")
    else:
        fields = tuple(f for f in s.fields if f != "idx")
    example = {f: row[f] for f in fields}
    example["idx"] = _int_idx(row["idx"], where)
    example["label"] = _labelled(s, split, row, where, f"this {s.official} line")
    return [example]


@dataclasses.dataclass
class ReadStats:
    """What a JSONL read skipped (with `on_error="skip"`)."""

    path: str = ""
    lines: int = 0
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


def iter_jsonl(
    task: str, split: str, data_dir: str, *, on_error: str = "raise", stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """Streams the raw (TFDS-format) examples of an official JSONL split.

    `on_error`: "raise" (a `SuperGlueDataError` naming file and line) or "skip" (skip the line, count it
    in `stats`). A file that yields no example at all is an error either way.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    s = spec(task)
    path = jsonl_path(task, split, data_dir)
    stats = stats if stats is not None else ReadStats()
    stats.path = path
    produced = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            stats.lines += 1
            where = f"{path}:{lineno}"
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SuperGlueDataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                examples = raw_examples_from_row(s, row, split, where)
            except (SuperGlueDataError, TypeError, KeyError) as e:
                err = e if isinstance(e, SuperGlueDataError) else SuperGlueDataError(f"{where}: malformed line ({e!r})")
                if on_error == "raise":
                    raise err from None
                stats.skipped += 1
                if len(stats.errors) < 20:
                    stats.errors.append(str(err))
                continue
            for ex in examples:
                produced += 1
                yield ex
    if stats.skipped:
        logger.warning("%s: skipped %d of %d lines (first: %s)", path, stats.skipped, stats.lines, stats.errors[0])
    if produced == 0:
        raise SuperGlueDataError(f"{path}: no examples read ({stats.lines} lines, {stats.skipped} skipped)")


def read_jsonl(task: str, split: str, data_dir: str, *, on_error: str = "raise") -> tuple[list[dict], ReadStats]:
    """All raw examples of an official JSONL split, and what was skipped."""
    stats = ReadStats()
    return list(iter_jsonl(task, split, data_dir, on_error=on_error, stats=stats)), stats


# ----------------------------------------------------------------------------------------------------
# TFDS source.


def _to_python(value: Any) -> Any:
    """numpy / bytes values of a TFDS example -> plain Python (str, int, list, dict)."""
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        return _to_python(value.tolist())
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


def iter_tfds(
    task: str, split: str, *, data_dir: str | None = None, download: bool = True, version: str = TFDS_VERSION
) -> Iterator[dict[str, Any]]:
    """Streams the raw examples of TFDS `super_glue/<config>` (prepares it first when `download`)."""
    import tensorflow_datasets as tfds  # lazy: the data layer only

    s = spec(task)
    _check_split(s, split)
    ds = tfds.load(f"super_glue/{s.tfds_config}:{version}", split=split, data_dir=data_dir, download=download)
    for ex in ds.as_numpy_iterator():
        yield _to_python(ex)


def iter_raw(
    task: str, split: str, *, source: str = "jsonl", data_dir: str | None = None, on_error: str = "raise",
    tfds_download: bool = True,
) -> Iterator[dict[str, Any]]:
    """Raw examples from either source ("jsonl": `data_dir` is SUPERGLUE_DIR; "tfds": TFDS's data_dir)."""
    if source == "jsonl":
        if not data_dir:
            raise ValueError("source='jsonl' needs data_dir (the SUPERGLUE_DIR holding BoolQ/, CB/, ...)")
        return iter_jsonl(task, split, data_dir, on_error=on_error)
    if source == "tfds":
        return iter_tfds(task, split, data_dir=data_dir, download=tfds_download)
    raise ValueError(f"unknown SuperGLUE source {source!r}; expected 'jsonl' or 'tfds'")


# ----------------------------------------------------------------------------------------------------
# Casting (shared by both sources).


def _join(prefix: str, pairs: Sequence[tuple[str, str]]) -> str:
    return " ".join([prefix] + [f"{k}: {v}" for k, v in pairs])


def _target(s: TaskSpec, label: int) -> str:
    return UNKNOWN_TARGET if label < 0 else s.label_names[label]


def _strip_markup(text: str) -> str:
    """MultiRC's HTML markup, removed as T5 does."""
    return re.sub(r"<(/)?b>", "", text.replace("<br>", " "))


def _record_passage(text: str) -> str:
    """ReCoRD's `@highlight` bullet lines joined into sentences (T5's rule)."""
    text = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", text)
    return re.sub(r"\n@highlight\n", ". ", text)


def _norm_word(word: str) -> str:
    return word.strip(".,;:!?\"'()").lower()


def wsc_marked_text(ex: Mapping[str, Any]) -> str:
    """WSC text with the pronoun (span 2) wrapped in asterisks, found by its word index.

    Where the index does not point at the span text (one known case in val: index on "use", span "it"),
    the nearest occurrence of the span text is marked instead.
    """
    words = ex["text"].split(" ")
    target = [_norm_word(w) for w in ex["span2_text"].split()]
    n = len(target)

    def matches(i: int) -> bool:
        return [_norm_word(w) for w in words[i: i + n]] == target

    i = ex["span2_index"]
    if not (0 <= i < len(words) and matches(i)):
        hits = [j for j in range(len(words)) if matches(j)]
        if hits:
            i = min(hits, key=lambda j: abs(j - ex["span2_index"]))
    i = min(max(i, 0), max(len(words) - 1, 0))
    end = min(i + n, len(words))
    words = words[:i] + ["*" + " ".join(words[i:end]) + "*"] + words[end:]
    return " ".join(words)


def input_text(task: str, ex: Mapping[str, Any]) -> str:
    """The T5-style input text of a raw example (every task but COPA/ReCoRD candidates)."""
    s = spec(task)
    name = s.name
    if name == "boolq":
        return _join("boolq", [("passage", ex["passage"]), ("question", ex["question"])])
    if name == "cb":
        return _join("cb", [("hypothesis", ex["hypothesis"]), ("premise", ex["premise"])])
    if name == "copa":
        return _join("copa", [("choice1", ex["choice1"]), ("choice2", ex["choice2"]), ("premise", ex["premise"]),
                              ("question", ex["question"])])
    if name == "multirc":
        return _strip_markup(_join("multirc", [("question", ex["question"]), ("answer", ex["answer"]),
                                               ("paragraph", ex["paragraph"])]))
    if name == "record":
        return _join("record", [("query", ex["query"]), ("entities", ", ".join(ex["entities"])),
                                ("passage", _record_passage(ex["passage"]))])
    if name in ("rte", "axg"):
        return _join("rte", [("hypothesis", ex["hypothesis"]), ("premise", ex["premise"])])
    if name == "axb":
        return _join("rte", [("hypothesis", ex["sentence2"]), ("premise", ex["sentence1"])])
    if name == "wic":
        return _join("wic", [("sentence1", ex["sentence1"]), ("sentence2", ex["sentence2"]), ("word", ex["word"])])
    if name == "wsc":
        return _join("wsc", [("span1_text", ex["span1_text"]), ("span2_text", ex["span2_text"]),
                             ("text", wsc_marked_text(ex))])
    raise ValueError(f"no input text for task {task!r}")


def _meta(s: TaskSpec, ex: Mapping[str, Any]) -> dict[str, Any]:
    """The idx fields a cast example carries (flattened as `idx/<key>` for nested ids)."""
    idx = ex["idx"]
    if isinstance(idx, Mapping):
        return {f"idx/{k}": int(v) for k, v in idx.items()}
    return {"idx": int(idx)}


def cast_text(task: str, ex: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    """T5-style text-to-text examples (`inputs`, `targets` + idx) of one raw example."""
    s = spec(task)
    meta = _meta(s, ex)
    inputs = input_text(s.name, ex)
    if s.name == "record":
        answers = list(ex["answers"])
        joined = ANSWER_SEPARATOR.join(answers)
        if split == "train":
            return [{"inputs": inputs, "targets": a, "answers": joined, **meta} for a in answers]
        return [{"inputs": inputs, "targets": answers[0] if answers else UNKNOWN_TARGET, "answers": joined, **meta}]
    return [{"inputs": inputs, "targets": _target(s, ex["label"]), **meta}]


def cast_classifier(task: str, ex: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    """Classification examples (`inputs`, int `label` + idx, `candidate`) of one raw example."""
    s = spec(task)
    meta = _meta(s, ex)
    if s.name == "copa":
        out = []
        for k, choice in enumerate((ex["choice1"], ex["choice2"])):
            text = _join("copa", [("premise", ex["premise"]), ("question", ex["question"]), ("choice", choice)])
            label = -1 if ex["label"] < 0 else int(ex["label"] == k)
            out.append({"inputs": text, "label": label, "candidate": k, **meta})
        return out
    if s.name == "record":
        passage = _record_passage(ex["passage"])
        answers = set(ex["answers"])
        joined = ANSWER_SEPARATOR.join(ex["answers"])
        out = []
        for k, entity in enumerate(ex["entities"]):
            text = _join("record", [("query", ex["query"].replace("@placeholder", entity)), ("passage", passage)])
            label = int(entity in answers) if answers else (-1 if split == "test" else 0)
            out.append({"inputs": text, "label": label, "candidate": k, "entity": entity, "answers": joined, **meta})
        return out
    return [{"inputs": input_text(s.name, ex), "label": int(ex["label"]), **meta}]


def cast(task: str, ex: Mapping[str, Any], split: str, casting: str) -> list[dict[str, Any]]:
    """The cast examples of one raw example ("text" or "classifier")."""
    if casting == "text":
        return cast_text(task, ex, split)
    if casting == "classifier":
        return cast_classifier(task, ex, split)
    raise ValueError(f"unknown casting {casting!r}; expected one of {CASTINGS}")


def iter_cast(task: str, raw: Iterable[Mapping[str, Any]], split: str, casting: str) -> Iterator[dict[str, Any]]:
    """Cast a stream of raw examples."""
    for ex in raw:
        yield from cast(task, ex, split, casting)


def label_from_text(task: str, text: str) -> int:
    """A decoded text prediction -> class index (-1 when it names no class)."""
    s = spec(task)
    text = text.strip()
    return s.label_names.index(text) if text in s.label_names else -1


# ----------------------------------------------------------------------------------------------------
# seqio registration.


def _meta_signature(s: TaskSpec, casting: str) -> dict[str, Any]:
    """Names and dtypes of the per-example metadata features (`tf.int32` or `tf.string`)."""
    import tensorflow as tf

    if s.name == "multirc":
        meta = {"idx/paragraph": tf.int32, "idx/question": tf.int32, "idx/answer": tf.int32}
    elif s.name == "record":
        meta = {"idx/passage": tf.int32, "idx/query": tf.int32, "answers": tf.string}
    else:
        meta = {"idx": tf.int32}
    if casting == "classifier":
        meta["label"] = tf.int32
        if s.name in ("copa", "record"):
            meta["candidate"] = tf.int32
        if s.name == "record":
            meta["entity"] = tf.string
    else:
        meta["targets"] = tf.string
    return meta


def dataset_fn(
    task: str, casting: str, *, source: str, data_dir: str | None, on_error: str = "raise", tfds_download: bool = True
):
    """A seqio `dataset_fn(split, shuffle_files, seed=None)` yielding the cast examples as tf.data."""
    s = spec(task)

    def fn(split: str, shuffle_files: bool = False, seed: int | None = None):
        import tensorflow as tf

        del shuffle_files, seed  # the files are small; seqio shuffles the examples
        signature = {"inputs": tf.TensorSpec([], tf.string)}
        signature.update({k: tf.TensorSpec([], dt) for k, dt in _meta_signature(s, casting).items()})

        def gen():
            raw = iter_raw(s.name, split, source=source, data_dir=data_dir, on_error=on_error,
                           tfds_download=tfds_download)
            for ex in iter_cast(s.name, raw, split, casting):
                yield {k: ex[k] for k in signature}

        return tf.data.Dataset.from_generator(gen, output_signature=signature)

    return fn


def task_name(task: str, casting: str, prefix: str = "superglue") -> str:
    """Registered seqio name, e.g. `superglue_rte_text`, `superglue_copa_classifier`."""
    return f"{prefix}_{spec(task).name}_{casting}"


def register_superglue(
    vocabulary: Any,
    *,
    casting: str = "text",
    source: str = "jsonl",
    data_dir: str | None = None,
    prefix: str = "superglue",
    tasks: Sequence[str] | None = None,
    on_error: str = "raise",
    tfds_download: bool = True,
    overwrite: bool = True,
) -> list[str]:
    """Registers one seqio task per SuperGLUE task and the mixture `<prefix>_<casting>`; returns the names.

    `vocabulary`: a seqio vocabulary for `inputs` (and `targets` in the text casting); EOS is appended.
    `source`/`data_dir`: "jsonl" with the SUPERGLUE_DIR, or "tfds" with TFDS's data_dir (None: default).
    The mixture holds the eight SuperGLUE tasks (diagnostics are eval-only), rated by official train sizes.
    Nothing is read at registration.
    """
    import seqio  # lazy: the data layer only

    if casting not in CASTINGS:
        raise ValueError(f"unknown casting {casting!r}; expected one of {CASTINGS}")
    if source not in ("jsonl", "tfds"):
        raise ValueError(f"unknown SuperGLUE source {source!r}; expected 'jsonl' or 'tfds'")
    if source == "jsonl" and not data_dir:
        raise ValueError("source='jsonl' needs data_dir (the SUPERGLUE_DIR holding BoolQ/, CB/, ...)")
    features = {"inputs": seqio.Feature(vocabulary, add_eos=True)}
    if casting == "text":
        features["targets"] = seqio.Feature(vocabulary, add_eos=True)
    names = []
    for t in tasks or tuple(SPECS):
        s = spec(t)
        name = task_name(s.name, casting, prefix)
        if overwrite and name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                dataset_fn(s.name, casting, source=source, data_dir=data_dir, on_error=on_error,
                           tfds_download=tfds_download),
                splits=s.splits,
            ),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features=features,
            shuffle_buffer_size=10_000,
        )
        names.append(name)
    rates = [(task_name(t, casting, prefix), float(SPECS[t].train_size)) for t in TRAIN_TASKS
             if task_name(t, casting, prefix) in names]
    if rates:
        mixture = f"{prefix}_{casting}"
        if overwrite and mixture in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.remove(mixture)
        seqio.MixtureRegistry.add(mixture, rates)
        names.append(mixture)
    return names

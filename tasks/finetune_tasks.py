"""Finetuning tasks as gin-callable registrations: each function registers its seqio task(s) and returns the name(s).

Gin files use them where a task name is expected, so a run registers exactly what it reads:

    MIXTURE_OR_TASK_NAME = @superglue_task()
    superglue_task.task = 'rte'
    superglue_task.casting = 'classifier'
    superglue_task.data_dir = %SUPERGLUE_DIR

Vocabularies (`vocabulary=`): "gemma2" / "gemma3" (the official Gemma tokenizers, read on first
use), "small" (the small test/demo SentencePiece model of `objectives.vocabularies`, Gemma's special
ids), or a path to any SentencePiece `.model`. Registration reads no data.

- `superglue_task(s)`: `tasks.superglue` (castings "text" and "classifier"); `superglue_num_classes`.
- `glue_task(s)`: `tasks.glue` (encoder classifiers); `glue_head` checks the head against the task.
- `msmarco_lists_task`: ranking training lists (1 positive + N negatives) from MS MARCO triples,
  features `inputs` [L, T] (each candidate `query: q document: p` + EOS, padded) and `labels` [L].
- `msmarco_rerank_task`: one example per (query, candidate) for reranking evaluation: `inputs`,
  `qid`, `pid`, `label` (the relevance grade); from triples (the training queries: the positive
  graded 1, its negatives 0) or from a candidate JSON + qrels (TREC DL).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

from tasks import glue as glue_lib
from tasks import msmarco
from tasks import superglue as sg


@functools.lru_cache(maxsize=None)
def get_vocabulary(vocabulary: str = "gemma2") -> Any:
    """A seqio vocabulary by name ("gemma2", "gemma3", "small") or SentencePiece model path."""
    from adaptation.objectives import vocabularies as v

    if vocabulary == "gemma2":
        return v.gemma_vocabulary(v.GEMMA2_TOKENIZER)
    if vocabulary == "gemma3":
        return v.gemma_vocabulary(v.GEMMA3_TOKENIZER)
    if vocabulary == "small":
        return v.small_vocabulary()
    import os

    import seqio

    if not vocabulary.startswith("gs://") and not os.path.isfile(vocabulary):
        raise FileNotFoundError(f"vocabulary {vocabulary!r} is neither 'gemma2', 'gemma3', 'small' nor a "
                                "SentencePiece model file.")
    return seqio.SentencePieceVocabulary(vocabulary)


# ----------------------------------------------------------------------------------------------------
# SuperGLUE.


def superglue_tasks(
    tasks: Optional[Sequence[str]] = None,
    *,
    casting: str = "classifier",
    data_dir: Optional[str] = None,
    source: str = "jsonl",
    vocabulary: str = "gemma2",
    prefix: str = "superglue",
    on_error: str = "raise",
) -> list[str]:
    """Registers SuperGLUE tasks (default: all, diagnostics included) and returns their task names."""
    names = sg.register_superglue(get_vocabulary(vocabulary), casting=casting, source=source, data_dir=data_dir,
                                  prefix=prefix, tasks=tasks, on_error=on_error)
    return [n for n in names if n != f"{prefix}_{casting}"]


def superglue_task(task: str, **kwargs: Any) -> str:
    """Registers one SuperGLUE task (see `superglue_tasks` for the options) and returns its name."""
    return superglue_tasks([task], **kwargs)[0]


def superglue_num_classes(task: str) -> int:
    """Classes of a task's classifier casting (CB 3; the others, candidates included, 2)."""
    return sg.spec(task).num_classes


# ----------------------------------------------------------------------------------------------------
# GLUE.


def glue_tasks(
    tasks: Optional[Sequence[str]] = None,
    *,
    data_dir: Optional[str] = None,
    source: str = "tsv",
    vocabulary: str = "gemma2",
    prefix: str = "glue",
    on_error: str = "raise",
) -> list[str]:
    """Registers GLUE encoder tasks (default: all) and returns their names."""
    return glue_lib.register_glue(get_vocabulary(vocabulary), source=source, data_dir=data_dir, prefix=prefix,
                                  tasks=tasks, on_error=on_error)


def glue_task(task: str, **kwargs: Any) -> str:
    """Registers one GLUE task (see `glue_tasks`) and returns its name."""
    return glue_tasks([task], **kwargs)[0]


def glue_head(
    task: str,
    *,
    pooler: str = "last",
    pool_k: int = 1,
    num_probes: int = 1,
    probe_heads: int = 1,
    mlp_depth: int = 0,
    mlp_width: Optional[int] = None,
    activation: str = "gelu",
    dropout_rate: float = 0.0,
    output: Optional[str] = None,
    num_classes: Optional[int] = None,
):
    """The `HeadConfig` of a GLUE task (regression for STS-B); an explicit `output` / `num_classes`
    that does not fit the task is an error here, at configuration time."""
    overrides: dict[str, Any] = dict(pooler=pooler, pool_k=pool_k, num_probes=num_probes, probe_heads=probe_heads,
                                     mlp_depth=mlp_depth, mlp_width=mlp_width, activation=activation,
                                     dropout_rate=dropout_rate)
    if output is not None:
        overrides["output"] = output
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return glue_lib.head_config(task, **overrides)


# ----------------------------------------------------------------------------------------------------
# MS MARCO.


def _tokenize_lists(ds, output_features, sequence_length):
    """`texts` [L] strings -> `inputs` [L, T] ids (each + EOS, cut to T, padded with 0)."""
    import tensorflow as tf

    vocab = output_features["inputs"].vocabulary
    length = (sequence_length or {}).get("inputs")
    list_size = ds.element_spec["texts"].shape[0]
    if length is None:
        raise ValueError("MS MARCO list tasks need a sequence length for 'inputs' (TASK_FEATURE_LENGTHS).")
    if list_size > length:
        raise ValueError(f"a ranking list of {list_size} candidates does not fit features of length {length}: "
                         "seqio trims the first axis of 'inputs' [L, T] to T; use lists no longer than T.")

    def fn(ex):
        ids = vocab.encode_tf(ex["texts"])[:, : length - 1]
        eos = tf.fill([list_size, 1], tf.constant(vocab.eos_id, ids.dtype))
        ids = tf.concat([ids, tf.RaggedTensor.from_tensor(eos)], axis=1)
        out = {k: v for k, v in ex.items() if k != "texts"}
        out["inputs"] = tf.cast(ids.to_tensor(default_value=0, shape=[list_size, length]), tf.int32)
        return out

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def msmarco_lists_task(
    triples_path: str,
    *,
    num_negatives: int = 3,
    limit: Optional[int] = None,
    vocabulary: str = "gemma2",
    name: str = "msmarco_lists",
    seed: int = 0,
) -> str:
    """Registers ranking training lists from a triples TSV (split "train": 1 positive first, then
    `num_negatives` negatives, `labels` [1, 0, ...]) and returns the task name."""
    import seqio

    vocab = get_vocabulary(vocabulary)
    size = num_negatives + 1

    list_seed = seed

    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        import tensorflow as tf

        del split, shuffle_files, seed
        lists = msmarco.training_lists(msmarco.read_triples(triples_path, limit=limit), num_negatives, list_seed)
        texts = [[msmarco.input_text(x["query"], p) for p in x["passages"]] for x in lists]
        labels = [[1.0] + [0.0] * num_negatives for _ in lists]
        return tf.data.Dataset.from_tensor_slices({"texts": tf.constant(texts, tf.string, [len(texts), size]),
                                                   "labels": tf.constant(labels, tf.float32)})

    _replace_task(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
        preprocessors=[_tokenize_lists],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False, rank=2)},
        shuffle_buffer_size=10_000,
    )
    return name


def _rerank_rows_from_triples(triples_path: str, num_negatives: int, limit: Optional[int], seed: int) -> list[dict]:
    lists = msmarco.training_lists(msmarco.read_triples(triples_path, limit=limit), num_negatives, seed)
    rows = []
    for i, x in enumerate(lists):
        for j, passage in enumerate(x["passages"]):
            rows.append({"inputs": msmarco.input_text(x["query"], passage), "qid": str(i), "pid": str(j),
                         "label": 1 if j == 0 else 0})
    return rows


def _rerank_rows_from_candidates(candidates_path: str, qrels_path: str, depth: Optional[int]) -> list[dict]:
    qrels = msmarco.read_qrels(qrels_path)
    candidates = msmarco.read_candidates_json(candidates_path, qrels=qrels, depth=depth)
    rows = []
    for qid, c in candidates.items():
        for pid, text in zip(c.pids, c.texts):
            rows.append({"inputs": msmarco.input_text(c.query, text), "qid": qid, "pid": pid,
                         "label": int(qrels.get(qid, {}).get(pid, 0))})
    return rows


def msmarco_rerank_task(
    *,
    triples_path: Optional[str] = None,
    num_negatives: int = 3,
    limit: Optional[int] = None,
    candidates_path: Optional[str] = None,
    qrels_path: Optional[str] = None,
    depth: Optional[int] = None,
    split: str = "validation",
    vocabulary: str = "gemma2",
    name: str = "msmarco_rerank",
    seed: int = 0,
) -> str:
    """Registers a reranking evaluation task (one example per query-candidate pair) and returns its name.

    From `triples_path` (the lists `msmarco_lists_task` trains on, with the same `num_negatives`,
    `limit` and `seed`: training-query MRR) or from `candidates_path` + `qrels_path` (e.g. TREC DL
    BM25 top-`depth` lists with graded judgments). The data is available under `split` (and "train").
    """
    import seqio

    if (triples_path is None) == (candidates_path is None):
        raise ValueError("msmarco_rerank_task needs exactly one of triples_path= or candidates_path= (+ qrels_path=).")
    if candidates_path is not None and qrels_path is None:
        raise ValueError("msmarco_rerank_task(candidates_path=...) needs qrels_path= (the graded judgments).")
    vocab = get_vocabulary(vocabulary)

    list_seed = seed

    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
        import tensorflow as tf

        del split, shuffle_files, seed
        if triples_path is not None:
            rows = _rerank_rows_from_triples(triples_path, num_negatives, limit, list_seed)
        else:
            rows = _rerank_rows_from_candidates(candidates_path, qrels_path, depth)
        columns = {k: [r[k] for r in rows] for k in ("inputs", "qid", "pid")}
        columns["label"] = tf.constant([r["label"] for r in rows], tf.int32)
        return tf.data.Dataset.from_tensor_slices(columns)

    _replace_task(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=tuple(dict.fromkeys((split, "train")))),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocab, add_eos=True)},
        shuffle_buffer_size=10_000,
    )
    return name


def _replace_task(name: str) -> None:
    import seqio

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)


def superglue_mixture(*, casting: str = "text", prefix: str = "superglue", **kwargs: Any) -> str:
    """Registers every SuperGLUE task and the mixture of the eight tasks (rated by train sizes); returns
    the mixture name (the text casting: one model for all tasks, T5-style)."""
    sg_names = sg.register_superglue(get_vocabulary(kwargs.pop("vocabulary", "gemma2")), casting=casting,
                                     prefix=prefix, **kwargs)
    mixture = f"{prefix}_{casting}"
    if mixture not in sg_names:
        raise ValueError(f"no SuperGLUE mixture was registered for {kwargs}")
    return mixture

"""Tasks of `make demo` (`adaptation.demo`): the source LM, and the finetuning task.

- `pydoc_lm`: decoder-only language modelling on CPython's `pydoc_data.topics` text (ships with
  Python, so the demo runs offline on a fresh machine), small SentencePiece vocabulary
  (`vocabularies.small_vocabulary()`, 2 256 ids). Documents are cleaned, tokenized, eos-terminated
  and cut into full pieces of `targets` tokens (the pretraining tasks' pipeline), for seqio's
  LM feature converter (`DatasetConfig.model_kind = 'decoder_only'`).
- `demo_entail_text`: a **generated** entailment task in RTE format (not RTE): premises are prose
  sentences of the pydoc text; the hypothesis is a contiguous span of the premise (`entailment`),
  or a span of another sentence of the same topic (`not_entailment`; in one-sentence topics, the
  premise's span with a word swapped for one it does not contain). Validation premises come from every fifth topic and
  never occur in training. Examples are cast exactly as RTE (`rte hypothesis: H premise: P` ->
  entailment | not_entailment, `tasks.superglue.cast_text`), so a real RTE finetune reads the same.
- `demo_rte_text`, `demo_cb_text`: the real SuperGLUE RTE / CB (text casting) when a SuperGLUE
  directory (`SUPERGLUE_DIR`, official JSONL) or a prepared TFDS copy (`super_glue/rte:1.0.2`
  under `TFDS_DATA_DIR` or `~/tensorflow_datasets`) is available; never downloaded.
Every task here carries its metric functions (accuracy; CB also macro-F1), read by `adaptation.eval`.
"""

from __future__ import annotations

import functools
import random
import re
import zlib
from typing import Any, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from adaptation.demo import GENERATED_TASK, REAL_TASKS, superglue_source
from adaptation.metrics import superglue as sgm
from adaptation.objectives import vocabularies
from tasks import pretraining
from tasks import superglue as sgt

LM_TASK = "pydoc_lm"
VALIDATION_EVERY = 5  # every 5th topic (by a stable hash of its name) is validation


# --- the source LM task ------------------------------------------------------------------------


def lm_preprocessor(
    dataset: tf.data.Dataset, sequence_length: Mapping[str, int], output_features: Mapping[str, seqio.Feature]
) -> tf.data.Dataset:
    """Documents -> eos-terminated token stream -> pieces of exactly `targets` tokens."""
    stats = pretraining.document_stats(LM_TASK)
    ds = pretraining.clean_documents(dataset, stats)
    ds = pretraining.tokenize_documents(ds, output_features["targets"].vocabulary, stats)
    return pretraining.pack_stream(ds, int(sequence_length["targets"]))


def register_lm_task(vocabulary: Any = None) -> str:
    """Registers `pydoc_lm` (decoder-only LM over the pydoc text)."""
    vocabulary = vocabulary or vocabularies.small_vocabulary()
    seqio.TaskRegistry.remove(LM_TASK)
    seqio.TaskRegistry.add(
        LM_TASK,
        source=pretraining.pydoc_source(),
        preprocessors=[lm_preprocessor],
        output_features={"targets": seqio.Feature(vocabulary, add_eos=False)},
        metric_fns=[],
    )
    return LM_TASK


# --- the generated entailment task -------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")
_WORD = re.compile(r"^[A-Za-z][a-z]*[,.;:]?$")


def _is_validation_topic(topic: str) -> bool:
    return zlib.crc32(topic.encode()) % VALIDATION_EVERY == 0


def prose_sentences(min_words: int = 8, max_words: int = 40) -> dict[str, list[list[str]]]:
    """Prose sentences (as word lists) of each pydoc topic: code blocks, grammar rules and headings
    are skipped, and sentences that are mostly not plain words (signatures, expressions) too."""
    from pydoc_data import topics

    out: dict[str, list[list[str]]] = {}
    for topic in sorted(topics.topics):
        sentences = []
        for para in re.split(r"\n\s*\n", topics.topics[topic]):
            lines = para.split("\n")
            if any(line.startswith(" ") for line in lines) or "::=" in para or re.search(r"^[*=-]{3,}", para, re.M):
                continue
            for sentence in _SENTENCE_END.split(" ".join(line.strip() for line in lines)):
                words = sentence.split()
                plain = sum(bool(_WORD.match(w)) for w in words)
                if min_words <= len(words) <= max_words and plain >= 0.7 * len(words):
                    sentences.append(words)
        if sentences:
            out[topic] = sentences
    return out


def _strip(word: str) -> str:
    return word.strip(".,;:!?\"'()").lower()


def generated_examples(split: str, seed: int = 0) -> list[dict[str, Any]]:
    """Raw RTE-format examples (`premise`, `hypothesis`, `label` 0 entailment / 1 not_entailment,
    `idx`) generated from the pydoc prose sentences of `split`'s topics; balanced, deterministic."""
    if split not in ("train", "validation"):
        raise ValueError(f"the generated entailment task has splits 'train' and 'validation', not {split!r}")
    sentences = prose_sentences()
    held_out = {" ".join(s) for t, ss in sentences.items() if _is_validation_topic(t) for s in ss}
    if split == "validation":
        by_topic = {t: ss for t, ss in sentences.items() if _is_validation_topic(t)}
    else:  # topics repeat some sentences: none of the validation premises is trained on
        by_topic = {t: [s for s in ss if " ".join(s) not in held_out] for t, ss in sentences.items()
                    if not _is_validation_topic(t)}
        by_topic = {t: ss for t, ss in by_topic.items() if ss}
    vocabulary = sorted({_strip(w) for ss in by_topic.values() for s in ss for w in s if _WORD.match(w)} - {""})
    rng = random.Random(f"{seed}/{split}")
    examples = []
    for topic, sentences in by_topic.items():
        for i, words in enumerate(sentences):
            n = rng.randint(4, min(10, len(words) - 2))
            start = rng.randint(0, len(words) - n)
            span = words[start : start + n]
            examples.append({"premise": " ".join(words), "hypothesis": " ".join(span), "label": 0})
            if len(sentences) > 1:  # a span of another sentence of the same topic
                other = sentences[rng.choice([j for j in range(len(sentences)) if j != i])]
                m = min(n, len(other))
                k = rng.randint(0, len(other) - m)
                hypothesis = other[k : k + m]
            else:  # the span with one word swapped for a word the premise does not contain
                present = {_strip(w) for w in words}
                hypothesis = list(span)
                word = rng.choice(vocabulary)
                while word in present:
                    word = rng.choice(vocabulary)
                hypothesis[rng.randrange(len(span))] = word
            examples.append({"premise": " ".join(words), "hypothesis": " ".join(hypothesis), "label": 1})
    rng.shuffle(examples)
    for idx, ex in enumerate(examples):
        ex["idx"] = idx
    return examples


def _generated_dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed
    cast = [c for ex in generated_examples(split) for c in sgt.cast_text("rte", ex, split)]
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": [c["inputs"] for c in cast], "targets": [c["targets"] for c in cast],
         "idx": [c["idx"] for c in cast]}
    )


# --- metrics and registration ------------------------------------------------------------------


def text_metrics(targets: Sequence[str], predictions: Sequence[str], *, task: str) -> dict[str, float]:
    """The task's SuperGLUE metrics (accuracy; CB + macro-F1) from target and decoded label texts;
    a prediction that names no class counts as wrong."""
    labels = [sgt.label_from_text(task, _text(t)) for t in targets]
    preds = [sgt.label_from_text(task, _text(p)) for p in predictions]
    return sgm.task_metrics(task, labels, preds)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _register_text_task(name: str, dataset_fn: Any, splits: Sequence[str], vocabulary: Any, task: str) -> str:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocabulary, add_eos=True),
                         "targets": seqio.Feature(vocabulary, add_eos=True)},
        metric_fns=[functools.partial(text_metrics, task=task)],
        shuffle_buffer_size=10_000,
    )
    return name


def register_demo_finetune_tasks(vocabulary: Any = None) -> list[str]:
    """Registers `demo_entail_text` and, when real data is found (`superglue_source`), `demo_rte_text`
    and `demo_cb_text`; returns the names registered."""
    vocabulary = vocabulary or vocabularies.small_vocabulary()
    names = [_register_text_task(GENERATED_TASK, _generated_dataset_fn, ("train", "validation"), vocabulary, "rte")]
    found = superglue_source()
    if found is not None:
        source, data_dir = found
        for task, name in REAL_TASKS.items():
            fn = sgt.dataset_fn(task, "text", source=source, data_dir=data_dir, tfds_download=False)
            names.append(_register_text_task(name, fn, ("train", "validation"), vocabulary, task))
    return names


register_lm_task()
register_demo_finetune_tasks()

"""Vocabularies for pretraining: Gemma's SentencePiece model, and a small one for tests and the demo.

Special ids follow Gemma: pad 0, eos 1, bos 2 (unk 3). Gemma's vocabulary has no `<extra_id_*>`
pieces, so span-corruption sentinels default to the LAST ids of the vocabulary, counting down
(`sentinel_ids(vocab_size, n)` = vocab_size - 1, vocab_size - 2, ...), the same convention as T5's
`<extra_id_0>` = vocab_size - 1. Those ids are ordinary (rare) pieces in Gemma's vocabulary; pass
explicit ids (e.g. Gemma's `<unused*>` pieces) when that matters.

The small vocabulary is a SentencePiece unigram model (2 000 pieces by default) trained, on first use,
on CPython's `pydoc_data.topics` text (ships with every Python, so the demo runs on a fresh machine),
with Gemma's special-id layout, byte fallback, the UL2 mode pieces `[NLU]`, `[NLG]`, `[S2S]` as
single pieces, and `extra_ids` sentinel ids appended after the pieces (so the sentinels never collide
with real text). Training is deterministic (one thread) and cached in `cache_dir`.

TensorFlow and seqio are imported lazily, inside the functions.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from typing import Any, Optional, Sequence

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3
MODE_PIECES = ("[NLU]", "[NLG]", "[S2S]")
SMALL_VOCAB_SIZE = 2000
SMALL_EXTRA_IDS = 256

# Official Gemma tokenizers (google-deepmind/gemma `gm.text`); read lazily by SentencePiece, so
# registering a task with them touches nothing until the task is used.
GEMMA2_TOKENIZER = "gs://gemma-data/tokenizers/tokenizer_gemma2.model"
GEMMA3_TOKENIZER = "gs://gemma-data/tokenizers/tokenizer_gemma3.model"


def sentinel_ids(vocab_size: int, count: int) -> tuple[int, ...]:
    """The default sentinels: the last `count` ids of the vocabulary, counting down from vocab_size - 1."""
    if count > vocab_size // 2:
        raise ValueError(f"{count} sentinels requested from a vocabulary of {vocab_size} ids: too many")
    return tuple(vocab_size - 1 - k for k in range(count))


def gemma_vocabulary(tokenizer_path: str = GEMMA2_TOKENIZER, extra_ids: int = 0) -> Any:
    """A `seqio.SentencePieceVocabulary` over Gemma's `tokenizer.model` (loaded on first use)."""
    import seqio

    return seqio.SentencePieceVocabulary(tokenizer_path, extra_ids=extra_ids)


def pydoc_corpus() -> list[str]:
    """Non-empty lines of CPython's `pydoc_data.topics` help text, in a fixed order."""
    from pydoc_data import topics

    text = "\n".join(topics.topics[key] for key in sorted(topics.topics))
    return [line for line in text.splitlines() if line.strip()]


def _default_cache_dir() -> pathlib.Path:
    root = os.environ.get("ADAPTATION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "adaptation"
    )
    return pathlib.Path(root)


def train_small_sentencepiece(
    path: str | os.PathLike,
    lines: Optional[Sequence[str]] = None,
    vocab_size: int = SMALL_VOCAB_SIZE,
) -> pathlib.Path:
    """Trains a unigram SentencePiece model with Gemma's special ids on `lines` (default: pydoc text)."""
    import io

    import sentencepiece as spm

    lines = list(lines) if lines is not None else pydoc_corpus()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=UNK_ID,
        user_defined_symbols=list(MODE_PIECES),
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic write: concurrent test processes may train the same model at once.
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(model.getvalue())
    os.replace(tmp.name, path)
    return path


def small_sentencepiece_path(vocab_size: int = SMALL_VOCAB_SIZE, cache_dir: Optional[str] = None) -> pathlib.Path:
    """Path of the cached small SentencePiece model, training it on first use."""
    corpus_key = hashlib.sha1("\n".join(pydoc_corpus()).encode()).hexdigest()[:10]
    path = pathlib.Path(cache_dir or _default_cache_dir()) / f"pydoc_unigram_{vocab_size}_{corpus_key}.model"
    if not path.exists():
        train_small_sentencepiece(path, vocab_size=vocab_size)
    return path


def small_vocabulary(
    vocab_size: int = SMALL_VOCAB_SIZE, extra_ids: int = SMALL_EXTRA_IDS, cache_dir: Optional[str] = None
) -> Any:
    """The small test/demo vocabulary: `seqio.SentencePieceVocabulary` with `extra_ids` sentinels at the end.

    Its `vocab_size` is `vocab_size + extra_ids`; sentinel k (k = 0, 1, ...) is id
    `vocab_size + extra_ids - 1 - k`, i.e. `sentinel_ids(vocab.vocab_size, extra_ids)`.
    """
    import seqio

    return seqio.SentencePieceVocabulary(str(small_sentencepiece_path(vocab_size, cache_dir)), extra_ids=extra_ids)


def mode_token_ids(vocabulary: Any, pieces: Sequence[str] = MODE_PIECES) -> tuple[int, ...]:
    """Ids of the UL2 mode pieces (`[NLU]`, `[NLG]`, `[S2S]`), each of which must be one piece."""
    processor = vocabulary.tokenizer  # the sentencepiece processor of a seqio.SentencePieceVocabulary
    ids = []
    for piece in pieces:
        piece_id = int(processor.piece_to_id(piece))
        if piece_id == processor.unk_id():
            raise ValueError(
                f"mode piece {piece!r} is not a piece of this vocabulary; pass the mode token ids "
                "explicitly (e.g. unused pieces of Gemma's vocabulary)"
            )
        ids.append(piece_id)
    return tuple(ids)

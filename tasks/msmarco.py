"""MS MARCO passage ranking for encoder-only rerankers: local file readers, training lists, seqio tasks.

Local formats (as in `shared/data/msmarco/`):
- TREC qrels `qid Q0 pid grade` (space- or tab-separated): `read_qrels`;
- topics `qid<TAB>query`: `read_topics`;
- training triples `query<TAB>positive passage<TAB>negative passage`: `read_triples`;
- candidate lists as rank_llm's JSON, a list of `{"query", "hits": [{"content", "qid", "docid",
  "rank", "score"}]}` (BM25 top-k with text): `read_candidates_json`.
TFDS `ms_marco` (v2.1, QA-style passages with `is_selected`) is read by `iter_tfds_lists` where a
user has it prepared.

Reranking inputs are `query: <q> document: <passage>` (RankT5's form); a training list is 1
positive + N negatives (`training_lists`), built from triples (the negatives of other triples
with the same query, then other triples' negatives, to fill N) or from judged candidate lists.

Bad input names file and line: a malformed qrels/topics/triples line, a qrels query with no
candidate list, a candidate list without any judged passage (`on_error="raise"`), or with
`on_error="skip"` the line/query is dropped and counted in `ReadStats`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any, Optional

logger = logging.getLogger(__name__)


class MsMarcoDataError(ValueError):
    """An MS MARCO input file is malformed; the message names the file and line."""


@dataclasses.dataclass
class ReadStats:
    """Lines read and skipped (with the first errors) by a reader."""

    path: str = ""
    lines: int = 0
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def fail(self, message: str, on_error: str) -> None:
        if on_error == "raise":
            raise MsMarcoDataError(message)
        self.skipped += 1
        if len(self.errors) < 20:
            self.errors.append(message)


class Qrels(dict):
    """`{qid: {pid: grade}}`, remembering the file and the first line of each query."""

    path: str = ""
    first_line: dict


@dataclasses.dataclass(frozen=True)
class Candidates:
    """One query's candidate list: ids, texts and first-stage (BM25) scores, best first."""

    qid: str
    query: str
    pids: tuple[str, ...]
    texts: tuple[str, ...]
    bm25_scores: tuple[float, ...]


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _lines(path: Any) -> list[str]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    with open(path, encoding="utf-8", newline="") as f:
        return f.read().split("\n")


def read_qrels(path: Any, *, on_error: str = "raise", stats: Optional[ReadStats] = None) -> Qrels:
    """TREC qrels `qid Q0 pid grade` -> `Qrels` {qid: {pid: grade}}."""
    _check_on_error(on_error)
    stats = stats if stats is not None else ReadStats()
    stats.path = os.fspath(path)
    qrels = Qrels()
    qrels.path, qrels.first_line = stats.path, {}
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        stats.lines += 1
        parts = line.split()
        where = f"{stats.path}:{lineno}"
        if len(parts) != 4:
            stats.fail(f"{where}: expected 4 fields 'qid Q0 pid grade', found {len(parts)}", on_error)
            continue
        qid, _, pid, grade = parts
        try:
            value = int(grade)
        except ValueError:
            stats.fail(f"{where}: relevance grade {grade!r} is not an integer", on_error)
            continue
        qrels.setdefault(qid, {})[pid] = value
        qrels.first_line.setdefault(qid, lineno)
    if not qrels:
        raise MsMarcoDataError(f"{stats.path}: no judgments read ({stats.lines} lines, {stats.skipped} skipped)")
    return qrels


def read_topics(path: Any, *, on_error: str = "raise", stats: Optional[ReadStats] = None) -> dict[str, str]:
    """Topics `qid<TAB>query` -> {qid: query}."""
    _check_on_error(on_error)
    stats = stats if stats is not None else ReadStats()
    stats.path = os.fspath(path)
    topics = {}
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        stats.lines += 1
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 2 or not parts[1].strip():
            stats.fail(f"{stats.path}:{lineno}: expected 'qid<TAB>query', found {len(parts)} field(s)", on_error)
            continue
        topics[parts[0].strip()] = parts[1].strip()
    if not topics:
        raise MsMarcoDataError(f"{stats.path}: no topics read")
    return topics


def read_triples(
    path: Any, *, limit: Optional[int] = None, on_error: str = "raise", stats: Optional[ReadStats] = None
) -> list[tuple[str, str, str]]:
    """Training triples `query<TAB>positive<TAB>negative` -> [(query, positive, negative)]."""
    _check_on_error(on_error)
    stats = stats if stats is not None else ReadStats()
    stats.path = os.fspath(path)
    triples = []
    for lineno, line in enumerate(_lines(path), start=1):
        if limit is not None and len(triples) >= limit:
            break
        if not line.strip():
            continue
        stats.lines += 1
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            stats.fail(
                f"{stats.path}:{lineno}: expected 'query<TAB>positive<TAB>negative' (3 non-empty fields), "
                f"found {len(parts)} field(s)", on_error,
            )
            continue
        triples.append((parts[0].strip(), parts[1].strip(), parts[2].strip()))
    if not triples:
        raise MsMarcoDataError(f"{stats.path}: no triples read ({stats.lines} lines, {stats.skipped} skipped)")
    return triples


def read_candidates_json(
    path: Any,
    *,
    qrels: Optional[Mapping[str, Mapping[str, int]]] = None,
    depth: Optional[int] = None,
    on_error: str = "raise",
    stats: Optional[ReadStats] = None,
) -> dict[str, Candidates]:
    """rank_llm candidate JSON -> {qid: Candidates} (hits in rank order, at most `depth`).

    With `qrels`: every judged query must have a list (else an error naming the qrels file and
    line) and every list must hold at least one judged passage (else an error naming the JSON
    entry); `on_error="skip"` drops such lists instead.
    """
    _check_on_error(on_error)
    stats = stats if stats is not None else ReadStats()
    path = os.fspath(path)
    stats.path = path
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise MsMarcoDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise MsMarcoDataError(f"{path}: expected a JSON list of {{'query', 'hits'}} entries")
    out: dict[str, Candidates] = {}
    dropped: set[str] = set()
    for i, entry in enumerate(data):
        stats.lines += 1
        where = f"{path}: entry {i}"
        hits = entry.get("hits") if isinstance(entry, dict) else None
        if not hits or "query" not in entry:
            stats.fail(f"{where}: expected {{'query': str, 'hits': [...]}} with at least one hit", on_error)
            continue
        try:
            hits = sorted(hits, key=lambda h: int(h["rank"]))[:depth]
            qid = str(hits[0]["qid"])
            cands = Candidates(qid, str(entry["query"]), tuple(str(h["docid"]) for h in hits),
                               tuple(str(h["content"]) for h in hits), tuple(float(h["score"]) for h in hits))
        except (KeyError, TypeError, ValueError) as e:
            stats.fail(f"{where}: a hit lacks 'qid', 'docid', 'content', 'rank' or 'score' ({e!r})", on_error)
            continue
        if qrels is not None:
            judged = qrels.get(qid, {})
            if not any(p in judged for p in cands.pids):
                stats.fail(f"{where} (query {qid}): no candidate passage is judged in the qrels", on_error)
                dropped.add(qid)
                continue
        out[qid] = cands
    if qrels is not None:
        for qid in qrels:
            if qid not in out and qid not in dropped:
                line = getattr(qrels, "first_line", {}).get(qid)
                source = f"{getattr(qrels, 'path', 'qrels')}:{line}" if line else "qrels"
                stats.fail(f"{source}: judged query {qid} has no candidate list in {path}", on_error)
    if not out:
        raise MsMarcoDataError(f"{path}: no candidate lists read ({stats.lines} entries, {stats.skipped} skipped)")
    return out


# ----------------------------------------------------------------------------------------------------
# Model inputs and training lists.


def input_text(query: str, passage: str) -> str:
    """The reranker's input (RankT5's form)."""
    return f"query: {query.strip()} document: {passage.strip()}"


def training_lists(triples: Sequence[tuple[str, str, str]], num_negatives: int, seed: int = 0) -> list[dict]:
    """Lists `{"query", "passages": [positive, negative x N]}` from triples.

    Each query's own negatives come first; other triples' negatives fill the list up to N
    (random, fixed by `seed`; never the query's own positive).
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    by_query: dict[str, dict[str, Any]] = {}
    for q, pos, neg in triples:
        item = by_query.setdefault(q, {"positives": [], "negatives": []})
        if pos not in item["positives"]:
            item["positives"].append(pos)
        if neg not in item["negatives"]:
            item["negatives"].append(neg)
    pool = sorted({neg for _, _, neg in triples} | {pos for _, pos, _ in triples})
    rng = random.Random(seed)
    lists = []
    for q, item in by_query.items():
        for pos in item["positives"]:
            negs = [n for n in item["negatives"] if n not in item["positives"]][:num_negatives]
            others = [p for p in pool if p not in item["positives"] and p not in negs]
            rng.shuffle(others)
            negs += others[: num_negatives - len(negs)]
            lists.append({"query": q, "passages": [pos] + negs})
    return lists


def candidate_lists(candidates: Mapping[str, Candidates], qrels: Mapping[str, Mapping[str, int]],
                    num_negatives: int, min_relevance: int = 1) -> list[dict]:
    """Training lists from judged candidate lists: each relevant passage with the top unjudged-or-irrelevant ones."""
    lists = []
    for qid, c in candidates.items():
        grades = qrels.get(qid, {})
        negatives = [t for p, t in zip(c.pids, c.texts) if grades.get(p, 0) < min_relevance][:num_negatives]
        if len(negatives) < num_negatives:
            continue
        for p, t in zip(c.pids, c.texts):
            if grades.get(p, 0) >= min_relevance:
                lists.append({"query": c.query, "passages": [t] + negatives})
    return lists


def iter_tfds_lists(split: str = "train", *, data_dir: Optional[str] = None, num_negatives: int = 7,
                    download: bool = False):
    """Training lists from TFDS `ms_marco` (v2.1): selected passages as positives, the others as negatives."""
    import tensorflow_datasets as tfds  # lazy

    ds = tfds.load("ms_marco/v2.1", split=split, data_dir=data_dir, download=download)
    for ex in ds.as_numpy_iterator():
        passages = ex["passages"]
        texts = [t.decode("utf-8") for t in passages["passage_text"]]
        selected = list(passages["is_selected"])
        negatives = [t for t, s in zip(texts, selected) if not s][:num_negatives]
        if len(negatives) < num_negatives:
            continue
        for t, s in zip(texts, selected):
            if s:
                yield {"query": ex["query"].decode("utf-8"), "passages": [t] + negatives}

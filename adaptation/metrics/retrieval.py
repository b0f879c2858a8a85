"""Ranking metrics for passage reranking (MS MARCO, TREC Deep Learning): MRR@k and nDCG@k.

`ranking(qrels, run, k=10, min_relevance=1)`:
- `qrels` `{qid: {pid: grade}}`, `run` `{qid: {pid: score}}` (ids are compared as strings).
- Each query's candidates are sorted by decreasing score, ties by decreasing passage id (string
  order), as trec_eval does.
- MRR@k: 1 / rank of the first candidate with grade >= `min_relevance` within the top k, else 0
  (MS MARCO dev uses 1; TREC DL passage uses 2).
- nDCG@k as trec_eval's `ndcg_cut`: gains are the grades themselves (linear; grades <= 0 give no
  gain), discount `log2(rank + 1)`; the ideal ranking sorts all judged grades of the query.
  A query whose judgments hold no positive grade has nDCG 0.
- Both are averaged over the queries in `run`. Every run query needs judgments and every judged
  query needs a run (`missing="error"`, the default); `missing="skip"` evaluates the queries in
  both and reports how many were skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def ranked_ids(scores: Mapping[str, float]) -> list[str]:
    """Passage ids by decreasing score, ties by decreasing id (trec_eval's order)."""
    items = sorted(((str(pid), float(s)) for pid, s in scores.items()), key=lambda x: x[0], reverse=True)
    return [pid for pid, _ in sorted(items, key=lambda x: -x[1])]  # stable: keeps the id order on ties


def reciprocal_rank(ranking: list[str], grades: Mapping[str, int], k: int, min_relevance: int) -> float:
    """1 / rank of the first relevant passage in the top k (0 if none)."""
    for rank, pid in enumerate(ranking[:k], start=1):
        if grades.get(pid, 0) >= min_relevance:
            return 1.0 / rank
    return 0.0


def ndcg(ranking: list[str], grades: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (trec_eval `ndcg_cut`)."""
    dcg = sum(max(grades.get(pid, 0), 0) / math.log2(rank + 1) for rank, pid in enumerate(ranking[:k], start=1))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return 0.0 if idcg == 0 else dcg / idcg


def per_query(qrels: Qrels, run: Run, k: int = 10, min_relevance: int = 1, missing: str = "error") -> dict:
    """`{qid: {"mrr@k": .., "ndcg@k": ..}}` for each evaluated query (see the module docstring)."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}.")
    qrels = {str(q): {str(p): int(g) for p, g in j.items()} for q, j in qrels.items()}
    run = {str(q): c for q, c in run.items()}
    if not run:
        raise ValueError("a ranking evaluation over zero queries is not defined: the run is empty.")
    if missing == "error":
        no_judgments = sorted(set(run) - set(qrels))
        no_run = sorted(set(qrels) - set(run))
        if no_judgments:
            raise ValueError(
                f"{len(no_judgments)} run queries have no judgments in qrels (e.g. {no_judgments[:3]}); "
                "pass missing='skip' to evaluate only judged queries."
            )
        if no_run:
            raise ValueError(
                f"{len(no_run)} judged queries have no candidates in the run (e.g. {no_run[:3]}); "
                "pass missing='skip' to evaluate only the queries that have both."
            )
    out = {}
    for qid, scores in run.items():
        if qid not in qrels:
            continue
        order = ranked_ids(scores)
        out[qid] = {
            f"mrr@{k}": reciprocal_rank(order, qrels[qid], k, min_relevance),
            f"ndcg@{k}": ndcg(order, qrels[qid], k),
        }
    if not out:
        raise ValueError("a ranking evaluation over zero queries is not defined: no run query has judgments.")
    return out


def ranking(qrels: Qrels, run: Run, k: int = 10, min_relevance: int = 1, missing: str = "error") -> dict[str, float]:
    """`{"mrr@k": .., "ndcg@k": ..}` averaged over queries (k=10 gives "mrr@10", "ndcg@10")."""
    scores = per_query(qrels, run, k, min_relevance, missing)
    n = len(scores)
    return {name: sum(s[name] for s in scores.values()) / n for name in (f"mrr@{k}", f"ndcg@{k}")}

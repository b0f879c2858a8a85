"""Ranking: MRR@10 / nDCG@10 on the real TREC DL 2019 BM25 run, ranking losses, MS MARCO readers."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptation.metrics
from adaptation.metrics.retrieval import ndcg, ranked_ids, reciprocal_rank
from adaptation.objectives.ranking import (
    RANKING_LOSSES,
    listwise_softmax_ce,
    pairwise_logistic,
    positive_first_labels,
    ranking_loss,
)

jax.config.update("jax_enable_x64", False)


def test_metrics_import_without_tensorflow():
    assert "tensorflow" not in sys.modules or "adaptation.metrics" in sys.modules
    import subprocess

    code = "import sys, adaptation.metrics; assert 'tensorflow' not in sys.modules; assert callable(adaptation.metrics.ranking)"
    subprocess.run([sys.executable, "-c", code], check=True)


def _dl19(shared_data):
    root = shared_data / "msmarco" / "trec_dl_2019"
    qrels = {}
    for line in (root / "qrels.dl19-passage.txt").read_text().splitlines():
        qid, _, pid, grade = line.split()
        qrels.setdefault(qid, {})[pid] = int(grade)
    data = json.loads((root / "retrieve_results_dl19.json").read_text())
    return qrels, data


def test_bm25_order_reproduces_published_dl19_figures(shared_data):
    qrels, data = _dl19(shared_data)
    # Scores that encode only the BM25 order (rank 1 highest).
    run = {str(e["hits"][0]["qid"]): {h["docid"]: -float(h["rank"]) for h in e["hits"]} for e in data}
    assert len(run) == 43
    result = adaptation.metrics.ranking(qrels, run, k=10, min_relevance=2)
    assert set(result) == {"mrr@10", "ndcg@10"}
    assert round(result["ndcg@10"], 4) == 0.5058
    assert round(result["mrr@10"], 4) == 0.7024
    # nDCG does not depend on the MRR threshold; MRR at grade >= 1 is higher.
    loose = adaptation.metrics.ranking(qrels, run)
    assert loose["ndcg@10"] == result["ndcg@10"] and loose["mrr@10"] > result["mrr@10"]


def test_ranking_through_the_task_reader(shared_data):
    from tasks import msmarco

    root = shared_data / "msmarco" / "trec_dl_2019"
    qrels = msmarco.read_qrels(root / "qrels.dl19-passage.txt")
    candidates = msmarco.read_candidates_json(root / "retrieve_results_dl19.json", qrels=qrels)
    topics = msmarco.read_topics(root / "topics.dl19-passage.txt")
    assert set(candidates) == set(topics) == set(qrels)
    assert all(c.query == topics[qid] for qid, c in candidates.items())
    run = {qid: {p: float(s) for p, s in zip(c.pids, c.bm25_scores)} for qid, c in candidates.items()}
    assert round(adaptation.metrics.ranking(qrels, run)["ndcg@10"], 4) == 0.5058


def test_metric_definitions_by_hand():
    grades = {"a": 3, "b": 0, "c": 1, "d": 2}
    order = ranked_ids({"a": 0.1, "b": 0.9, "c": 0.5, "e": 0.5})  # tie c/e broken by decreasing id
    assert order == ["b", "e", "c", "a"]
    assert reciprocal_rank(order, grades, 10, 1) == pytest.approx(1 / 3)
    assert reciprocal_rank(order, grades, 10, 2) == pytest.approx(1 / 4)
    assert reciprocal_rank(order, grades, 3, 2) == 0.0
    dcg = 1 / np.log2(4) + 3 / np.log2(5)
    idcg = 3 / np.log2(2) + 2 / np.log2(3) + 1 / np.log2(4)
    assert ndcg(order, grades, 10) == pytest.approx(dcg / idcg)
    assert ndcg(order, {"x": 0}, 10) == 0.0


def test_ranking_bad_input():
    with pytest.raises(ValueError, match="no judgments"):
        adaptation.metrics.ranking({"1": {"a": 1}}, {"1": {"a": 1.0}, "2": {"b": 0.0}})
    with pytest.raises(ValueError, match="no candidates"):
        adaptation.metrics.ranking({"1": {"a": 1}, "2": {"b": 1}}, {"1": {"a": 1.0}})
    with pytest.raises(ValueError, match="zero queries"):
        adaptation.metrics.ranking({"1": {"a": 1}}, {})
    skipped = adaptation.metrics.ranking({"1": {"a": 1}, "2": {"b": 1}}, {"1": {"a": 1.0}}, missing="skip")
    assert skipped == {"mrr@10": 1.0, "ndcg@10": 1.0}


# ---------------------------------------------------------------------------------------------
# Losses.


def _case(seed=0, batch=3, size=5):
    rng = np.random.default_rng(seed)
    scores = jnp.asarray(rng.normal(size=(batch, size)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(batch, size)), jnp.float32)
    labels = labels.at[:, 0].set(2.0)  # every list has a positive
    mask = jnp.asarray(np.arange(size)[None, :] < np.array([[size], [size - 1], [3]]), bool)
    return scores, labels, mask


@pytest.mark.parametrize("name", sorted(RANKING_LOSSES))
def test_loss_gradients_match_finite_differences(name):
    scores, labels, mask = _case()
    fn = lambda s: ranking_loss(name, s.astype(jnp.float32), labels, mask)  # noqa: E731
    grad = np.asarray(jax.grad(fn)(scores), np.float64)
    s64 = np.asarray(scores, np.float64)
    eps = 1e-3
    fd = np.zeros_like(s64)
    for idx in np.ndindex(*s64.shape):
        plus, minus = s64.copy(), s64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd[idx] = (float(fn(jnp.asarray(plus))) - float(fn(jnp.asarray(minus)))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=2e-3, rtol=2e-2)
    assert np.all(grad[~np.asarray(mask)] == 0.0)  # padding candidates get no gradient
    assert np.abs(grad).max() > 0


def test_listwise_with_one_negative_equals_pairwise():
    rng = np.random.default_rng(1)
    scores = jnp.asarray(rng.normal(size=(6, 2)) * 3, jnp.float32)
    labels = positive_first_labels(6, 2)
    lw = float(listwise_softmax_ce(scores, labels))
    pw = float(pairwise_logistic(scores, labels))
    assert lw == pytest.approx(pw, rel=1e-6)
    expected = np.mean(np.log1p(np.exp(-(np.asarray(scores[:, 0]) - np.asarray(scores[:, 1])))))
    assert lw == pytest.approx(expected, rel=1e-5)


def test_losses_prefer_the_positive_on_top():
    labels = positive_first_labels(1, 4)
    good = jnp.asarray([[3.0, -1.0, -2.0, -1.5]])
    bad = jnp.asarray([[-3.0, 1.0, 2.0, 1.5]])
    for name in RANKING_LOSSES:
        assert float(ranking_loss(name, good, labels)) < float(ranking_loss(name, bad, labels)), name
    with pytest.raises(ValueError, match="unknown ranking loss"):
        ranking_loss("lambda", good, labels)
    with pytest.raises(ValueError, match="batch, list"):
        ranking_loss("listwise", good[0], labels[0])


def test_msmarco_readers_and_bad_input(shared_data, tmp_path):
    from tasks import msmarco

    triples = msmarco.read_triples(shared_data / "msmarco" / "triples_train_small" / "triples.train.small.first100.tsv")
    assert len(triples) == 100 and all(len(t) == 3 and all(t) for t in triples)
    lists = msmarco.training_lists(triples, num_negatives=3)
    assert all(len(x["passages"]) == 4 for x in lists)
    for x in lists:  # the positive first, never repeated among the negatives
        assert x["passages"][0] not in x["passages"][1:]
    assert msmarco.input_text(" q ", "p").startswith("query: q document: p")

    bad = tmp_path / "triples.tsv"
    bad.write_text("q\tpos\tneg\nq2\tonly-two\n")
    with pytest.raises(msmarco.MsMarcoDataError, match=r"triples.tsv:2: expected"):
        msmarco.read_triples(bad)
    stats = msmarco.ReadStats()
    assert len(msmarco.read_triples(bad, on_error="skip", stats=stats)) == 1 and stats.skipped == 1

    qrels_file = tmp_path / "qrels.txt"
    qrels_file.write_text("1 0 a 1\n2 0 b 2\n3 0 c 1\n")
    cands_file = tmp_path / "cands.json"
    hit = lambda q, d, r: {"qid": q, "docid": d, "rank": r, "score": 1.0 / r, "content": d}  # noqa: E731
    cands_file.write_text(json.dumps([
        {"query": "one", "hits": [hit(1, "a", 1), hit(1, "x", 2)]},
        {"query": "two", "hits": [hit(2, "y", 1)]},  # no judged passage
    ]))
    qrels = msmarco.read_qrels(qrels_file)
    with pytest.raises(msmarco.MsMarcoDataError, match=r"cands.json: entry 1 \(query 2\): no candidate passage is judged"):
        msmarco.read_candidates_json(cands_file, qrels=qrels)
    only_one = tmp_path / "only_one.json"
    only_one.write_text(json.dumps([{"query": "one", "hits": [hit(1, "a", 1)]}]))
    with pytest.raises(msmarco.MsMarcoDataError, match=r"qrels.txt:2: judged query 2 has no candidate list"):
        msmarco.read_candidates_json(only_one, qrels=qrels)
    stats = msmarco.ReadStats()
    got = msmarco.read_candidates_json(cands_file, qrels=qrels, on_error="skip", stats=stats)
    assert set(got) == {"1"} and stats.skipped == 2  # query 2's list and query 3's missing list
    qrels_file.write_text("1 0 a one\n")
    with pytest.raises(msmarco.MsMarcoDataError, match=r"qrels.txt:1: relevance grade 'one'"):
        msmarco.read_qrels(qrels_file)

"""SuperGLUE metrics against hand-computed cases, scikit-learn, and official worked examples; the report."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.metrics import matthews_corrcoef as sk_mcc

from adaptation import superglue_report as rep
from adaptation.metrics import superglue as sgm
from tasks import superglue as sgt


def test_hand_computed_binary_metrics():
    labels = [1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 0, 0]  # tp 3, fn 1, fp 1, tn 2
    assert sgm.accuracy(labels, preds) == pytest.approx(5 / 7)
    assert sgm.f1_binary(labels, preds) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # MCC = (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (6 - 1) / sqrt(4 * 4 * 3 * 3)
    assert sgm.matthews_corrcoef(labels, preds) == pytest.approx(5 / 12)
    assert sgm.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # constant prediction
    assert sgm.f1_binary([0, 0], [0, 0]) == 0.0  # no positive anywhere


def test_cb_macro_f1_counts_all_three_classes():
    labels = [0, 0, 1, 1]
    preds = [0, 1, 1, 1]
    # class 0: tp1 fn1 -> 2/3; class 1: tp2 fp1 -> 4/5; class 2 (neutral) absent everywhere -> 0.
    assert sgm.macro_f1(labels, preds, num_classes=3) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    with pytest.raises(ValueError, match="out of range"):
        sgm.macro_f1([3], [0], num_classes=3)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y2, p2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert sgm.f1_binary(y2, p2) == pytest.approx(f1_score(y2, p2, zero_division=0), abs=1e-12)
    assert sgm.macro_f1(y3, p3, 3) == pytest.approx(
        f1_score(y3, p3, labels=[0, 1, 2], average="macro", zero_division=0), abs=1e-12)
    assert sgm.matthews_corrcoef(y2, p2) == pytest.approx(sk_mcc(y2, p2), abs=1e-12)
    assert sgm.matthews_corrcoef(y3, p3) == pytest.approx(sk_mcc(y3, p3), abs=1e-12)
    # Skewed predictions, where F1 / MCC edge cases live.
    p_skew = (rng.random(n) < 0.05).astype(int)
    assert sgm.f1_binary(y2, p_skew) == pytest.approx(f1_score(y2, p_skew, zero_division=0), abs=1e-12)
    assert sgm.matthews_corrcoef(y2, p_skew) == pytest.approx(sk_mcc(y2, p_skew), abs=1e-12)


def test_multirc_f1a_and_exact_match_worked_example():
    # Two questions of one passage (as in MultiRC val): q0 has options [1, 0, 1, 0], q1 has [0, 1].
    qids = [(0, 0)] * 4 + [(0, 1)] * 2
    labels = [1, 0, 1, 0, 0, 1]
    preds = [1, 0, 0, 0, 0, 1]  # q0 misses its second correct option; q1 exactly right
    out = sgm.multirc_scores(qids, labels, preds)
    # F1a over all 6 options: tp 2, fn 1, fp 0 -> 4/5; EM: 1 of 2 questions; accuracy 5/6.
    assert out == pytest.approx({"f1a": 0.8, "em": 0.5, "accuracy": 5 / 6})
    assert out["f1a"] == pytest.approx(f1_score(labels, preds))


def test_record_normalization_and_max_over_gold():
    # The SQuAD/ReCoRD normalization: lower case, no punctuation, no articles, single spaces.
    assert sgm.normalize_answer("The  Beatles!") == "beatles"
    assert sgm.normalize_answer("an Apple, a day") == "apple day"
    assert sgm.normalize_answer("Bhutto-Zardari") == "bhuttozardari"
    # ReCoRD dev query (FewGLUE dev32, "Long live @placeholder"): gold {"Benazir Bhutto", "Bhutto"}.
    gold = ["Benazir Bhutto", "Bhutto"]
    assert sgm.token_f1("the late Benazir Bhutto", "Benazir Bhutto") == pytest.approx(0.8)  # p 2/3, r 1
    out = sgm.record_scores(["the late Benazir Bhutto", "Bhutto", "Pakistan"], [gold, gold, gold])
    # per query: max F1 (0.8, 1.0, 0.0), max EM (0, 1, 0)
    assert out == pytest.approx({"f1": 1.8 / 3, "em": 1 / 3})
    with pytest.raises(ValueError, match="no gold answer"):
        sgm.record_scores(["x"], [[]])


def test_gender_parity_pairs():
    hyps = ["h0", "h0", "h1", "h1", "h2", "h2"]
    assert sgm.gender_parity([1, 1, 0, 1, 0, 0], hyps) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not a minimal pair"):
        sgm.gender_parity([1, 1], ["a", "b"])


def test_superglue_average_reproduces_the_human_baseline():
    # SuperGLUE paper / leaderboard human baseline: score 89.8.
    human = {
        "boolq": {"accuracy": 0.890}, "cb": {"f1": 0.958, "accuracy": 0.989}, "copa": {"accuracy": 1.0},
        "multirc": {"f1a": 0.818, "em": 0.519}, "record": {"f1": 0.917, "em": 0.913},
        "rte": {"accuracy": 0.936}, "wic": {"accuracy": 0.800}, "wsc": {"accuracy": 1.0},
    }
    assert 100 * sgm.superglue_average(human) == pytest.approx(89.79, abs=0.01)
    with pytest.raises(ValueError, match="missing"):
        sgm.superglue_average({k: v for k, v in human.items() if k != "record"})
    paper = {t: {"accuracy": a} for t, a in zip(sgm.PAPER_TASKS, [0.8, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3])}
    assert sgm.paper_score(paper) == pytest.approx(np.mean([0.8, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3]))


def test_zero_examples_is_an_error():
    with pytest.raises(ValueError, match="zero"):
        sgm.accuracy([], [])
    with pytest.raises(ValueError, match="zero"):
        rep.decide("rte", "text", [], [])
    unlabelled = [{"idx": 0, "inputs": "x", "targets": "<unk>"}]
    with pytest.raises(ValueError, match="zero labelled"):
        rep.evaluate("rte", "text", unlabelled, ["entailment"])


def _cast(task, split, casting, data_dir):
    raw, _ = sgt.read_jsonl(task, split, data_dir)
    return [c for ex in raw for c in sgt.cast(task, ex, split, casting)]


def test_report_on_real_validation_sets(shared_data, tmp_path, capsys):
    data_dir = str(shared_data / "superglue")
    results = {}
    for task in ("boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"):
        # Perfect text predictions score 1; perfect classifier logits too.
        examples = _cast(task, "validation", "text", data_dir)
        assert rep.evaluate(task, "text", examples, [e["targets"] for e in examples])["score"] == 1.0
        examples = _cast(task, "validation", "classifier", data_dir)
        logits = [np.eye(sgt.SPECS[task].num_classes)[e["label"]] for e in examples]
        results[task] = rep.evaluate(task, "classifier", examples, logits)
        assert results[task]["score"] == 1.0
    assert results["multirc"]["num_examples"] == 4848 and results["copa"]["num_examples"] == 100
    # RTE: always "entailment" gets the majority rate (146 of 277) and a garbage string counts as wrong.
    rte = _cast("rte", "validation", "text", data_dir)
    assert rep.evaluate("rte", "text", rte, ["entailment"] * len(rte))["metrics"]["accuracy"] == pytest.approx(146 / 277)
    bad = rep.evaluate("rte", "text", rte, ["maybe"] * len(rte))
    assert bad["metrics"]["accuracy"] == 0.0 and bad["invalid_predictions"] == 277
    # AX-g: a model that always answers the same is perfectly gender-parity and 50% accurate.
    axg = _cast("axg", "test", "classifier", data_dir)
    res = rep.evaluate("axg", "classifier", axg, [[1.0, 0.0]] * len(axg))
    assert res["metrics"] == pytest.approx({"gender_parity": 1.0, "accuracy": 0.5})

    test_decisions = {}
    for task in ("boolq", "cb", "copa", "multirc", "wsc"):
        examples = _cast(task, "test", "classifier", data_dir)
        logits = [[0.0, 1.0] + [0.0] * (sgt.SPECS[task].num_classes - 2) for _ in examples]
        test_decisions[task] = rep.decide(task, "classifier", examples, logits)
    table = rep.report(str(tmp_path), results, test_decisions)
    assert "paper score (mean acc, 7 tasks): 100.00" in capsys.readouterr().out
    assert "SuperGLUE average (8 tasks): n/a (missing ReCoRD)" in table
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["paper_score"] == 1.0 and metrics["superglue_average"] is None
    assert metrics["tasks"]["cb"]["metrics"] == {"accuracy": 1.0, "f1": 1.0}

    rows = [json.loads(line) for line in (tmp_path / "BoolQ.jsonl").read_text().splitlines()]
    assert len(rows) == 3245 and rows[0] == {"idx": 0, "label": "true"}
    rows = [json.loads(line) for line in (tmp_path / "COPA.jsonl").read_text().splitlines()]
    assert len(rows) == 500 and set(r["label"] for r in rows) == {0}  # both candidates score equal -> choice1
    rows = [json.loads(line) for line in (tmp_path / "CB.jsonl").read_text().splitlines()]
    assert rows[0] == {"idx": 0, "label": "contradiction"}
    rows = [json.loads(line) for line in (tmp_path / "WSC.jsonl").read_text().splitlines()]
    assert len(rows) == 146 and rows[0]["label"] == "True"
    rows = [json.loads(line) for line in (tmp_path / "MultiRC.jsonl").read_text().splitlines()]
    assert len(rows) == 166
    assert sum(len(a["answers"]) for r in rows for a in r["passage"]["questions"]) == 9693
    assert sum(len(r["passage"]["questions"]) for r in rows) == 1820
    assert rows[0]["passage"]["questions"][0]["answers"][0] == {"idx": 0, "label": 1}


def test_record_report_from_candidates(shared_data, tmp_path):
    fewglue = shared_data / "fewglue" / "ReCoRD"
    (tmp_path / "ReCoRD").mkdir()
    (tmp_path / "ReCoRD" / "val.jsonl").write_bytes((fewglue / "dev32.jsonl").read_bytes())
    examples = _cast("record", "validation", "classifier", str(tmp_path))
    # Score the gold entities highest: EM = F1 = 1; score the first entity highest: EM = fraction right.
    res = rep.evaluate("record", "classifier", examples, [[0.0, float(e["label"])] for e in examples])
    assert res["metrics"] == {"f1": 1.0, "em": 1.0} and res["num_examples"] == 32
    first = rep.evaluate("record", "classifier", examples, [[0.0, -float(e["candidate"])] for e in examples])
    raw, _ = sgt.read_jsonl("record", "validation", str(tmp_path))
    expected_em = np.mean([max(sgm.exact_match(r["entities"][0], a) for a in r["answers"]) for r in raw])
    assert first["metrics"]["em"] == pytest.approx(expected_em)
    text = _cast("record", "validation", "text", str(tmp_path))
    assert rep.evaluate("record", "text", text, [e["targets"] for e in text])["metrics"] == {"f1": 1.0, "em": 1.0}
    decisions = rep.decide("record", "text", text, [e["targets"] for e in text])
    path = rep.write_leaderboard(str(tmp_path / "out"), "record", decisions)
    rows = {r["idx"]: r["label"] for r in map(json.loads, open(path).read().splitlines())}
    assert rows == {e["idx/query"]: e["targets"] for e in text} and len(rows) == 32


def test_sweep_summary():
    runs = [
        {"task": "rte", "setting": {"lr": 1e-4, "batch": 8}, "score": 0.6},
        {"task": "rte", "setting": {"lr": 3e-4, "batch": 8}, "score": 0.7},
        {"task": "cb", "setting": {"lr": 1e-4, "batch": 8}, "score": 0.8},
    ]
    best = rep.best_settings(runs)
    assert best["rte"]["setting"]["lr"] == 3e-4 and best["cb"]["score"] == 0.8
    assert "RTE      batch=8 lr=0.0003" in rep.format_sweep(runs)

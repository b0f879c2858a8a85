"""GLUE: TSV preprocessing on the real files, metrics against scikit-learn / scipy, bad input, head checks."""

import collections

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from adaptation.metrics import glue as gm
from tasks import glue

# (task, split, rows, label counts or mean score) from shared/data/SOURCES.md.
EXPECTED = [
    ("cola", "train", 8551, {1: 6023, 0: 2528}),
    ("cola", "validation", 1043, {1: 721, 0: 322}),
    ("sst2", "validation", 872, {1: 444, 0: 428}),
    ("mrpc", "train", 3668, {1: 2474, 0: 1194}),
    ("mrpc", "validation", 408, {1: 279, 0: 129}),
    ("stsb", "train", 5749, 2.701),
    ("stsb", "validation", 1500, 2.364),
    ("qnli", "validation", 5463, {0: 2702, 1: 2761}),
    ("rte", "train", 2490, {0: 1249, 1: 1241}),
    ("rte", "validation", 277, {0: 146, 1: 131}),
    ("wnli", "train", 635, {1: 312, 0: 323}),
    ("wnli", "validation", 71, {0: 40, 1: 31}),
]


@pytest.mark.parametrize("task,split,rows,labels", EXPECTED)
def test_real_tsv_files_read_completely(shared_data, task, split, rows, labels):
    examples, stats = glue.read_tsv(task, split, str(shared_data / "glue"))
    assert len(examples) == rows and stats.skipped == 0
    if isinstance(labels, dict):
        assert dict(collections.Counter(e["label"] for e in examples)) == labels
    else:
        assert round(float(np.mean([e["label"] for e in examples])), 3) == labels
    assert [e["idx"] for e in examples] == list(range(rows))
    assert all(set(glue.spec(task).fields) <= set(e) for e in examples)


def test_field_contents_and_input_text(shared_data):
    d = str(shared_data / "glue")
    cola = glue.read_tsv("cola", "validation", d)[0]
    assert cola[0] == {"idx": 0, "sentence": "The sailors rode the breeze clear of the rocks.", "label": 1}
    mrpc = glue.read_tsv("mrpc", "validation", d)[0][0]  # the header starts with a BOM
    assert mrpc["label"] == 1 and mrpc["sentence2"].startswith('" The foodservice pie business')
    assert glue.input_text("mrpc", mrpc).startswith("mrpc sentence1: He said the foodservice pie")
    sst = glue.read_tsv("sst2", "validation", d)[0][1]
    assert sst["sentence"] == "unflinchingly bleak and desperate "  # kept as in the file
    assert glue.input_text("sst2", sst) == "sst2 sentence: unflinchingly bleak and desperate"
    sts = glue.read_tsv("stsb", "validation", d)[0][0]
    assert sts["label"] == 5.0 and sts["sentence2"] == "A man wearing a hard hat is dancing."
    rte = glue.read_tsv("rte", "validation", d)[0][0]
    assert rte["label"] == 1 and rte["sentence2"] == "Christopher Reeve had an accident."  # not_entailment
    # Unbalanced quotes stay inside their row (quoting off): QNLI dev keeps all 5463 rows.
    qnli = glue.read_tsv("qnli", "validation", d)[0]
    assert sum(e["sentence"].count('"') % 2 for e in qnli) > 0


def test_bad_files_name_file_and_line(tmp_path):
    rte = tmp_path / "RTE"
    rte.mkdir()
    (rte / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n2\ta\tb\tmaybe\n3\tc\td\tnot_entailment\n"
    )
    with pytest.raises(glue.GlueDataError, match=r"RTE/train.tsv:3: expected 4 tab-separated columns, found 3"):
        glue.read_tsv("rte", "train", str(tmp_path))
    examples, stats = glue.read_tsv("rte", "train", str(tmp_path), on_error="skip")
    assert [e["label"] for e in examples] == [0, 1] and stats.skipped == 2
    assert "RTE/train.tsv:4: unknown label 'maybe'" in stats.errors[1]
    (rte / "dev.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(glue.GlueDataError, match=r"dev.tsv:1: header .* lacks the column\(s\) \['sentence2'\]"):
        glue.read_tsv("rte", "validation", str(tmp_path))
    sts = tmp_path / "STS-B"
    sts.mkdir()
    (sts / "train.tsv").write_text("\t".join(["h"] * 7 + ["sentence1", "sentence2", "score"]) + "\n" +
                                   "\t".join(["x"] * 9 + ["high"]) + "\n")
    with pytest.raises(glue.GlueDataError, match=r"STS-B/train.tsv:2: score 'high' is not a number"):
        glue.read_tsv("stsb", "train", str(tmp_path))
    (rte / "test.tsv").write_text("index\tsentence1\tsentence2\n")
    with pytest.raises(glue.GlueDataError, match="no examples read"):
        glue.read_tsv("rte", "test", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="CoLA/train.tsv does not exist"):
        glue.read_tsv("cola", "train", str(tmp_path))
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue.spec("squad")


def test_heads_must_fit_the_task():
    assert glue.head_config("stsb").output == "regression"
    assert glue.head_config("mnli").num_classes == 3
    assert glue.head_config("rte", pooler="mean").pooler == "mean"
    from adaptation.models.heads import HeadConfig

    with pytest.raises(ValueError, match="stsb is a regression task"):
        glue.check_head("stsb", HeadConfig())
    with pytest.raises(ValueError, match="rte is a 2-class task"):
        glue.check_head("rte", HeadConfig(output="regression"))
    with pytest.raises(ValueError, match="mnli has 3 classes"):
        glue.head_config("mnli", num_classes=2)


def test_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 200
        y = rng.integers(0, 2, n)
        p = np.where(rng.random(n) < 0.7, y, 1 - y)
        assert gm.accuracy(y, p) == pytest.approx(accuracy_score(y, p))
        assert gm.f1(y, p) == pytest.approx(f1_score(y, p))
        assert gm.matthews_corrcoef(y, p) == pytest.approx(matthews_corrcoef(y, p))
        y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
        assert gm.matthews_corrcoef(y3, p3) == pytest.approx(matthews_corrcoef(y3, p3))
        s = rng.uniform(0, 5, n).round(1)  # ties
        t = (s + rng.normal(0, 1.5, n)).round(0)
        assert gm.pearson(s, t) == pytest.approx(pearsonr(s, t)[0])
        assert gm.spearman(s, t) == pytest.approx(spearmanr(s, t)[0])
    assert gm.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0
    assert gm.f1([0, 0], [0, 0]) == 0.0


def test_task_metrics_and_glue_average():
    m = gm.glue_metrics("mrpc", [1, 0, 1, 1], [1, 1, 1, 0])
    assert m == pytest.approx({"accuracy": 0.5, "f1": f1_score([1, 0, 1, 1], [1, 1, 1, 0])})
    assert set(gm.glue_metrics("STS-B", [0.0, 1.0, 2.0], [0.1, 0.9, 2.5])) == {"pearson", "spearman"}
    assert set(gm.glue_metrics("cola", [0, 1], [0, 1])) == {"mcc"}
    mnli = gm.mnli_metrics(matched=([0, 1, 2], [0, 1, 1]), mismatched=([0, 1], [0, 1]))
    results = {"cola": {"mcc": 0.5}, "mrpc": {"accuracy": 0.8, "f1": 0.9}, "mnli": mnli, "wnli": {"accuracy": 0.5}}
    expected = np.mean([0.5, 0.85, (2 / 3 + 1) / 2, 0.5])
    assert gm.glue_average(results) == pytest.approx(expected)
    assert gm.glue_average(results, exclude=("wnli",)) == pytest.approx(np.mean([0.5, 0.85, (2 / 3 + 1) / 2]))
    with pytest.raises(ValueError, match="zero examples"):
        gm.accuracy([], [])
    with pytest.raises(ValueError, match="equally long"):
        gm.accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="missing"):
        gm.task_score("mrpc", {"accuracy": 1.0})
    with pytest.raises(ValueError, match="two dev sets"):
        gm.glue_metrics("mnli", [0], [0])


def test_seqio_task_reads_the_local_files(shared_data):
    seqio = pytest.importorskip("seqio")
    sp_path = str(shared_data / "models" / "stories260K" / "tok512.model")
    vocab = seqio.SentencePieceVocabulary(sp_path)
    names = glue.register_glue(vocab, source="tsv", data_dir=str(shared_data / "glue"), tasks=("rte", "stsb"))
    assert names == ["glue_rte_encoder", "glue_stsb_encoder"]
    ds = seqio.get_mixture_or_task("glue_rte_encoder").get_dataset(
        {"inputs": 64}, split="validation", shuffle=False
    )
    first = next(ds.as_numpy_iterator())
    assert int(first["label"]) == 1 and int(first["idx"]) == 0
    assert first["inputs"][-1] == vocab.eos_id and len(first["inputs"]) <= 64
    assert vocab.decode(first["inputs"][:-1].tolist()).startswith("rte sentence1: Dana Reeve")
    with pytest.raises(ValueError, match="needs data_dir"):
        glue.register_glue(vocab, source="tsv")

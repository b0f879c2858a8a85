"""SuperGLUE tasks: the JSONL reader equals the TFDS builder, castings on real examples, bad input, seqio."""

import collections
import itertools
import json

import pytest

from tasks import superglue as sgt

# Official split sizes (raw TFDS examples: MultiRC per answer option), labelled splits of the shared data.
SIZES = {
    ("boolq", "validation"): 3270, ("cb", "train"): 250, ("cb", "validation"): 56, ("copa", "train"): 400,
    ("copa", "validation"): 100, ("multirc", "train"): 27243, ("multirc", "validation"): 4848,
    ("rte", "train"): 2490, ("rte", "validation"): 277, ("wic", "train"): 5428, ("wic", "validation"): 638,
    ("wsc", "train"): 554, ("wsc", "validation"): 104, ("axb", "test"): 1104, ("axg", "test"): 356,
}


@pytest.fixture(scope="module")
def sg_dir(shared_data):
    return str(shared_data / "superglue")


@pytest.fixture(scope="module")
def record_dir(shared_data, tmp_path_factory):
    """ReCoRD exists only as FewGLUE's 32-query files: lay them out as the official ReCoRD/ directory."""
    root = tmp_path_factory.mktemp("record")
    (root / "ReCoRD").mkdir()
    for src, dst in (("train.jsonl", "train.jsonl"), ("dev32.jsonl", "val.jsonl")):
        (root / "ReCoRD" / dst).write_bytes((shared_data / "fewglue" / "ReCoRD" / src).read_bytes())
    return str(root)


@pytest.mark.parametrize("task,split", sorted(SIZES))
def test_real_splits_read_with_official_sizes(sg_dir, task, split):
    raw, stats = sgt.read_jsonl(task, split, sg_dir)
    assert len(raw) == SIZES[task, split] and stats.skipped == 0
    labels = collections.Counter(ex["label"] for ex in raw)
    assert set(labels) == set(range(sgt.SPECS[task].num_classes))  # every class, no -1


def test_test_splits_are_unlabelled(sg_dir):
    for task, n in (("boolq", 3245), ("cb", 250), ("copa", 500), ("multirc", 9693), ("rte", 3000),
                    ("wic", 1400), ("wsc", 146)):
        raw, _ = sgt.read_jsonl(task, "test", sg_dir)
        assert len(raw) == n and {ex["label"] for ex in raw} == {-1}


def _tfds_examples(task, path, split, limit):
    """What `tfds.load("super_glue/<task>")` yields for the first `limit` examples of an official file:
    the TFDS builder's own generator, encoded and decoded through its feature spec (no download)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder(f"super_glue/{sgt.SPECS[task].tfds_config}", data_dir=str(path) + ".tfds")
    out = []
    for _, ex in itertools.islice(builder._generate_examples(data_file=path, split=split), limit):
        encoded = builder.info.features.encode_example(ex)
        decoded = builder.info.features.decode_example(tf.nest.map_structure(tf.convert_to_tensor, encoded))
        out.append(sgt._to_python(tf.nest.map_structure(lambda t: t.numpy(), decoded)))
    return out


@pytest.mark.parametrize("task,split", [
    ("boolq", "validation"), ("cb", "validation"), ("copa", "validation"), ("multirc", "validation"),
    ("rte", "validation"), ("wic", "validation"), ("wsc", "validation"), ("axb", "test"), ("axg", "test"),
    ("rte", "test"), ("record", "validation"),
])
def test_jsonl_source_equals_tfds_builder(sg_dir, record_dir, task, split):
    data_dir = record_dir if task == "record" else sg_dir
    path = sgt.jsonl_path(task, split, data_dir)
    expected = _tfds_examples(task, path, split, limit=40)
    got = list(itertools.islice(sgt.iter_jsonl(task, split, data_dir), 40))
    assert got == expected


def test_text_casting_on_real_examples(sg_dir, record_dir):
    def first(task, split="validation", data_dir=sg_dir):
        raw = next(sgt.iter_jsonl(task, split, data_dir))
        return sgt.cast_text(task, raw, split)

    assert first("rte") == [{
        "inputs": "rte hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of the actor "
                  "Christopher Reeve, has died of lung cancer at age 44, according to the Christopher Reeve "
                  "Foundation.",
        "targets": "not_entailment", "idx": 0}]
    assert first("cb")[0]["targets"] == "contradiction"
    assert first("cb")[0]["inputs"].startswith("cb hypothesis: Valence was helping premise: Valence the void-brain")
    assert first("boolq")[0]["inputs"].startswith("boolq passage: Ethanol fuel -- All biomass")
    assert first("boolq")[0]["targets"] == "False"
    assert first("copa") == [{
        "inputs": "copa choice1: The toilet filled with water. choice2: Water flowed from the spout. premise: The "
                  "man turned on the faucet. question: effect",
        "targets": "choice2", "idx": 0}]
    assert first("wic") == [{
        "inputs": "wic sentence1: An emerging professional class. sentence2: Apologizing for losing your temper, "
                  "even though you were badly provoked, showed real class. word: class",
        "targets": "False", "idx": 0}]
    wsc = first("wsc")[0]
    assert wsc["inputs"].startswith("wsc span1_text: anyone span2_text: him text: Bernard , who had")
    assert wsc["inputs"].endswith("could take his claim away from *him* .") and wsc["targets"] == "False"
    mrc = first("multirc")[0]
    assert mrc["inputs"].startswith("multirc question: Would the mass of a baseball affect how much force you "
                                    "have to use to pick it up? answer: No paragraph: What causes a change")
    assert "<b>" not in mrc["inputs"] and "<br>" not in mrc["inputs"]
    assert mrc["targets"] == "False" and (mrc["idx/paragraph"], mrc["idx/question"], mrc["idx/answer"]) == (0, 0, 0)
    axb = first("axb", "test")[0]
    assert axb["inputs"] == "rte hypothesis: The cat did not sit on the mat. premise: The cat sat on the mat."
    assert axb["targets"] == "not_entailment" and axb["idx"] == 0
    # ReCoRD: eval carries one example per query with every gold answer; train one example per answer.
    rec = first("record", "validation", record_dir)[0]
    assert rec["inputs"].startswith("record query: They will sew our lips, but we will chant, 'Long live "
                                    "@placeholder.' entities: Asif Ali Zardari, Asif Zardari, Benazir Bhutto,")
    assert "@highlight" not in rec["inputs"]
    assert rec["targets"] == "Benazir Bhutto" and rec["answers"].split(sgt.ANSWER_SEPARATOR) == ["Benazir Bhutto", "Bhutto"]
    raw = next(sgt.iter_jsonl("record", "validation", record_dir))
    assert [e["targets"] for e in sgt.cast_text("record", raw, "train")] == ["Benazir Bhutto", "Bhutto"]


def test_wsc_marks_the_pronoun_by_index_even_when_the_index_is_off(sg_dir):
    raw, _ = sgt.read_jsonl("wsc", "validation", sg_dir)
    for ex in raw:
        marked = sgt.wsc_marked_text(ex)
        assert marked.count("*") == 2
        assert marked.split("*")[1].lower().strip(".,\"") == ex["span2_text"].lower()
    # val idx 42: span2_index points at "use", the pronoun "it" follows it.
    assert "want to use *it* ," in sgt.wsc_marked_text(raw[42])


def test_classifier_casting_on_real_examples(sg_dir, record_dir):
    raw, _ = sgt.read_jsonl("copa", "validation", sg_dir)
    cast = [c for ex in raw for c in sgt.cast_classifier("copa", ex, "validation")]
    assert len(cast) == 200
    assert cast[0] == {"inputs": "copa premise: The man turned on the faucet. question: effect choice: The toilet "
                                 "filled with water.", "label": 0, "candidate": 0, "idx": 0}
    assert cast[1]["label"] == 1 and cast[1]["inputs"].endswith("choice: Water flowed from the spout.")
    assert all(cast[2 * i]["label"] + cast[2 * i + 1]["label"] == 1 for i in range(100))  # one right choice
    # Paper tasks keep their classes and the same input text as the text casting.
    for task in ("boolq", "cb", "multirc", "rte", "wic", "wsc"):
        ex = next(sgt.iter_jsonl(task, "validation", sg_dir))
        (c,) = sgt.cast_classifier(task, ex, "validation")
        (t,) = sgt.cast_text(task, ex, "validation")
        assert c["inputs"] == t["inputs"] and sgt.SPECS[task].label_names[c["label"]] == t["targets"]
    # ReCoRD: one candidate per entity, the placeholder filled, positives exactly the gold answers.
    raw, _ = sgt.read_jsonl("record", "validation", record_dir)
    cast = sgt.cast_classifier("record", raw[0], "validation")
    assert len(cast) == len(raw[0]["entities"]) == 11
    assert cast[2]["inputs"].startswith("record query: They will sew our lips, but we will chant, 'Long live "
                                        "Benazir Bhutto.' passage: Islamabad, Pakistan (CNN)")
    assert sorted(c["entity"] for c in cast if c["label"] == 1) == ["Benazir Bhutto", "Bhutto"]


def test_label_from_text():
    assert sgt.label_from_text("cb", " neutral ") == 2
    assert sgt.label_from_text("boolq", "True") == 1
    assert sgt.label_from_text("copa", "choice2") == 1
    assert sgt.label_from_text("rte", "yes") == -1


def _write(tmp_path, task_dir, name, lines):
    (tmp_path / task_dir).mkdir(exist_ok=True)
    (tmp_path / task_dir / name).write_text("".join(line + "\n" for line in lines))
    return str(tmp_path / task_dir / name)


def test_bad_input_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"superglue_missing/RTE does not exist.*SUPERGLUE_DIR"):
        sgt.read_jsonl("rte", "train", str(tmp_path / "superglue_missing"))
    good = json.dumps({"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0})
    path = _write(tmp_path, "RTE", "train.jsonl", [
        good,
        json.dumps({"premise": "p", "label": "entailment", "idx": 1}),
        json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 2}),
        "{not json",
        json.dumps({"premise": "p", "hypothesis": "h", "idx": 4}),
        good,
    ])
    with pytest.raises(sgt.SuperGlueDataError, match=rf"{path}:2: .*missing field\(s\) \['hypothesis'\]"):
        sgt.read_jsonl("rte", "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"val.jsonl does not exist.*\['train.jsonl'\]"):
        sgt.read_jsonl("rte", "validation", str(tmp_path))
    raw, stats = sgt.read_jsonl("rte", "train", str(tmp_path), on_error="skip")
    assert len(raw) == 2 and stats.skipped == 4 and stats.lines == 6
    assert "unknown label 'maybe' for RTE" in stats.errors[1] and f"{path}:3" in stats.errors[1]
    assert "invalid JSON" in stats.errors[2] and "missing field(s) ['label']" in stats.errors[3]
    # An unlabelled line is fine in a test file, and a file with nothing usable is an error.
    _write(tmp_path, "RTE", "test.jsonl", [json.dumps({"premise": "p", "hypothesis": "h", "idx": 0})])
    assert sgt.read_jsonl("rte", "test", str(tmp_path))[0][0]["label"] == -1
    _write(tmp_path, "CB", "train.jsonl", [json.dumps({"premise": "p", "hypothesis": "h", "idx": 0, "label": 1})])
    with pytest.raises(sgt.SuperGlueDataError, match=r"CB/train.jsonl:1: unknown label 1 for CB"):
        sgt.read_jsonl("cb", "train", str(tmp_path))
    with pytest.raises(sgt.SuperGlueDataError, match="no examples read"):
        sgt.read_jsonl("cb", "train", str(tmp_path), on_error="skip")
    mrc = {"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "idx": 0, "answers": [
        {"text": "a", "idx": 0, "label": 1}, {"text": "b", "idx": 1, "label": 7}]}]}}
    _write(tmp_path, "MultiRC", "train.jsonl", [json.dumps(mrc)])
    with pytest.raises(sgt.SuperGlueDataError, match=r"MultiRC/train.jsonl:1: unknown label 7 for MultiRC"):
        sgt.read_jsonl("multirc", "train", str(tmp_path))
    with pytest.raises(ValueError, match="has no split 'train'"):
        sgt.read_jsonl("axb", "train", str(tmp_path))


def test_seqio_tasks_tokenize_real_examples(shared_data, sg_dir):
    import seqio

    vocab = seqio.SentencePieceVocabulary(str(shared_data / "models" / "stories260K" / "tok512.model"))
    names = sgt.register_superglue(vocab, casting="text", source="jsonl", data_dir=sg_dir, prefix="sgtest")
    assert "sgtest_rte_text" in names and "sgtest_axg_text" in names and names[-1] == "sgtest_text"
    mixture = seqio.get_mixture_or_task("sgtest_text")
    assert sorted(t.name for t in mixture.tasks) == sorted(f"sgtest_{t}_text" for t in sgt.TRAIN_TASKS)
    ds = seqio.get_mixture_or_task("sgtest_rte_text").get_dataset(
        {"inputs": 512, "targets": 32}, split="validation", shuffle=False)
    ex = next(ds.as_numpy_iterator())
    assert vocab.decode(ex["inputs"].tolist()).startswith("rte hypothesis: Christopher Reeve had an accident.")
    assert ex["inputs"][-1] == vocab.eos_id and vocab.decode(ex["targets"].tolist()) == "not_entailment"
    assert ex["idx"] == 0

    sgt.register_superglue(vocab, casting="classifier", source="jsonl", data_dir=sg_dir, prefix="sgtest",
                           tasks=["copa"])
    ds = seqio.get_mixture_or_task("sgtest_copa_classifier").get_dataset(
        {"inputs": 64}, split="validation", shuffle=False)
    got = [(int(e["idx"]), int(e["candidate"]), int(e["label"])) for e in itertools.islice(ds.as_numpy_iterator(), 4)]
    assert got == [(0, 0, 0), (0, 1, 1), (1, 0, 0), (1, 1, 1)]  # val labels: 1, 1
    with pytest.raises(ValueError, match="needs data_dir"):
        sgt.register_superglue(vocab, source="jsonl")

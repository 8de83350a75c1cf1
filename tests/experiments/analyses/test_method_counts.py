"""experiments/analyses/method_counts.py: trainable numbers on encoder shapes, against the paper's
counts, and the committed method_counts.json."""

from __future__ import annotations

import json
import pathlib

import gpart_jax as gj
from experiments.analyses import method_counts as method_counts

ROOT = pathlib.Path(__file__).resolve().parents[3]
TARGETS = ("query/kernel", "value/kernel")


def test_committed_result_is_current_and_matches_the_paper():
    doc = json.loads((ROOT / "experiments" / "results" / "method_counts.json").read_text())
    fresh = method_counts.measure({"MiniLM-L6-H384": method_counts.MODELS["MiniLM-L6-H384"]})
    assert [r for r in doc["rows"] if r["model"] == "MiniLM-L6-H384"] == fresh["rows"]
    assert doc["targets"] == list(TARGETS)
    rows = {(r["model"], r["method"]): r["trainable"] for r in doc["rows"]}
    assert len(rows) == len(method_counts.MODELS) * len(method_counts.configs("RoBERTa-base"))
    # The GPart paper's GLUE counts on RoBERTa q,v: LoRA 294K / 786K, VeRA 43K, GPart 23K.
    assert rows["RoBERTa-base", "lora"] == 294_912 and rows["RoBERTa-large", "lora"] == 786_432
    assert rows["RoBERTa-base", "vera"] == 43_008
    assert rows["RoBERTa-base", "gpart"] == rows["RoBERTa-large", "unilora"] == 23_040
    base = method_counts.encoder_shapes(12, 768)
    vera = gj.methods.build("vera", base, r=1024, targets=TARGETS)
    assert rows["RoBERTa-base", "vera"] == vera.num_trainable
    adapted = {r["model"]: r["adapted"] for r in doc["rows"] if r["method"] == "full"}
    assert adapted == {"MiniLM-L6-H384": 12 * 384**2, "RoBERTa-base": 24 * 768**2,
                       "RoBERTa-large": 48 * 1024**2}


def test_render_a_subset_of_models():
    doc = method_counts.measure({"MiniLM-L6-H384": method_counts.MODELS["MiniLM-L6-H384"]})
    lines = method_counts.render(doc).splitlines()
    assert len(lines) == 2 + 8
    assert "| MiniLM-L6-H384 | gpart | d=23,040 | 23,040 | 1,769,472 |" in method_counts.render(doc)
    assert method_counts.render(doc, ("RoBERTa-base",)).splitlines() == lines[:2]


def test_command_render_with_models(tmp_path, capsys, monkeypatch):
    measure = method_counts.measure
    monkeypatch.setattr(method_counts, "measure", lambda: measure({
        m: method_counts.MODELS[m] for m in ("MiniLM-L6-H384",
                                                                                   "RoBERTa-base")}))
    out = tmp_path / "counts.json"
    assert method_counts.main(["--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    capsys.readouterr()
    assert method_counts.main(["--render", "--out", str(out), "--models", "RoBERTa-base"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == method_counts.render(doc, ("RoBERTa-base",)) and "MiniLM" not in printed
    assert len(printed.splitlines()) == 2 + 8

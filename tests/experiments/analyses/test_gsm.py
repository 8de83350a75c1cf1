"""experiments/analyses/gsm.py: the GSM table from the suite's runs and the untuned model's eval
files (synthetic results files, no training), the data-cut check, and the committed gsm.json."""

from __future__ import annotations

import json
import pathlib

import pytest

from experiments import suite as suite
from experiments import workdir
from experiments.analyses import gsm as gsm
from experiments.config import fingerprint

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _test_metrics(exact: float, last: float) -> dict:
    return {"loss": 1.5, "examples": 200, "exact_match": exact, "last_number_match": last, "generated": 200,
            "sample": "so 3 + 4 = 7\n#### 7"}


def _eval_file(path: pathlib.Path, cfg, split: str, metrics: dict) -> dict:
    doc = {"adapter": "untuned", "split": split, **metrics, "config": cfg.to_dict()}
    path.write_text(json.dumps(doc))
    return doc


def test_table_rows_and_the_untuned_cut_check(tmp_path):
    runs_dir = tmp_path / "runs"
    runs = {r.name: r for r in suite.expand(suite.load_suite(gsm.SUITE), runs_dir)}
    assert sorted(runs) == ["smollm2_gsm_cpu_gpart_s0", "smollm2_gsm_cpu_unilora_s0"]
    gpart = runs["smollm2_gsm_cpu_gpart_s0"]
    cfg = gpart.load()
    gpart.workdir.mkdir(parents=True)
    workdir.write_json(gpart.workdir / workdir.RESULTS, {
        "fingerprint": fingerprint(cfg), "metric": "loss", "validation": {"loss": 0.9, "examples": 128},
        "test": _test_metrics(0.05, 0.08), "steps": 64, "train_time_s": 1000.0,
        "trainable": {"trainable": 23_040, "total_trainable": 23_040}})
    untuned = {"test": tmp_path / "u_test.json", "validation": tmp_path / "u_val.json"}
    _eval_file(untuned["test"], cfg, "test", _test_metrics(0.0, 0.2))
    _eval_file(untuned["validation"], cfg, "validation", {"loss": 1.2, "examples": 128})

    doc = gsm.collect(runs_dir, untuned)
    assert [r["method"] for r in doc["rows"]] == ["GPart d=23,040", "untuned SmolLM2-135M-Instruct"]
    assert doc["rows"][0]["validation_loss"] == 0.9 and doc["rows"][0]["exact_match"] == 0.05
    assert doc["rows"][0]["seed"] == 0 and doc["rows"][0]["steps"] == 64
    assert doc["rows"][1]["validation_loss"] == 1.2 and doc["rows"][1]["last_number_match"] == 0.2
    assert doc["not_done"] == {"smollm2_gsm_cpu_unilora_s0": "pending"}
    assert doc["cut"]["test_dataset"] == "gsm8k" and doc["cut"]["test_examples"] == 200
    assert doc["untuned_files"] == {"test": "u_test.json", "validation": "u_val.json"}
    table = gsm.render(doc).splitlines()
    assert table[2] == "| GPart d=23,040 | 23,040 | 0.900 | 1.500 | 5.0 | 8.0 | 200 |"
    assert table[3] == "| untuned SmolLM2-135M-Instruct | 0 | 1.200 | 1.500 | 0.0 | 20.0 | 200 |"
    assert table[-1] == "Not done yet: smollm2_gsm_cpu_unilora_s0 (pending)."

    other = cfg.copy_and_resolve_references()
    other.task.test_examples = 50  # scored on another subset: refused, not mixed into the table
    _eval_file(untuned["test"], other, "test", _test_metrics(0.0, 0.2))
    with pytest.raises(ValueError, match="u_test.json was scored on another data cut"):
        gsm.collect(runs_dir, untuned)
    _eval_file(untuned["test"], cfg, "validation", _test_metrics(0.0, 0.2))
    with pytest.raises(ValueError, match="holds the validation split, not test"):
        gsm.collect(runs_dir, untuned)
    # without the untuned files, the runs alone
    doc = gsm.collect(runs_dir, {"test": tmp_path / "none.json"})
    assert [r["method"] for r in doc["rows"]] == ["GPart d=23,040"] and doc["untuned_files"] == {}


def test_committed_result_is_of_the_committed_untuned_files():
    """gsm.json's untuned row is the committed eval files' numbers, of the suite's data cut."""
    doc = json.loads((gsm.RESULTS / "gsm.json").read_text())
    test = json.loads(gsm.UNTUNED["test"].read_text())
    validation = json.loads(gsm.UNTUNED["validation"].read_text())
    untuned = doc["rows"][-1]
    assert untuned["method"] == "untuned SmolLM2-135M-Instruct"
    assert (untuned["exact_match"], untuned["last_number_match"], untuned["test_loss"]) == (
        test["exact_match"], test["last_number_match"], test["loss"])
    assert untuned["validation_loss"] == validation["loss"]
    cut = {k: v for k, v in doc["cut"].items()}
    suite_cut = gsm._cut(suite.expand(suite.load_suite(gsm.SUITE))[0].load().task.to_dict())
    assert gsm._cut(test["config"]["task"]) == cut == suite_cut
    assert doc["not_done"] == {} and len(gsm.render(doc).splitlines()) == 2 + 3

"""experiments/report.py: the committed suite reports render the tables the results README holds,
and the report of synthetic ``results.json`` files (mean, std, pending runs, labels, the
top-level README's compact table). Nothing trains."""

from __future__ import annotations

import copy
import json
import pathlib
import re
import statistics

import pytest

from experiments import report as report
from experiments import suite as suite_runner
from experiments import workdir
from experiments.config import fingerprint

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # absl's config_flags
ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
COMMITTED = sorted(RESULTS.glob("suite_*.json"))
RT_GPART, RT_LORA, R8_GPART = ("configs/minilm.py:task=rt,method=gpart",
                               "configs/minilm.py:task=rt,method=lora",
                               "configs/minilm.py:task=r8,method=gpart")


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _readme_block(name: str) -> str:
    text = (RESULTS / "README.md").read_text()
    m = re.search(rf"<!-- {re.escape(name)}:start -->\n(.*?)\n<!-- {re.escape(name)}:end -->", text, re.S)
    assert m, f"experiments/results/README.md has no {name} block"
    return m.group(1)


# --------------------------------------------------------------------------- the committed reports

def test_every_committed_suite_report_is_of_a_suite():
    suites = {p.stem for p in (ROOT / "configs" / "suites").glob("*.py")}
    assert COMMITTED and {p.stem.removeprefix("suite_") for p in COMMITTED} <= suites


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_report_renders_the_readme_block(path):
    doc = json.loads(path.read_text())
    assert doc["suite"] == path.stem.removeprefix("suite_")
    assert report.render(doc) == _readme_block(path.stem)


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_cells_are_the_summary_of_its_runs(path, tmp_path):
    """The cells and cuts of a committed report are what ``summarize`` makes of its runs (a run
    record written before the report kept a field gets it from the run's config, by
    ``_run_record``'s own rule)."""
    doc = json.loads(path.read_text())
    suite = ROOT / "configs" / "suites" / f"{doc['suite']}.py"
    runs = suite_runner.expand(suite_runner.load_suite(suite), tmp_path / "none")
    fresh = {r.name: report._run_record(r) for r in runs}
    runs = [fresh[r["name"]] | copy.deepcopy(r) for r in doc["runs"]]
    again = json.loads(json.dumps(report.summarize(runs, doc["suite"])))
    shown = [{k: c[k] for k in cell} for c, cell in zip(again["cells"], doc["cells"], strict=True)]
    assert shown == doc["cells"]
    assert again["cuts"] == doc["cuts"]
    for cell in doc["cells"]:
        assert cell["n"] == len(cell["test"]) == len(cell["seeds"]) <= cell["expected"]
        if cell["n"] >= 2:
            assert cell["mean"] == pytest.approx(statistics.fmean(cell["test"]))
            assert cell["std"] == pytest.approx(statistics.stdev(cell["test"]))


def test_committed_reports_are_of_the_current_suites():
    """Each committed report lists the runs its suite expands to, with the same configs."""
    for path in COMMITTED:
        doc = json.loads(path.read_text())
        suite_file = ROOT / "configs" / "suites" / f"{doc['suite']}.py"
        runs = suite_runner.expand(suite_runner.load_suite(suite_file))
        assert [(r["name"], r["config"], r["workdir"]) for r in doc["runs"]] == [
            (r.name, r.config, str(r.workdir)) for r in runs], doc["suite"]


# --------------------------------------------------------------------------- synthetic runs

def _suite_file(tmp_path: pathlib.Path, entries: list[tuple[str, list[str]]], name: str) -> pathlib.Path:
    path = tmp_path / f"{name}.py"
    path.write_text(f"def get_suite():\n    return {entries!r}\n")
    return path


def _write_done(run: suite_runner.Run, test: float, validation: float, fp: str | None = None) -> None:
    cfg = run.load()
    metric = cfg.task.metric
    run.workdir.mkdir(parents=True, exist_ok=True)
    workdir.write_json(run.workdir / workdir.RESULTS, {
        "fingerprint": fp or fingerprint(cfg), "metric": metric,
        "test": {metric: test, "examples": 10}, "validation": {metric: validation, "examples": 10},
        "best_epoch": 1, "steps": 4, "train_time_s": 1.0,
        "trainable": {"method": cfg.method.name, "trainable": 100, "saved": 7, "total_trainable": 107}})


def test_report_mean_std_and_pending(tmp_path):
    entries = [suite_runner.entry(c, s) for c in (RT_GPART, RT_LORA, R8_GPART) for s in (0, 1, 2)]
    suite = _suite_file(tmp_path, entries, "synthetic")
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    runs = {r.name: r for r in suite_runner.expand(suite_runner.load_suite(suite), runs_dir)}
    for seed, test in enumerate((0.80, 0.82, 0.87)):
        _write_done(runs[f"minilm_rt_gpart_s{seed}"], test, test - 0.01)
    _write_done(runs["minilm_rt_lora_s1"], 0.75, 0.74)
    _write_done(runs["minilm_rt_lora_s2"], 0.99, 0.99, fp="another config")  # not this run's: not counted
    runs["minilm_r8_gpart_s0"].workdir.mkdir(parents=True)
    (runs["minilm_r8_gpart_s0"].workdir / workdir.RUN).write_text(
        json.dumps({"fingerprint": fingerprint(runs["minilm_r8_gpart_s0"].load())}))
    (runs_dir / "synthetic.jsonl").write_text(  # the suite log: r8 s1 failed; a cut line is ignored
        json.dumps({"run": "minilm_r8_gpart_s1", "event": "failed"}) + "\n{\"run\": \"minilm_r8\n")

    doc = report.report(suite, runs_dir, out)
    cells = {(c["task"], c["method"]): c for c in doc["cells"]}
    gpart = cells["rotten_tomatoes", "gpart"]
    assert gpart["n"] == 3 and gpart["expected"] == 3 and gpart["seeds"] == [0, 1, 2]
    assert gpart["mean"] == pytest.approx(statistics.fmean([0.80, 0.82, 0.87]))
    assert gpart["std"] == pytest.approx(statistics.stdev([0.80, 0.82, 0.87]))
    assert gpart["validation_mean"] == pytest.approx(statistics.fmean([0.79, 0.81, 0.86]))
    assert gpart["trainable"] == 100 and gpart["total_trainable"] == 107 and gpart["not_done"] == {}
    lora = cells["rotten_tomatoes", "lora"]
    assert lora["n"] == 1 and lora["mean"] == pytest.approx(0.75) and lora["std"] is None
    assert lora["not_done"] == {"minilm_rt_lora_s0": "pending", "minilm_rt_lora_s2": "conflict"}
    r8 = cells["r8", "gpart"]
    assert r8["n"] == 0 and r8["mean"] is None and r8["metric"] == "mcc"
    assert r8["not_done"] == {"minilm_r8_gpart_s0": "partial", "minilm_r8_gpart_s1": "failed",
                              "minilm_r8_gpart_s2": "pending"}
    cut = {(c["task"], c["key"]): c for c in doc["cuts"]}
    assert cut["rotten_tomatoes", "task.train_examples"]["identical"]
    assert cut["rotten_tomatoes", "task.train_examples"]["value"] == 5_632
    assert not cut["rotten_tomatoes", "optim.adapter_lr"]["identical"]  # LoRA's own rate

    written = json.loads((out / "suite_synthetic.json").read_text())
    assert written["cells"] == json.loads(json.dumps(doc["cells"]))
    text = (out / "README.md").read_text()
    assert report.render(written) in text
    mean, std = 100 * gpart["mean"], 100 * gpart["std"]
    assert f"| GPart d=23,040 | 100 (+ 7) | 3/3 | {mean:.1f} +- {std:.1f} | 82.0 |" in text
    assert "| LoRA r=8 | 100 (+ 7) | 1/3, s0 pending, s2 conflict | 75.0 (1 seed) | 74.0 |" in text
    assert ("| GPart d=23,040 | pending | 0/3, s0 partial, s1 failed, s2 pending | pending | pending |"
            in text)
    assert "99.0" not in text  # the other config's result is not shown
    assert "another model and benchmark" in text and "83.7 (23K)" in text
    assert "a fixed subset of 5,632 examples" in text
    assert (out / "suite_synthetic.png").stat().st_size > 0
    assert "RoBERTa-base GLUE avg" in text and "ViT-Base" not in text
    table = report.compact(doc).splitlines()  # the top-level README's view: method x task
    assert table[0] == "| method | trainable | Rotten Tomatoes (accuracy) | Reuters R8 (mcc) |"
    assert f"| GPart d=23,040 | 100 | {mean:.1f} +- {std:.1f} (3/3) | pending |" in table
    assert "| LoRA r=8 | 100 | 75.0 (1/3) |  |" in table

    # a second report replaces its block and keeps the rest of the README
    (out / "README.md").write_text(text + "\nhand-written note\n")
    for seed in (0, 1, 2):
        (runs[f"minilm_rt_gpart_s{seed}"].workdir / workdir.RESULTS).unlink()
    (runs["minilm_rt_lora_s1"].workdir / workdir.RESULTS).unlink()
    doc = report.report(suite, runs_dir, out)
    assert all(c["n"] == 0 for c in doc["cells"])
    text = (out / "README.md").read_text()
    assert text.count("<!-- suite_synthetic:start -->") == 1 and "hand-written note" in text
    assert "82.0" not in text
    assert not (out / "suite_synthetic.png").exists()  # no results: no (stale) chart


def test_report_labels_variants_and_uses_vision_columns_for_vit(tmp_path):
    entries = [suite_runner.entry(c, 0) for c in (RT_GPART, "configs/minilm.py:task=rt,method=gpart_l2",
                                       "configs/vit.py:task=digits,method=gpart",
                                       "configs/minilm.py:task=rt,method=gpart_balanced")]
    entries.append(suite_runner.entry("configs/minilm.py:task=rt,method=unilora", 0, {"method.d": 2880}))
    suite = _suite_file(tmp_path, entries, "mixed")
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    runs = {r.name: r for r in suite_runner.expand(suite_runner.load_suite(suite), runs_dir)}
    _write_done(runs["minilm_rt_gpart_s0"], 0.81, 0.80)
    _write_done(runs["minilm_rt_gpart_l2_s0"], 0.70, 0.69)
    _write_done(runs["vit_digits_gpart_s0"], 0.95, 0.94)
    _write_done(runs["minilm_rt_gpart_balanced_s0"], 0.82, 0.81)
    _write_done(runs["minilm_rt_unilora_d=2880_s0"], 0.78, 0.77)
    doc = report.report(suite, runs_dir, out)
    labels = {c["method_label"]: c for c in doc["cells"]}
    assert labels["GPart d=23,040"]["mean"] == pytest.approx(0.81)  # two cells, not one of two seeds
    assert labels["GPart d=23,040, L2 penalty"]["mean"] == pytest.approx(0.70)
    text = (out / "README.md").read_text()
    assert "| GPart d=23,040, L2 penalty | 100 (+ 7) | 1/1 | 70.0 (1 seed) | 69.0 | - | - |" in text
    # the paper ran neither the balanced scheme nor d = 2,880: no paper number beside them
    assert "| GPart d=23,040, balanced | 100 (+ 7) | 1/1 | 82.0 (1 seed) | 81.0 | - | - |" in text
    assert "| Uni-LoRA d=2,880 (method.d=2880) | 100 (+ 7) | 1/1 | 78.0 (1 seed) | 77.0 | - | - |" in text
    assert "| GPart d=23,040 | 100 (+ 7) | 1/1 | 81.0 (1 seed) | 80.0 | 83.7 (23K) | 86.3 (23K) |" in text
    assert "| GPart d=1,024 | 100 (+ 7) | 1/1 | 95.0 (1 seed) | 94.0 | 86.19 (72K) | 88.14 (144K) |" in text
    assert "**digits (8x8)**, ViT pretrained on Fashion-MNIST" in text


def test_compact_per_task_options_keeps_one_row_per_method(tmp_path):
    entries = [suite_runner.entry(RT_GPART, 0, {"optim.adapter_lr": 0.01}),
               suite_runner.entry(R8_GPART, 0, {"optim.adapter_lr": 0.02}),
               suite_runner.entry(RT_LORA, 0), suite_runner.entry("configs/minilm.py:task=r8,method=lora", 0),
               suite_runner.entry(RT_GPART, 0, {"optim.adapter_lr": 0.01, "method.d": 2880})]
    suite = _suite_file(tmp_path, entries, "per_task")
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    runs = {r.name: r for r in suite_runner.expand(suite_runner.load_suite(suite), runs_dir)}
    for name, test in (("minilm_rt_gpart_adapter_lr=0.01_s0", 0.81),
                       ("minilm_r8_gpart_adapter_lr=0.02_s0", 0.9), ("minilm_rt_lora_s0", 0.79),
                       ("minilm_rt_gpart_adapter_lr=0.01_d=2880_s0", 0.77)):
        _write_done(runs[name], test, test)
    doc = report.report(suite, runs_dir, out)
    plain = report.compact(doc).splitlines()  # a row per (method, options): GPart splits in two
    assert len(plain) == 2 + 4
    table = report.compact(doc, per_task_options=True).splitlines()
    assert table[2:] == [  # options by the last component of their key, less those the label shows
        "| GPart d=23,040 | 100 | 81.0 (1/1) at adapter_lr=0.01 | 90.0 (1/1) at adapter_lr=0.02 |",
        "| GPart d=2,880 | 100 | 77.0 (1/1) at adapter_lr=0.01 |  |",
        "| LoRA r=8 | 100 | 79.0 (1/1) | pending |"]
    doc["cells"].append(dict(doc["cells"][0], method_label="GPart d=23,040 (another)"))
    with pytest.raises(ValueError, match="two cells of 'GPart d=23,040' on rotten_tomatoes"):
        report.compact(doc, per_task_options=True)


def test_report_command(tmp_path, capsys):
    suite = _suite_file(tmp_path, [suite_runner.entry(RT_LORA, 0), suite_runner.entry(RT_LORA, 1)], "cmd")
    runs = suite_runner.expand(suite_runner.load_suite(suite), tmp_path / "runs")
    _write_done(runs[0], 0.8, 0.8)
    assert report.main([str(suite), "--runs-dir", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "out")]) == 0
    assert "suite cmd: 1/2 runs done" in capsys.readouterr().out
    assert report.main([str(tmp_path / "missing.py"), "--out", str(tmp_path / "out")]) == 2

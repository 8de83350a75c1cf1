"""experiments/benchmarks/accelerator.py, the prepared run for a lent accelerator, at its --small
sizes on 8 host CPU devices, in a process where the packages a lent machine lacks cannot be
imported: it runs to its JSON, the steps train data parallel exchanging the trainable size, and
every reparam variant is timed against the roof. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from experiments.benchmarks import accelerator
from tests.experiments.tiny import ROOT

MISSING_THERE = ("ml_collections", "tensorflow_datasets")  # not installed on a lent GPU machine


def test_the_small_run_writes_every_measurement_without_the_missing_packages(tmp_path):
    out = tmp_path / "accelerator.json"
    code = ("import runpy, sys; sys.modules.update(dict.fromkeys(sys.argv[1].split(','))); "
            "sys.argv = ['accelerator', *sys.argv[2:]]; "
            "runpy.run_module('experiments.benchmarks.accelerator', run_name='__main__')")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code, ",".join(MISSING_THERE), "--small",
                           "--rounds", "1", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["backend"] == "cpu" and len(doc["devices"]) == 8
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

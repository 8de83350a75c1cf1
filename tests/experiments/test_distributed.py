"""A run of 2 processes x 2 host devices (``jax.distributed`` over gloo) is the 4-device run.

The same tiny config trains once as one process with 4 host devices and once as 2 processes of
2 devices on localhost; the 2-process run is SIGKILLed part-way (its other process goes down
with it, through jax.distributed's heartbeat) and started again, and resumes. Its loss curve and
final adapter equal the 1-process run's within float32 reassociation (gloo adds up the
processes' gradients in another order). The run's files are written once, by its primary
process: one ``results.json``, a complete ``best_adapter``, verified checkpoints.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import gpart_jax as gj
from experiments import workdir

TINY = ["--config.model.num_layers=1", "--config.task.train_examples=64",
        "--config.task.validation_examples=32", "--config.task.test_examples=32",
        "--config.task.max_length=16", "--config.task.buckets=(16,)", "--config.train.batch_size=16",
        "--config.train.eval_batch_size=16", "--config.method.d=512", "--config.train.epochs=2",
        "--config.log_every=1", "--config.train.checkpoint_every=2", "--config.progress=False"]
TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run: pathlib.Path, processes: int, devices: int, port: int) -> list[subprocess.Popen]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    procs = []
    for i in range(processes):
        cmd = [sys.executable, "-m", "experiments", "train", "--config", "configs/minilm.py",
               *TINY, f"--config.workdir={run}"]
        if processes > 1:
            cmd += [f"--config.distributed.coordinator=127.0.0.1:{port}",
                    f"--config.distributed.num_processes={processes}",
                    f"--config.distributed.process_id={i}"]
        log = open(run.parent / f"{run.name}.proc{i}.log", "a")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
    return procs


def _wait(procs: list[subprocess.Popen], deadline: float) -> list[int]:
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            raise AssertionError("the processes did not finish in time")
        time.sleep(0.1)
    return [p.returncode for p in procs]


def _logged_steps(run: pathlib.Path) -> list[dict]:
    return [r for r in workdir.read_jsonl(run / workdir.METRICS) if "loss" in r and "split" not in r]


def test_two_processes_are_the_four_device_run_and_resume_after_a_kill(tmp_path):
    deadline = time.monotonic() + TIMEOUT_S
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert _wait(_start(single, 1, 4, 0), deadline) == [0]

    procs = _start(multi, 2, 2, _free_port())
    while len(_logged_steps(multi)) < 3:  # killed after its third step, past a checkpoint
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            (multi.parent / "multi.proc0.log").read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(procs[1].pid, signal.SIGKILL)
    codes = _wait(procs, deadline)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0  # the other process does not go on alone
    assert not (multi / workdir.RESULTS).exists()

    codes = _wait(_start(multi, 2, 2, _free_port()), deadline)
    assert codes == [0, 0], (multi.parent / "multi.proc0.log").read_text()[-3000:]
    log = (multi.parent / "multi.proc0.log").read_text()
    assert "resuming at step 2" in log or "resuming at step 4" in log, log[-2000:]

    want, got = _logged_steps(single), _logged_steps(multi)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-5)
    a, b = gj.load_adapter(single / workdir.BEST_ADAPTER), gj.load_adapter(multi / workdir.BEST_ADAPTER)
    np.testing.assert_allclose(b.trainable, a.trainable, atol=1e-6)
    for path in a.saved:
        np.testing.assert_allclose(b.saved[path], a.saved[path], atol=1e-6)
    results_a, results_b = (workdir.read_json(r / workdir.RESULTS) for r in (single, multi))
    assert results_b["devices"]["count"] == 4 and results_b["devices"]["processes"] == 2
    assert results_b["best_step"] == results_a["best_step"]
    assert abs(results_b["test"]["loss"] - results_a["test"]["loss"]) < 1e-5
    # written once and completely: one results file, no temporary left, verified checkpoints
    hidden = sorted(p.name for p in multi.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")
    assert hidden == [".lock"]
    assert sorted(p.name for p in (multi / workdir.BEST_ADAPTER).iterdir() if p.suffix == ".tmp") == []


@pytest.mark.slow
def test_auto_detection_without_a_cluster_is_one_process(tmp_path):
    """The default (auto-detection) with no TPU, SLURM or MPI cluster around is one process."""
    run = tmp_path / "auto"
    cmd = [sys.executable, "-m", "experiments", "train", "--config", "configs/minilm.py", *TINY,
           f"--config.workdir={run}", "--config.train.steps=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert workdir.read_json(run / workdir.RESULTS)["devices"]["processes"] == 1

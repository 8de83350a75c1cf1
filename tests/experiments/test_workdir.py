"""The workdir's rules (experiments/workdir.py): status, conflicts, the run lock, JSON files."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from experiments import workdir as workdir_rules
from tests.experiments.tiny import ROOT

FP, OTHER = "a" * 64, "b" * 64


# --------------------------------------------------------------------------- status

def test_status_rules(tmp_path):
    run = tmp_path / "run"
    assert workdir_rules.status(run, FP) == "pending"  # missing
    run.mkdir()
    assert workdir_rules.status(run, FP) == "pending"  # empty
    (run / workdir_rules.LOCK).write_text("{}")
    assert workdir_rules.status(run, FP) == "pending"  # only a lock left by a run that wrote nothing
    workdir_rules.write_json(run / workdir_rules.RUN, {"fingerprint": FP})
    assert workdir_rules.status(run, FP) == "partial"
    assert workdir_rules.status(run, OTHER) == "conflict"
    (run / workdir_rules.RESULTS).write_text('{"fingerprint": "' + FP[:10])  # cut short: not finished
    assert workdir_rules.status(run, FP) == "partial"
    workdir_rules.write_json(run / workdir_rules.RESULTS, {"fingerprint": FP})
    assert workdir_rules.status(run, FP) == "done"
    assert workdir_rules.status(run, OTHER) == "conflict"
    # results of another config win
    workdir_rules.write_json(run / workdir_rules.RESULTS, {"fingerprint": OTHER})
    assert workdir_rules.status(run, FP) == "conflict"


def test_what_is_not_a_run_is_a_conflict(tmp_path):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert workdir_rules.status(stranger, FP) == "conflict"
    (tmp_path / "file").write_text("x")
    assert workdir_rules.status(tmp_path / "file", FP) == "conflict"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / workdir_rules.RUN).write_text("[1, 2]")  # JSON, but not a run's
    assert workdir_rules.status(broken, FP) == "conflict"


def test_conflicts_are_explained_with_a_free_workdir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    workdir_rules.write_json(run / workdir_rules.RUN, {"fingerprint": OTHER})
    message = workdir_rules.explain_conflict(run, FP)
    assert f"workdir {run} holds a run of another config" in message
    assert OTHER[:12] in message and FP[:12] in message
    assert f"--config.workdir={run}-{FP[:8]}" in message
    (tmp_path / "file").write_text("x")
    assert "is a file" in workdir_rules.explain_conflict(tmp_path / "file", FP)
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    message = workdir_rules.explain_conflict(tmp_path / "stranger", FP)
    assert "holds no gpart-jax run" in message and "left as is" in message


# --------------------------------------------------------------------------- the lock

HOLD = ("import sys, time\n"
        "from experiments import workdir\n"
        "workdir.lock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")


def holder(path):
    """A process that holds ``path``'s run lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    proc = holder(tmp_path)
    try:
        with pytest.raises(workdir_rules.WorkdirError) as info:
            workdir_rules.lock(tmp_path).acquire()
        message = str(info.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in message
        assert "two trainers must not share a workdir" in message and "\n" not in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with workdir_rules.lock(tmp_path):  # the kernel released it with its holder: no stale lock
        doc = json.loads((tmp_path / workdir_rules.LOCK).read_text())
        assert doc == {"pid": os.getpid(), "host": socket.gethostname()}
    with workdir_rules.lock(tmp_path):  # and this process released its own
        pass


# --------------------------------------------------------------------------- JSON files

def test_read_jsonl_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "m.jsonl"
    assert workdir_rules.read_jsonl(path) == []
    workdir_rules.append_jsonl(path, {"step": 1, "loss": 0.5})
    workdir_rules.append_jsonl(path, {"step": 2, "loss": 0.25})
    with path.open("a") as f:
        f.write('{"step": 3, "lo')  # killed while appending
    assert workdir_rules.read_jsonl(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    with path.open("a") as f:  # the next append starts a line of its own... after a newline
        f.write("\n")
    workdir_rules.append_jsonl(path, {"step": 3, "loss": 0.125})
    assert [r["step"] for r in workdir_rules.read_jsonl(path)] == [1, 2, 3]


def test_truncate_jsonl_keeps_up_to_the_step(tmp_path):
    """What a resumed run redoes goes: the records after its step, and the test record of an
    unfinished run (its results were never written)."""
    path = tmp_path / "m.jsonl"
    workdir_rules.truncate_jsonl(path, 3)  # no file: nothing to do, nothing created
    assert not path.exists()
    for record in ({"event": "start"}, {"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5},
                   {"step": 4, "split": "validation"}, {"step": 4, "split": "test"},
                   {"step": 6, "loss": 0.2}):
        workdir_rules.append_jsonl(path, record)
    with path.open("a") as f:
        f.write('{"step": 7')
    workdir_rules.truncate_jsonl(path, 4)
    assert workdir_rules.read_jsonl(path) == [
        {"event": "start"}, {"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5},
                                  {"step": 4, "split": "validation"}]
    assert path.read_text().endswith("}\n")  # the cut line is gone too
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temporary left


def test_an_unreadable_json_file_is_an_error_not_a_missing_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    workdir_rules.write_json(run / workdir_rules.RUN, {"fingerprint": FP})
    workdir_rules.write_json(run / workdir_rules.RESULTS, {"fingerprint": FP})
    read_text = type(run).read_text

    def denied(self, *args, **kwargs):
        if self.name == workdir_rules.RESULTS:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(type(run), "read_text", denied)
    with pytest.raises(PermissionError):  # never "pending" or "partial": that would redo the run
        workdir_rules.status(run, FP)


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    workdir_rules.write_json(path, {"a": 1})
    assert workdir_rules.read_json(path) == {"a": 1}
    from gpart_jax import files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)  # the disk fills up while writing
    with pytest.raises(OSError) as info:
        workdir_rules.write_json(path, {"a": 2, "big": "x" * 10_000})
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert workdir_rules.read_json(path) == {"a": 1}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    workdir_rules.write_json(path, {"a": 3})
    assert json.loads(path.read_text()) == {"a": 3}


def test_read_json_treats_a_damaged_file_as_missing(tmp_path):
    assert workdir_rules.read_json(tmp_path / "none.json") is None
    (tmp_path / "cut.json").write_text('{"fingerprint": "ab')
    assert workdir_rules.read_json(tmp_path / "cut.json") is None
    (tmp_path / "list.json").write_text("[1]")
    assert workdir_rules.read_json(tmp_path / "list.json") is None

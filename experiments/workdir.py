"""The rules of a run's workdir, shared by the trainer and the suite runner (no jax needed).

A workdir holds one config's run:

* ``run.json``: the config and its fingerprint, written first;
* ``checkpoints/``: the run's checkpoints (``experiments.checkpoints``);
* ``metrics.jsonl``: one JSON object a line per log interval, evaluation and event;
* ``best_adapter/``: the adapter of the best validation step (``gpart_jax.save_adapter``);
* ``test_generations.jsonl`` (causal LM): each test prompt's answer and greedy generation;
* ``results.json``: written last, when the run is finished;
* ``.lock``: held by the run's (primary) process while it trains.

Its status for a config of fingerprint ``fp``: ``pending`` (missing or empty), ``partial``
(``run.json`` of ``fp``: resumes), ``done`` (``results.json`` of ``fp``) or ``conflict``
(another config's run, or files that are not a run: never touched). Every JSON file here is
written by ``write_json`` (a temporary sibling, flushed, then renamed).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

from gpart_jax import files

RESULTS = "results.json"
RUN = "run.json"
METRICS = "metrics.jsonl"
BEST_ADAPTER = "best_adapter"
CHECKPOINTS = "checkpoints"
TEST_GENERATIONS = "test_generations.jsonl"
LOCK = ".lock"
STATUSES = ("done", "partial", "pending", "conflict")


class WorkdirError(ValueError):
    """A workdir that holds something else than this config's run, or that another process is
    using; nothing in it is changed."""


def read_json(path: pathlib.Path) -> dict | None:
    """The JSON object at ``path``, or ``None`` when it is missing or not a JSON object (a file
    cut short counts as missing: its writer had not finished). A file that cannot be read
    (permissions, I/O) is an ``OSError``: taking it for missing would redo, and overwrite, it."""
    try:
        doc = json.loads(pathlib.Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json(path: pathlib.Path, doc, indent: int | None = 1) -> None:
    """Write ``doc`` as JSON atomically: a kill leaves the old file or the new one."""
    files.write_atomic(path, json.dumps(doc, indent=indent, default=str) + "\n")


def append_jsonl(path: pathlib.Path, record: dict) -> None:
    """Append one JSON line and flush it to disk."""
    with pathlib.Path(path).open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a kill (the last) is skipped."""
    try:
        lines = pathlib.Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def truncate_jsonl(path: pathlib.Path, step: int) -> None:
    """Keep the records up to ``step``: a resumed run redoes (identically) what came after it,
    and its test evaluation (a test record of an unfinished run was not followed by results)."""
    if pathlib.Path(path).exists():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step and r.get("split") != "test"]
        files.write_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in kept))


def status(workdir: pathlib.Path, fp: str) -> str:
    """``done``, ``partial``, ``pending`` or ``conflict`` for a run of fingerprint ``fp``."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        return "conflict"
    if not workdir.exists() or not [e for e in workdir.iterdir() if e.name != LOCK]:
        return "pending"
    for name in (RESULTS, RUN):
        record = read_json(workdir / name)
        if record is not None and record.get("fingerprint") != fp:
            return "conflict"
    if read_json(workdir / RESULTS) is not None:
        return "done"
    if read_json(workdir / RUN) is not None:
        return "partial"
    return "conflict"


def explain_conflict(workdir: pathlib.Path, fp: str) -> str:
    """Why ``workdir`` cannot hold the run of ``fp``, and what to pass instead."""
    suggestion = f"--config.workdir={workdir}-{fp[:8]}"
    if workdir.exists() and not workdir.is_dir():
        return f"workdir {workdir} is a file; choose another directory with {suggestion}"
    for name in (RESULTS, RUN):
        record = read_json(workdir / name)
        if record is not None and record.get("fingerprint") != fp:
            return (f"workdir {workdir} holds a run of another config (fingerprint "
                    f"{str(record.get('fingerprint'))[:12]}, this config {fp[:12]}); it is left as "
                    f"is: pass {suggestion}")
    return (f"workdir {workdir} is not empty and holds no gpart-jax run; it is left as is: pass "
            f"{suggestion}")


def lock(workdir: pathlib.Path) -> files.PathLock:
    """The run's lock (``workdir/.lock``): ``with lock(workdir):`` raises ``WorkdirError`` naming
    the process (pid and host) that trains in it already."""
    return _RunLock(pathlib.Path(workdir) / LOCK, f"run {workdir}")


class _RunLock(files.PathLock):
    def acquire(self):
        try:
            return super().acquire()
        except files.LockedError as e:
            raise WorkdirError(f"{e.strerror}; two trainers must not share a workdir") from None

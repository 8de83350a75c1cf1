"""Run a suite of (config, seed) runs until all are done: one runner for issue 7's experiments.

    python -m experiments.suite configs/suites/stage_a.py --dry-run          # done / partial / pending
    python -m experiments.suite configs/suites/stage_a.py                    # run what is left
    python -m experiments.suite configs/suites/stage_a.py --only 'minilm_rt_*_s0'

A suite file is a Python file with ``get_suite()`` returning a list of ``(config_path, overrides)``
entries (config paths relative to the repository root; overrides as on the command line, e.g.
``["--config.seed=1"]``). Each run's workdir is ``<runs-dir>/<config stem>_s<seed>`` (default
``runs/suite``), set with ``--config.workdir`` and ``--config.seed`` overrides, so a run here is
the same as ``gpart-jax train --config FILE --config.seed=S --config.workdir=runs/suite/...``.
Other overrides (a learning-rate sweep: ``--config.optim.adapter_lr=0.01``) name their own
workdir, ``<config stem>_adapter_lr=0.01_s<seed>``: the last component of each key and its value.

Bookkeeping is the trainer's own (``experiments/train.py``): a workdir with ``results.json`` of
the run's config is **done** and skipped; one with only ``run.json`` is **partial** and resumes
from its last checkpoint; an empty or missing one is **pending**. A workdir of another config is
a **conflict** (never touched; the trainer refuses it). The suite can be started again and again
(after a kill, a reboot or a failure) until every run is done. A run that raises is logged and
the others go on; every start, finish, skip and failure is one JSON line in
``<runs-dir>/<suite name>.jsonl``. Ctrl-C or SIGTERM stops the suite (the interrupted run resumes next
time). The exit code is 0 when every selected run is done, 1 when some failed or are left, 2 for
a bad suite file. Results are each run's ``results.json``; ``python -m experiments.report``
collects them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import pathlib
import sys
import time
import traceback
from collections.abc import Callable

import ml_collections

from experiments.config import ROOT, ConfigError, exec_python_file, fingerprint, load_config
from experiments.signals import sigterm_as_interrupt

DEFAULT_RUNS_DIR = pathlib.Path("runs") / "suite"
# File names of a trainer workdir (experiments.train.RESULTS / RUN; repeated here so that the
# dry run and the report do not import jax).
RESULTS = "results.json"
RUN = "run.json"
STATUSES = ("done", "partial", "pending", "conflict", "invalid")  # invalid: the config does not load

TrainFn = Callable[[ml_collections.ConfigDict], dict]


@dataclasses.dataclass(frozen=True)
class Run:
    """One entry of a suite: a config file, its overrides and the workdir they train in."""

    config: str  # path as written in the suite file (relative to the repository root)
    overrides: tuple[str, ...]  # the suite's overrides plus --config.seed and --config.workdir
    seed: int
    name: str  # <config stem>_s<seed>
    workdir: pathlib.Path

    def load(self) -> ml_collections.ConfigDict:
        """The run's config (the file with every override applied)."""
        return load_config(_resolve(self.config), list(self.overrides))


def _resolve(config: str) -> pathlib.Path:
    path = pathlib.Path(config)
    return path if path.is_absolute() or path.exists() else ROOT / path


def suite_name(suite_path: str | pathlib.Path) -> str:
    """The suite's name: its file's stem (``configs/suites/stage_a.py`` -> ``stage_a``)."""
    return pathlib.Path(suite_path).stem


def load_suite(suite_path: str | pathlib.Path) -> list[tuple[str, list[str]]]:
    """The ``(config_path, overrides)`` entries of a suite file's ``get_suite()``."""
    path = pathlib.Path(suite_path)
    module = exec_python_file(path, "suite", "get_suite", ROOT / "configs" / "suites")
    entries = []
    for entry in module.get_suite():
        if isinstance(entry, (str, pathlib.Path)):
            entry = (entry, [])
        config, overrides = entry
        entries.append((str(config), list(overrides)))
    return entries


def _tag(overrides: list[str]) -> str:
    """``_adapter_lr=0.01`` for ``["--config.optim.adapter_lr=0.01"]``: the part of a run's name
    that tells runs of one config and seed apart (empty without overrides)."""
    parts = []
    for o in overrides:
        key, _, value = o.removeprefix("--config.").partition("=")
        part = f"{key.rsplit('.', 1)[-1]}={value}"
        if not all(c.isalnum() or c in "._=+-" for c in part):
            raise ConfigError(f"override {o!r} cannot name a workdir (only letters, digits and . _ = + -); "
                              f"put it in a config file of its own")
        parts.append(part)
    return "".join("_" + p for p in parts)


def expand(entries: list[tuple[str, list[str]]],
           runs_dir: str | pathlib.Path = DEFAULT_RUNS_DIR) -> list[Run]:
    """``Run``s of suite entries: each gets ``--config.seed`` (from its overrides, else the config's
    default) and ``--config.workdir=<runs_dir>/<config stem>_s<seed>``. Raises ``ConfigError`` for a
    bad entry or two entries with one workdir (they would share, and refuse, one directory)."""
    runs, seen = [], {}
    for config, overrides in entries:
        own = [o for o in overrides if not o.startswith(("--config.workdir=", "--config.seed="))]
        seeds = [o.split("=", 1)[1] for o in overrides if o.startswith("--config.seed=")]
        seed = int(seeds[-1]) if seeds else int(load_config(_resolve(config), own).seed)
        name = f"{pathlib.Path(config).stem}{_tag(own)}_s{seed}"
        workdir = pathlib.Path(runs_dir) / name
        if name in seen:
            raise ConfigError(f"suite entries {seen[name]} and {(config, overrides)} both train in "
                              f"{workdir}; give them different configs or seeds")
        seen[name] = (config, overrides)
        runs.append(Run(config, tuple(own + [f"--config.seed={seed}", f"--config.workdir={workdir}"]),
                        seed, name, workdir))
    return runs


def select(runs: list[Run], only: str | None) -> list[Run]:
    """Runs whose name matches ``only`` (a glob, e.g. ``minilm_rt_*_s0``, or a substring)."""
    if not only:
        return runs
    return [r for r in runs if fnmatch.fnmatch(r.name, only) or only in r.name]


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_status(workdir: pathlib.Path, fp: str) -> str:
    """``done``, ``partial``, ``pending`` or ``conflict`` of a run of fingerprint ``fp`` (read only;
    the same rules as ``experiments.train.workdir_status``)."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        return "conflict"
    if not workdir.exists() or not any(workdir.iterdir()):
        return "pending"
    for name in (RESULTS, RUN):
        record = _read_json(workdir / name)
        if record is not None and record.get("fingerprint") != fp:
            return "conflict"
    if _read_json(workdir / RESULTS) is not None:
        return "done"
    if (workdir / RUN).exists():
        return "partial"
    return "conflict"


def status(run: Run) -> str:
    """The run's status (``run_status`` of its workdir and config)."""
    return run_status(run.workdir, fingerprint(run.load()))


def _log(path: pathlib.Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with path.open("a") as f:
        f.write(json.dumps({"time": stamp, **record}, default=str) + "\n")


def _default_train(cfg: ml_collections.ConfigDict) -> dict:
    from experiments.train import train  # jax is imported only when something trains

    return train(cfg)


def run_suite(suite_path: str | pathlib.Path, *, runs_dir: str | pathlib.Path = DEFAULT_RUNS_DIR,
              only: str | None = None, dry_run: bool = False, train_fn: TrainFn | None = None,
              out=None) -> list[dict]:
    """Run (or with ``dry_run`` list) the suite's runs that are not done; returns one record per
    selected run: ``name``, ``config``, ``seed``, ``workdir``, ``status`` before and ``outcome``
    (``skipped``, ``finished``, ``failed`` or, in a dry run, ``None``) with ``error`` when failed.

    ``train_fn(cfg) -> results`` defaults to ``experiments.train.train`` (tests pass a fake).
    Exceptions of a run are caught, logged and recorded; ``KeyboardInterrupt`` is logged and raised.
    Progress lines go to ``out`` (default ``sys.stdout``).
    """
    out = out or sys.stdout
    name = suite_name(suite_path)
    runs = select(expand(load_suite(suite_path), runs_dir), only)
    log_path = pathlib.Path(runs_dir) / f"{name}.jsonl"
    train_fn = train_fn or _default_train
    records = []
    for i, run in enumerate(runs, 1):
        record = {"suite": name, "run": run.name, "config": run.config, "seed": run.seed,
                  "workdir": str(run.workdir)}
        try:
            cfg = run.load()
            before = run_status(run.workdir, fingerprint(cfg))
        except ConfigError as e:
            cfg, before = None, "invalid"
            record["error"] = f"ConfigError: {e}"
        record["status"] = before
        head = f"[{i}/{len(runs)}] {run.name}: {before}"
        if dry_run:
            print(f"{head}  ({record.get('error', run.workdir)})", file=out)
            records.append(record | {"outcome": None})
            continue
        if before == "done":
            print(f"{head}, skipped", file=out)
            _log(log_path, record | {"event": "skipped"})
            records.append(record | {"outcome": "skipped"})
            continue
        if before in ("conflict", "invalid"):  # the trainer would refuse it; nothing is touched
            record.setdefault("error", f"{run.workdir} holds another config's run (or files that are not "
                                       f"a run); move it away to train this run there")
            print(f"{head}, failed: {record['error']}", file=out)
            _log(log_path, record | {"event": "failed"})
            records.append(record | {"outcome": "failed"})
            continue
        print(f"{head}, {'resuming' if before == 'partial' else 'training'}", file=out, flush=True)
        _log(log_path, record | {"event": "started"})
        t0 = time.perf_counter()
        try:
            results = train_fn(cfg)
        except KeyboardInterrupt:
            _log(log_path, record | {"event": "interrupted", "elapsed_s": round(time.perf_counter() - t0, 2)})
            raise
        except Exception as e:  # one run's failure does not stop the others
            error = f"{type(e).__name__}: {e}"
            _log(log_path, record | {"event": "failed", "error": error, "elapsed_s":
                                     round(time.perf_counter() - t0, 2),
                                     "traceback": traceback.format_exc(limit=8)[-4000:]})
            print(f"  {run.name} failed: {error}", file=out, flush=True)
            records.append(record | {"outcome": "failed", "error": error})
            continue
        metric = results.get("metric") if isinstance(results, dict) else None
        test = results.get("test", {}).get(metric) if metric else None
        _log(log_path, record | {"event": "finished", "elapsed_s": round(time.perf_counter() - t0, 2),
                                 "metric": metric, "test": test})
        records.append(record | {"outcome": "finished"})
    return records


def summary(records: list[dict]) -> str:
    """One line: how many runs are in each status (dry run) or had each outcome."""
    key = "status" if all(r["outcome"] is None for r in records) else "outcome"
    counts: dict[str, int] = {}
    for r in records:
        counts[r[key]] = counts.get(r[key], 0) + 1
    return f"{len(records)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items())


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m experiments.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="suite file, e.g. configs/suites/stage_a.py")
    parser.add_argument("--dry-run", action="store_true",
                        help="list done / partial / pending runs, train nothing")
    parser.add_argument("--only", default=None, help="runs whose name matches this glob or substring")
    parser.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="parent of the runs' workdirs")
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():  # kill / preemption: the run in progress keeps its last step
            records = run_suite(args.suite, runs_dir=args.runs_dir, only=args.only, dry_run=args.dry_run)
    except ConfigError as e:
        print(f"suite: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsuite: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary(records))
    if args.dry_run:
        return 0
    return 0 if all(r["outcome"] in ("skipped", "finished") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run a suite of runs until all are done.

    python -m experiments suite configs/suites/text_methods_default_rates.py --dry-run
    python -m experiments suite configs/suites/text_methods_default_rates.py
    python -m experiments suite configs/suites/text_methods_default_rates.py --only 'minilm_rt_*_s0'

A suite file is a Python file with ``get_suite()`` returning a list of ``(config, overrides)``
entries: ``config`` as for ``--config`` (``configs/minilm.py:task=rt,method=lora``), overrides as
on the command line (``["--config.seed=1"]``); ``entry(config, seed, {"optim.adapter_lr": 2e-2})``
builds one. Each run's workdir is ``<runs-dir>/<run name>`` (default ``runs/suite``), the run
name being the config's ``name`` (``minilm_rt_lora``), its other overrides as ``_<last key
component>=<value>`` (a learning-rate sweep: ``minilm_rt_lora_adapter_lr=0.001``) and
``_s<seed>``; so a run here is the same as ``python -m experiments train --config ...
--config.seed=S --config.workdir=runs/suite/<name>``.

Bookkeeping is the workdir's own (``experiments.workdir``): a **done** run is skipped, a
**partial** one resumes from its last checkpoint, a **pending** one starts, a **conflict** (another
config's run, or foreign files) is never touched. The suite can be started again and again
(after a kill, a reboot or a failure) until every run is done. A run that raises is logged and
the others go on; every start, finish, skip and failure is one JSON line in
``<runs-dir>/<suite name>.jsonl``. Ctrl-C or SIGTERM stops the suite after the run's current
step (that run resumes next time). The exit code is 0 when every selected run is done, 1 when
some failed or are left, 2 for a bad suite file. Results are each run's ``results.json``;
``python -m experiments report`` collects them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import pathlib
import sys
import time
import traceback
from collections.abc import Callable

import ml_collections

from experiments import workdir
from experiments.config import ConfigError, fingerprint, load_config
from experiments.signals import NEVER, StopRequest, stop_requests

DEFAULT_RUNS_DIR = pathlib.Path("runs") / "suite"
STATUSES = (*workdir.STATUSES, "invalid")  # invalid: the config does not load

TrainFn = Callable[[ml_collections.ConfigDict, StopRequest], dict]


@dataclasses.dataclass(frozen=True)
class Run:
    """One entry of a suite: a config file, its overrides and the workdir they train in."""

    config: str  # as --config takes it: path[:argument]
    overrides: tuple[str, ...]  # the suite's overrides plus --config.seed and --config.workdir
    seed: int
    name: str  # <config name><override tags>_s<seed>
    workdir: pathlib.Path

    def load(self) -> ml_collections.ConfigDict:
        """The run's config (the file with every override applied)."""
        return load_config(self.config, list(self.overrides))


def entry(config: str, seed: int, overrides: dict | None = None) -> tuple[str, list[str]]:
    """A suite entry: ``config`` with ``overrides`` (``{"optim.adapter_lr": 2e-2}``, in order;
    floats written as ``%g``) and ``seed``."""
    items = [f"--config.{k}={v:g}" if isinstance(v, float) else f"--config.{k}={v}"
             for k, v in (overrides or {}).items()]
    return config, [*items, f"--config.seed={seed}"]


def suite_name(suite_path: str | pathlib.Path) -> str:
    """The suite's name: its file's stem (``configs/suites/lr_sweep_text.py`` -> ``lr_sweep_text``)."""
    return pathlib.Path(suite_path).stem


def load_suite(suite_path: str | pathlib.Path) -> list[tuple[str, list[str]]]:
    """The ``(config, overrides)`` entries of a suite file's ``get_suite()``."""
    import importlib.util

    path = pathlib.Path(suite_path)
    if not path.is_file():
        raise ConfigError(f"suite file {path} not found (suites live in configs/suites/; run from the "
                          f"repository root)")
    spec = importlib.util.spec_from_file_location(f"gpart_suite_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"suite file {path} could not be loaded: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_suite"):
        raise ConfigError(f"suite file {path} has no get_suite() function")
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
    default) and ``--config.workdir=<runs_dir>/<run name>``. Raises ``ConfigError`` for a bad entry
    or two entries with one workdir (they would share, and refuse, one directory)."""
    runs, seen = [], {}
    for config, overrides in entries:
        own = [o for o in overrides if not o.startswith(("--config.workdir=", "--config.seed="))]
        seeds = [o.split("=", 1)[1] for o in overrides if o.startswith("--config.seed=")]
        cfg = load_config(config, own)
        seed = int(seeds[-1]) if seeds else int(cfg.seed)
        name = f"{cfg.name}{_tag(own)}_s{seed}"
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


def status(run: Run) -> str:
    """The run's status (``experiments.workdir.status`` of its workdir and config)."""
    return workdir.status(run.workdir, fingerprint(run.load()))


def _log(path: pathlib.Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    workdir.append_jsonl(path, {"time": stamp, **record})


def _default_train(cfg: ml_collections.ConfigDict, stop: StopRequest = NEVER) -> dict:
    from experiments.train import train  # the trainer's packages are loaded when something trains

    return train(cfg, stop=stop)


def run_suite(suite_path: str | pathlib.Path, *, runs_dir: str | pathlib.Path = DEFAULT_RUNS_DIR,
              only: str | None = None, dry_run: bool = False, train_fn: TrainFn | None = None,
              out=None, stop: StopRequest = NEVER) -> list[dict]:
    """Run (or with ``dry_run`` list) the suite's runs that are not done; returns one record per
    selected run: ``name``, ``config``, ``seed``, ``workdir``, ``status`` before and ``outcome``
    (``skipped``, ``finished``, ``failed`` or, in a dry run, ``None``) with ``error`` when failed.

    ``train_fn(cfg, stop) -> results`` defaults to ``experiments.train.train`` (tests pass a fake);
    ``stop`` is checked between runs and passed to the trainer.
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
        stop.check()
        record = {"suite": name, "run": run.name, "config": run.config, "seed": run.seed,
                  "workdir": str(run.workdir)}
        try:
            cfg = run.load()
            before = workdir.status(run.workdir, fingerprint(cfg))
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
            record.setdefault("error", workdir.explain_conflict(run.workdir, fingerprint(cfg)))
            print(f"{head}, failed: {record['error']}", file=out)
            _log(log_path, record | {"event": "failed"})
            records.append(record | {"outcome": "failed"})
            continue
        print(f"{head}, {'resuming' if before == 'partial' else 'training'}", file=out, flush=True)
        _log(log_path, record | {"event": "started"})
        t0 = time.perf_counter()
        try:
            results = train_fn(cfg, stop)
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
    parser = argparse.ArgumentParser(prog="python -m experiments suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="suite file, e.g. configs/suites/text_methods_default_rates.py")
    parser.add_argument("--dry-run", action="store_true",
                        help="list done / partial / pending runs, train nothing")
    parser.add_argument("--only", default=None, help="runs whose name matches this glob or substring")
    parser.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="parent of the runs' workdirs")
    args = parser.parse_args(argv)
    try:
        with stop_requests() as stop:  # kill / preemption: the run in progress keeps its last step
            records = run_suite(args.suite, runs_dir=args.runs_dir, only=args.only,
                                dry_run=args.dry_run, stop=stop)
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

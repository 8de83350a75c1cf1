"""``python -m experiments``: the experiments' commands, run from a checkout's root.

    python -m experiments train  [--config FILE[:ARG]] [--config.KEY=VALUE ...]
    python -m experiments eval   [--config ...] [--adapter DIR | --untuned] [--split S] [--out F]
    python -m experiments merge  [--config ...] --adapter DIR --out DIR [--dtype base|float32]
    python -m experiments params [--config ...]
    python -m experiments pretrain-vit [--epochs N] [--out DIR]
    python -m experiments suite  SUITE [--dry-run] [--only GLOB] [--runs-dir DIR]
    python -m experiments report SUITE [--runs-dir DIR]

``--config`` defaults to ``configs/minilm.py`` (MiniLM + GPart on Rotten Tomatoes). ``train``
resumes an interrupted run in the config's workdir and skips a finished one; Ctrl-C or SIGTERM
checkpoints its last completed step and exits with 130. Several processes: give each
``--config.distributed.coordinator=HOST:PORT --config.distributed.num_processes=N
--config.distributed.process_id=I`` (without them, JAX's auto-detection: a TPU pod slice,
SLURM or MPI). ``eval`` scores an adapter (default: the workdir's ``best_adapter``; a reference
PEFT adapter directory is read directly) on a split (default ``validation``) and prints JSON
(``--out`` also writes it, with the config and a causal LM's generations); ``--untuned`` scores
the model as the method initialises it, which must be the base model unchanged. ``merge`` folds
an adapter into the base and writes ``params.safetensors`` (flat ``/``-joined flax paths) plus
``merge.json``. ``params`` prints the trainable counts from parameter shapes, without reading
weights or data. A bad input is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

USAGE = __doc__.split("\n\n")[1]
CONFIG_COMMANDS = ("train", "eval", "merge", "params")
COMMANDS = (*CONFIG_COMMANDS, "pretrain-vit", "suite", "report")


def parse(argv: list[str]) -> tuple[str, argparse.Namespace, list[str]]:
    """``(command, options, overrides)``; overrides are the ``--config.KEY=VALUE`` items."""
    from experiments.config import DEFAULT_CONFIG, ConfigError

    class _Parser(argparse.ArgumentParser):
        def error(self, message):  # one line and exit code 2, as every other bad input
            raise ConfigError(f"{message} (see python -m experiments --help)")

    command, rest = argv[0], argv[1:]
    overrides = [a for a in rest if a.startswith("--config.")]
    others = [a for a in rest if not a.startswith("--config.")]
    parser = _Parser(prog=f"python -m experiments {command}", add_help=False)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    if command == "eval":
        parser.add_argument("--adapter", default=None)
        parser.add_argument("--split", default="validation", choices=("validation", "test", "train"))
        parser.add_argument("--untuned", action="store_true")
        parser.add_argument("--out", default=None)
    if command == "merge":
        parser.add_argument("--adapter", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--dtype", default="base", choices=("base", "float32"))
    return command, parser.parse_args(others), overrides


def _errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are bad input (printed as one line), not bugs (which keep their traceback)."""
    import gpart_jax as gj
    from experiments.checkpoints import CheckpointConfigError, CheckpointCorruptError
    from experiments.config import ConfigError
    from experiments.data.order import OrderError
    from experiments.data.sources import DataUnavailableError
    from experiments.models.deps import MissingPackageError
    from experiments.models.vit import MissingPretrainedError
    from experiments.tasks import UsageError
    from experiments.workdir import WorkdirError

    return (ConfigError, UsageError, WorkdirError, MissingPackageError, MissingPretrainedError,
            DataUnavailableError, OrderError, gj.AdapterError, gj.LayoutMismatchError,
            gj.TargetError, gj.InteropError, CheckpointCorruptError, CheckpointConfigError,
            FileExistsError, PermissionError)


def cmd_train(cfg, stop) -> int:
    from experiments.train import train

    train(cfg, stop=stop)
    return 0


def load_adapter(cfg, task_or_base, model_module, adapter: str | None):
    """``(where, method, trainable, saved)`` of a gpart-jax adapter or a reference PEFT adapter
    directory (planned onto the model with ``gpart_jax.interop.plan_flax``)."""
    import gpart_jax as gj
    from experiments import workdir

    path = pathlib.Path(adapter) if adapter else pathlib.Path(cfg.workdir) / workdir.BEST_ADAPTER
    if not path.exists():
        raise gj.AdapterError(f"no adapter at {path}; train first (python -m experiments train with "
                              f"this config) or pass --adapter DIR")
    if (path / "adapter_config.json").is_file():
        if not hasattr(model_module, "peft_name_map"):
            raise gj.InteropError(f"{path} is a reference (PEFT) adapter, and model "
                                  f"{cfg.model.name!r} has no PEFT name map")
        plan = gj.interop.plan_flax(path, task_or_base, model_module.peft_name_map(task_or_base))
        import jax.numpy as jnp

        return str(path), plan.create_gpart(task_or_base), jnp.asarray(plan.theta), plan.saved
    loaded = gj.load_adapter(path, base_params=task_or_base)
    return str(path), loaded.method, loaded.trainable, loaded.saved


def _untuned(task, runner):
    """The trainable a run of this config starts from, checked to leave every base weight as it is."""
    import jax
    import numpy as np

    from experiments.tasks import UsageError

    state = jax.device_get(runner.init_state(total_steps=1))
    applied = task.method.apply(state["trainable"], task.base)
    changed = [jax.tree_util.keystr(k) for (k, a), b in
               zip(jax.tree_util.tree_leaves_with_path(applied), jax.tree_util.tree_leaves(task.base),
                   strict=True) if not np.array_equal(np.asarray(a), np.asarray(b))]
    if changed:
        raise UsageError(f"--untuned: {task.method.name}'s initial trainable changes {changed[0]} "
                         f"(and {len(changed) - 1} more), so it is not the untuned model; use a "
                         f"method whose init is the identity (gpart, lora)")
    return state["trainable"], state["saved"]


def _check_out(out: str | None) -> None:
    if out is None:
        return
    path = pathlib.Path(out)
    if path.exists():
        raise FileExistsError(f"--out {out} exists; nothing was written: remove it or choose another "
                              f"file")
    if not path.parent.is_dir():
        raise FileExistsError(f"the directory of --out {out} does not exist; create it first")


def cmd_eval(cfg, adapter: str | None, split: str, untuned: bool = False, out: str | None = None,
             stop=None) -> int:
    import dataclasses

    from experiments import workdir
    from experiments.config import fingerprint
    from experiments.signals import NEVER
    from experiments.tasks import UsageError, build_task, check_method
    from experiments.train import Runner

    if untuned and adapter:
        raise UsageError("give --adapter DIR or --untuned, not both")
    _check_out(out)
    check_method(cfg)
    task = build_task(cfg)
    if untuned:
        runner = Runner(task, cfg)
        where = "untuned (the method's init: the base model)"
        trainable, saved = _untuned(task, runner)
    else:
        where, method, trainable, saved = load_adapter(cfg, task.base, task.model_module, adapter)
        task = dataclasses.replace(task, method=method)
        runner = Runner(task, cfg)
    metrics = runner.evaluate(trainable, saved, split, keep_generations=True, stop=stop or NEVER)
    generations = metrics.pop("generations", None)
    doc = {"adapter": where, "split": split,
           "dataset": task.info["dataset"] if split != "test" else task.info["test_dataset"],
           "examples_in_split": task.info["examples"][split], **metrics,
           "config": cfg.to_dict(), "fingerprint": fingerprint(cfg)}
    print(json.dumps({k: v for k, v in doc.items() if k != "config"}, indent=1, default=str))
    if out:  # with the whole config (and a causal LM's generations): the file says what it measured
        if generations is not None:
            doc["generations"] = generations
        workdir.write_json(pathlib.Path(out), doc)
    return 0


def _publish_merged(out_dir: pathlib.Path, flat: dict, record: dict) -> None:
    """Write ``params.safetensors`` and ``merge.json`` into a new directory ``out_dir``, whole or
    not at all: into a temporary sibling, flushed to disk, then renamed, under a lock next to it
    (a second merge to the same ``--out`` is refused, naming the first)."""
    import errno
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    from experiments import workdir
    from gpart_jax import files

    with files.PathLock(out_dir.with_name(f".{out_dir.name}.lock"), f"--out {out_dir}", remove=True):
        if out_dir.exists():
            raise FileExistsError(f"--out {out_dir} exists; nothing was written: choose another --out")
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            save_file(flat, str(tmp / "params.safetensors"))
            workdir.write_json(tmp / "merge.json", record)
            files.fsync_tree(tmp)
            files.publish_dir(tmp, out_dir)  # out_dir does not exist (under the lock): one rename
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if files.disk_full(e):  # safetensors' writer says it as SafetensorError
                raise OSError(errno.ENOSPC, f"the disk is full: --out {out_dir} was not written; "
                              f"free some space and run again") from None
            raise


def cmd_merge(cfg, adapter: str, out: str, dtype: str, stop=None) -> int:
    import numpy as np

    import gpart_jax as gj
    from experiments import models
    from experiments.config import fingerprint
    from experiments.models.names import flatten_params
    from experiments.tasks import check_config, num_classes_of

    out_dir = pathlib.Path(out)
    if out_dir.exists():
        raise FileExistsError(f"--out {out_dir} exists; nothing was written: choose another --out")
    if not out_dir.parent.is_dir():
        raise FileExistsError(f"the directory of --out {out_dir} does not exist; create it first")
    model_module = check_config(cfg)
    _, base = model_module.load(cfg, num_classes_of(cfg) if model_module.KIND == "classification"
                                else None)
    where, method, trainable, saved = load_adapter(cfg, base, models.get(cfg.model.name), adapter)
    merged = gj.merge(method, trainable, base, saved=saved, dtype=dtype)
    if stop is not None:
        stop.check()  # before anything is written
    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_params(merged).items()}
    _publish_merged(out_dir, flat, {
        "adapter": where, "method": method.spec().get("method"), "config_fingerprint": fingerprint(cfg),
        "dtype": dtype, "tensors": len(flat), "format": "safetensors, keys are flax paths joined "
        "by '/' (experiments.models.names.unflatten_params rebuilds the dict)"})
    print(f"merged params ({len(flat)} tensors) written to {out_dir / 'params.safetensors'}")
    return 0


def cmd_params(cfg) -> int:
    import gpart_jax as gj
    from experiments import models
    from experiments.tasks import abstract_params, build_method, saved_paths
    from gpart_jax.paths import leaves_with_paths

    _, shapes = abstract_params(cfg)
    method = build_method(cfg, shapes)
    flat = dict(leaves_with_paths(shapes)[0])
    saved = {p: flat[p] for p in saved_paths(cfg, models.get(cfg.model.name), shapes)}
    print(json.dumps(gj.methods.count(method, saved), indent=1))
    return 0


def quiet_writer_threads() -> None:
    """Keep a command's process to its one error line when orbax's writer threads fail.

    For ``python -m experiments`` (the process, not ``main``): on a full disk, orbax's writer
    threads log the error with its traceback (an absl ERROR, or asyncio's "Task exception was
    never retrieved") around the command's own report of it in one line (``the disk is full:
    ...``); and tensorstore's callbacks of the failed write, arriving after orbax closed its
    event loop, print ``RuntimeError: Event loop is closed`` tracebacks as unraisable
    exceptions, up to the process's exit. A writer thread still running when the interpreter
    shuts down after that error logs ``cannot schedule new futures after interpreter shutdown``
    (an absl ERROR with a traceback, seen once in a full-disk test). These are dropped; every
    other record and unraisable exception goes through.
    """
    import logging

    from gpart_jax import files  # the write path only: no jax

    def noise(e: BaseException) -> bool:
        return files.disk_full(e) or (
            isinstance(e, RuntimeError) and "after interpreter shutdown" in str(e))

    def keep(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not any(noise(e) for e in files.error_chain(error))

    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(keep)
    previous = sys.unraisablehook

    def unraisable(info) -> None:
        if not (isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"):
            previous(info)

    sys.unraisablehook = unraisable


def main(argv: list[str] | None = None) -> int:
    """Run ``argv`` (the subcommand first); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[1:2] in (["-h"], ["--help"]):
        print("usage:\n" + USAGE)
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(f"python -m experiments: unknown command {command!r}; one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    if command == "pretrain-vit":
        from experiments import pretrain_vit

        return pretrain_vit.main(argv[1:])
    if command == "suite":
        from experiments import suite

        return suite.main(argv[1:])
    if command == "report":
        from experiments import report

        return report.main(argv[1:])
    from experiments.signals import stop_requests

    # SIGTERM and Ctrl-C become a request from here on (before jax is imported): honoured at
    # safe points, never in the middle of XLA's compilation (experiments/signals.py)
    with stop_requests() as stop:
        try:
            errors = _errors()
        except ImportError as e:  # jax or the experiments' own packages are missing
            print(f"python -m experiments {command}: {e}; install with: bash experiments/install.sh",
                  file=sys.stderr)
            return 2
        try:
            from experiments.config import load_config

            command, options, overrides = parse(argv)
            cfg = load_config(options.config, overrides)
            stop.check()
            if command == "train":
                return cmd_train(cfg, stop)
            if command == "eval":
                return cmd_eval(cfg, options.adapter, options.split, options.untuned, options.out,
                                stop)
            if command == "merge":
                return cmd_merge(cfg, options.adapter, options.out, options.dtype, stop)
            return cmd_params(cfg)
        except errors as e:
            print(f"python -m experiments {command}: {str(e).strip()}", file=sys.stderr)
            return 2
        except OSError as e:  # a full disk, a read-only workdir: one line, nothing half-written
            print(f"python -m experiments {command}: {e.strerror or e}"
                  + (f" ({e.filename})" if e.filename else ""), file=sys.stderr)
            return 2
        except FloatingPointError as e:  # a diverged run: its checkpoints stay for inspection
            print(f"python -m experiments {command}: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            hint = ("; the last completed step is checkpointed: run the same command again to "
                    "resume" if command == "train" else "")
            print(f"\npython -m experiments {command}: interrupted{hint}", file=sys.stderr)
            return 130

"""The experiment subcommands of ``gpart-jax`` (dispatched here by ``gpart_jax.cli``).

    gpart-jax train  [--config FILE] [--config.KEY=VALUE ...]
    gpart-jax eval   [--config FILE] [--config.KEY=VALUE ...] [--adapter DIR | --untuned]
                     [--split validation|test|train] [--out FILE.json]
    gpart-jax merge  [--config FILE] [--config.KEY=VALUE ...] --adapter DIR --out DIR
    gpart-jax params [--config FILE] [--config.KEY=VALUE ...]

``--config`` defaults to ``configs/minilm_rt_gpart.py``. ``train`` resumes an interrupted run in
the config's workdir and skips a finished one; Ctrl-C or SIGTERM checkpoints its last completed
step and exits with 130. ``eval`` scores an adapter (default: the
workdir's ``best_adapter``) on a split (default ``validation``) and prints JSON (``--out`` also
writes it to a file, with the config and a causal LM's generations); ``--untuned`` scores the
model as the method initialises it, which must be the base model unchanged (GPart's theta = 0,
LoRA's B = 0; the untuned baseline). ``merge`` folds an adapter into the base and writes
``params.safetensors`` (flat ``/``-joined flax paths, float32 or the base dtype; load with
``experiments.models.names.unflatten_params``) plus ``merge.json``. ``params`` prints the
trainable counts (``gpart_jax.methods.count``) from parameter shapes, without reading weights or
data. A bad input (unknown config key, dataset or method, missing package, a workdir of another
config, an existing output) is one line on stderr and exit code 2; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from experiments.config import DEFAULT_CONFIG, ConfigError, fingerprint, load_config
from experiments.signals import sigterm_as_interrupt

USAGE = __doc__.split("\n\n")[1]
COMMANDS = ("train", "eval", "merge", "params")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, as every other bad input
        raise ConfigError(f"{message} (see {self.prog} --help)")


def parse(argv: list[str]) -> tuple[str, argparse.Namespace, list[str]]:
    """``(command, options, overrides)``; overrides are the ``--config.KEY=VALUE`` items."""
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"expected one of {', '.join(COMMANDS)} (see gpart-jax --help)")
    command, rest = argv[0], argv[1:]
    overrides = [a for a in rest if a.startswith("--config.")]
    others = [a for a in rest if not a.startswith("--config.")]
    parser = _Parser(prog=f"gpart-jax {command}", add_help=False)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
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
    from experiments.data.sources import DataUnavailableError
    from experiments.models.deps import MissingPackageError
    from experiments.tasks import UsageError
    from gpart_jax.checkpoint import AdapterError
    from gpart_jax.core import LayoutMismatchError

    return (ConfigError, UsageError, MissingPackageError, DataUnavailableError, AdapterError,
            LayoutMismatchError, FileExistsError)


def cmd_train(cfg) -> int:
    from experiments.train import train

    train(cfg)
    return 0


def _load_trainable(cfg, method, adapter: str | None):
    from experiments.train import BEST_ADAPTER
    from gpart_jax.checkpoint import load_adapter

    path = pathlib.Path(adapter) if adapter else pathlib.Path(cfg.workdir) / BEST_ADAPTER
    if not path.exists():
        from gpart_jax.checkpoint import AdapterError

        raise AdapterError(f"no adapter at {path}; train first (gpart-jax train with this config) or "
                           f"pass --adapter DIR")
    return path, load_adapter(path, method=method)


def _untuned_trainable(cfg, task, runner):
    """The trainable a run of ``cfg`` starts from (``Runner.init_state``), checked to leave every
    base weight as it is."""
    import jax
    import numpy as np

    trainable = runner.init_state(total_steps=1)["trainable"]
    applied = task.method.apply(trainable["adapter"], task.base)
    changed = [jax.tree_util.keystr(k) for (k, a), b in
               zip(jax.tree_util.tree_leaves_with_path(applied), jax.tree_util.tree_leaves(task.base),
                   strict=True) if not np.array_equal(np.asarray(a), np.asarray(b))]
    if changed:
        from experiments.tasks import UsageError

        raise UsageError(f"--untuned: {cfg.method.name}'s initial adapter changes {changed[0]} (and "
                         f"{len(changed) - 1} more), so it is not the untuned model; use a method whose "
                         f"init is the identity (gpart, lora)")
    return trainable


def cmd_eval(cfg, adapter: str | None, split: str, untuned: bool = False, out: str | None = None) -> int:
    from experiments.tasks import UsageError, build_task
    from experiments.train import Runner

    if untuned and adapter:
        raise UsageError("give --adapter DIR or --untuned, not both")
    if out and pathlib.Path(out).exists():
        raise FileExistsError(f"--out {out} exists; remove it or choose another file")
    task = build_task(cfg)
    runner = Runner(task, cfg)
    if untuned:
        where = "untuned (the method's init: the base model)"
        trainable = _untuned_trainable(cfg, task, runner)
    else:
        path, loaded = _load_trainable(cfg, task.method, adapter)
        where, trainable = str(path), loaded.trainable
    metrics = runner.evaluate(trainable, split, keep_generations=True)
    generations = metrics.pop("generations", None)
    doc = {"adapter": where, "split": split,
           "dataset": task.info["dataset"] if split != "test" else task.info["test_dataset"],
           "examples_in_split": task.info["examples"][split], **metrics,
           "config": cfg.to_dict(), "fingerprint": fingerprint(cfg)}
    print(json.dumps({k: v for k, v in doc.items() if k != "config"}, indent=1, default=str))
    if out:  # with the whole config (and a causal LM's generations), so that the file says what it measured
        if generations is not None:
            doc["generations"] = generations
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 0


def cmd_merge(cfg, adapter: str, out: str, dtype: str) -> int:
    import numpy as np
    from safetensors.numpy import save_file

    from experiments.models.names import flatten_params
    from experiments.tasks import build_method, load_model
    from gpart_jax.merge import merge

    out_dir = pathlib.Path(out)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; nothing was written: choose another --out")
    _, base = load_model(cfg)
    method = build_method(cfg, base)
    path, loaded = _load_trainable(cfg, method, adapter)
    merged = merge(method, loaded.trainable, base, dtype=dtype)
    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_params(merged).items()}
    out_dir.mkdir(parents=True)
    save_file(flat, str(out_dir / "params.safetensors"))
    (out_dir / "merge.json").write_text(json.dumps({
        "adapter": str(path), "method": loaded.metadata["method"], "config_fingerprint": fingerprint(cfg),
        "dtype": dtype, "tensors": len(flat), "format": "safetensors, keys are flax paths joined by '/' "
        "(experiments.models.names.unflatten_params rebuilds the dict)"}, indent=1) + "\n")
    print(f"merged params ({len(flat)} tensors) written to {out_dir / 'params.safetensors'}")
    return 0


def cmd_params(cfg) -> int:
    from experiments.tasks import abstract_params, build_method, modules_to_save
    from gpart_jax.methods import count

    _, shapes = abstract_params(cfg)
    method = build_method(cfg, shapes)
    print(json.dumps(count(method, shapes, modules_to_save(cfg)), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``argv`` (the subcommand first); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]) or argv[1:2] in (["-h"], ["--help"]):
        print("usage:\n" + USAGE)
        return 0
    command = argv[0] if argv else "?"
    try:
        errors = _errors()
    except ImportError as e:  # jax or the experiments' own dependencies are missing
        print(f"gpart-jax {command}: {e}; install with: bash experiments/install.sh", file=sys.stderr)
        return 2
    try:
        command, options, overrides = parse(argv)
        cfg = load_config(options.config, overrides)
        with sigterm_as_interrupt():  # kill / preemption: train keeps its last completed step
            if command == "train":
                return cmd_train(cfg)
            if command == "eval":
                return cmd_eval(cfg, options.adapter, options.split, options.untuned, options.out)
            if command == "merge":
                return cmd_merge(cfg, options.adapter, options.out, options.dtype)
            return cmd_params(cfg)
    except errors as e:
        print(f"gpart-jax {command}: {str(e).strip()}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged run: its checkpoints stay for inspection
        print(f"gpart-jax {command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = ("; the last completed step is checkpointed: run the same command again to resume"
                if command == "train" else "")
        print(f"\ngpart-jax {command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

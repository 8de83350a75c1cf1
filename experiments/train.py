"""One trainer for every method: ``train(cfg)`` fine-tunes ``cfg.model`` on ``cfg.task`` with ``cfg.method``.

    from experiments.config import load_config
    from experiments.train import train
    results = train(load_config("configs/minilm.py:task=rt,method=lora", ["--config.seed=1"]))

A step is ``experiments.step.make_train_step``: data parallel over every device of every process,
exchanging only the gradient of what trains (the method's trainable pytree and the saved
modules), then ``gpart_jax.make_optimizer``'s AdamW (the paper's recipe: linear warmup then linear
decay, separate head learning rate, weight decay 0.1 on theta only). ``compute_dtype="bfloat16"``
runs the model's matmuls in bf16 while params and gradients stay float32.

**Determinism.** The head comes from ``fold_in(key(seed), 0)``, the trainable pytree from
``fold_in(key(seed), 1)``, dropout at step ``s`` from ``fold_in(fold_in(key(seed), 2), s)`` (and
micro-batch ``i`` folds in ``i``); training batch ``s`` is batch ``s mod E`` of epoch ``s div E``
of a stream shuffled by ``seed`` (``E`` batches per epoch). A checkpoint holds the whole training
state, the data position and the loss window, so a resumed run computes and logs exactly what
the uninterrupted run would have (bit for bit on CPU).

**Nothing lost.** The workdir (``experiments.workdir``) is locked by the run's primary process.
A stop (SIGTERM, Ctrl-C: ``experiments.signals``) is honoured between steps: the last completed
step is checkpointed, with its validation if it had one, and the command exits with 130. A
validation and the checkpoint of its step are one unit: the run's bookkeeping changes only once
the step is saved. Checkpoints are verified on restore (``experiments.checkpoints``); a damaged
latest one falls back to the previous good one, and says so. The test scores come from the best
adapter as written and read back (``best_adapter/``, verified against the best checkpoint).

**Several processes.** With ``cfg.distributed`` (or JAX's cluster auto-detection,
``experiments.distributed``) every process loads the same base, builds the same partition (the
hash needs no communication) and feeds its own rows of each batch; the primary process writes
the workdir's files, every process takes part in orbax's checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import gpart_jax as gj
from experiments import metrics, workdir
from experiments.checkpoints import CheckpointConfigError, CheckpointCorruptError, RunCheckpointer
from experiments.config import fingerprint
from experiments.distributed import agree, initialize, is_primary, stop_agreed
from experiments.progress import ProgressBar
from experiments.signals import NEVER, StopRequest
from experiments.step import make_eval_step, make_mesh, make_train_step, put_batch, replicate
from experiments.tasks import Task, UsageError, build_task, check_method

__all__ = ["Runner", "UsageError", "WorkdirError", "train"]

WorkdirError = workdir.WorkdirError


class Runner:
    """A task's jitted train and eval steps on a mesh, and host-side batch placement."""

    def __init__(self, task: Task, cfg: ml_collections.ConfigDict, mesh=None):
        self.task, self.cfg = task, cfg
        try:
            self.mesh = make_mesh(cfg.devices) if mesh is None else mesh
        except ValueError as e:
            raise UsageError(str(e)) from None
        n = self.mesh.size
        self.grad_accum = cfg.train.grad_accum
        micro = cfg.train.batch_size // self.grad_accum
        for what, size in (("train.batch_size / train.grad_accum", micro),
                           ("train.eval_batch_size", cfg.train.eval_batch_size)):
            if size % n:
                raise UsageError(f"{what} = {size} is not divisible by the {n} devices; set it to a "
                                 f"multiple of {n} or --config.devices to a divisor of {size}")
        self.dropout_key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
        self.method = replicate(task.method, self.mesh)
        self.base = replicate(task.base, self.mesh)
        self.optimizer = None
        self._train_step: Callable | None = None
        self._eval_step = make_eval_step(task, self.mesh)
        self._params = jax.jit(lambda t, s, method, base: gj.full_params(method, t, base, s))

    def init_state(self, total_steps: int) -> dict:
        """``{"trainable", "saved", "opt", "step"}`` at step 0, replicated; sets up the optimizer."""
        task, o = self.task, self.cfg.optim
        key = jax.random.fold_in(jax.random.key(self.cfg.seed), 1)
        trainable, saved = task.method.init(key), dict(task.saved)
        self.optimizer = gj.make_optimizer(
            total_steps=total_steps, trainable_lr=o.adapter_lr, saved_lr=o.head_lr,
            warmup_frac=o.warmup_frac, warmup_steps=o.get("warmup_steps"),
            trainable_weight_decay=o.weight_decay, saved_weight_decay=o.head_weight_decay,
            regularization=o.regularization, max_grad_norm=o.max_grad_norm or None)
        state = {"trainable": trainable, "saved": saved,
                 "opt": self.optimizer.init((trainable, saved)), "step": jnp.int32(0)}
        self._train_step = make_train_step(task, self.optimizer, mesh=self.mesh,
                                           grad_accum=self.grad_accum, dropout_key=self.dropout_key)
        return replicate(jax.device_get(state), self.mesh)

    def put_train_batch(self, batch: dict) -> dict:
        """Host batch ``(B, ...)`` -> device arrays ``(grad_accum, B / grad_accum, ...)``."""
        return put_batch(batch, self.mesh, self.task.device_keys(), self.grad_accum)

    def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """One optimizer step on a host batch: ``(new state, {"loss", "weight"})``."""
        return self._train_step(state, self.method, self.base, self.put_train_batch(batch))

    def params(self, trainable, saved) -> Any:
        """The full params (the method applied once, for evaluation)."""
        return self._params(trainable, saved, self.method, self.base)

    def evaluate(self, trainable, saved, split: str, *, generate: bool = True,
                 keep_generations: bool = False, stop: StopRequest = NEVER) -> dict:
        """Metrics of ``(trainable, saved)`` on ``split`` (the task kind's ``summarize``);
        ``stop`` is checked between batches (with one process: several stop together at the
        training loop's agreed points only, as a process leaving a collective would hang the rest)."""
        task = self.task
        params = self.params(replicate(trainable, self.mesh), replicate(saved, self.mesh))
        keys = task.device_keys()
        parts: dict[str, list[np.ndarray]] = {}
        for batch in task.splits[split].epoch(0):
            if jax.process_count() == 1:
                stop.check()
            for k, v in self._eval_step(params, put_batch(batch, self.mesh, keys)).items():
                parts.setdefault(k, []).append(np.asarray(v))
        outputs = {k: np.concatenate(v) for k, v in parts.items()}
        return task.summarize(outputs, split, params, generate=generate,
                              keep_generations=keep_generations)


# --------------------------------------------------------------------------- train

def _schedule(cfg, task: Task) -> tuple[int, int]:
    per_epoch = len(task.splits["train"])
    total = cfg.train.steps if cfg.train.steps > 0 else cfg.train.epochs * per_epoch
    return per_epoch, total


def summary_lines(results: dict) -> list[str]:
    """The final summary a run prints: validation and test metrics, trainable count, adapter path."""
    metric = results["metric"]
    val, test, c = results["validation"], results["test"], results["trainable"]
    head = f" + head {c['saved']:,}" if c["saved"] else ""
    return [f"validation {metric}: {val[metric]:.4f} (best of {results['evaluations']} evaluations: "
            f"epoch {results['best_epoch']}, step {results['best_step']})",
            f"test {metric}: {test[metric]:.4f}" + (
                f" (accuracy {test['accuracy']:.4f}, mcc {test['mcc']:.4f})" if "accuracy" in test else ""),
            f"trainable parameters: {c['total_trainable']:,} ({c['method']} {c['trainable']:,}{head}); "
            f"{results['steps']} steps in {results['train_time_s']:.0f} s "
            f"({results['examples_per_s']:.1f} examples/s)",
            f"adapter saved to {results['adapter']}",
            f"results: {results['workdir']}/{workdir.RESULTS}"]


class _Run:
    """The bookkeeping of one run in its workdir (primary process writes, all read)."""

    def __init__(self, cfg, task: Task, runner: Runner, fp: str, path: pathlib.Path, primary: bool,
                 verbose: bool):
        self.cfg, self.task, self.runner, self.fp, self.path = cfg, task, runner, fp, path
        self.primary, self.verbose = primary, verbose
        self.metric = cfg.task.metric
        self.mode = "max" if self.metric in metrics.MAXIMIZED else "min"
        # orbax keeps the best step by "best_order": the step of each new best, -1 for other
        # evaluations (unique, so it agrees with the first-best-wins rule, ties included)
        self.ckpt = RunCheckpointer(path / workdir.CHECKPOINTS, keep_last=cfg.train.keep_last,
                                    best_metric="best_order", best_mode="max", config_fingerprint=fp)

    def log(self, record: dict) -> None:
        if self.primary:
            workdir.append_jsonl(self.path / workdir.METRICS, record)

    def say(self, text: str) -> None:
        if self.verbose and self.primary:
            print(text, file=sys.stderr, flush=True)

    def save_adapter(self, trainable, saved, info: dict) -> None:
        if self.primary:
            gj.save_adapter(self.path / workdir.BEST_ADAPTER, self.task.method, trainable, saved=saved,
                            base_params=self.task.base, overwrite=True, extra=info)


def _improved(value: float, best: dict | None, metric: str, mode: str) -> bool:
    """Strictly better than the best so far (the first of equals wins)."""
    if best is None:
        return True
    old = best["validation"][metric]
    return value > old if mode == "max" else value < old


def train(cfg: ml_collections.ConfigDict, *, task: Task | None = None,
          callback: Callable[[int, dict], None] | None = None, verbose: bool = True,
          stop: StopRequest = NEVER) -> dict:
    """Train ``cfg`` in ``cfg.workdir``, resuming where a previous process stopped; returns results.

    ``task``: a task built outside (``experiments.tasks.build_task`` or by hand, with a user's own
    data); by default it is built from ``cfg``. ``callback(step, state)`` runs after every step
    (tests use it). ``stop`` (``experiments.signals.stop_requests()``) is honoured between steps:
    the last completed step is checkpointed and ``KeyboardInterrupt`` raised. Evaluation on the
    validation split happens at the end of each epoch and after the last step; the best step by
    ``cfg.task.metric`` is kept (checkpoint and ``best_adapter/``) and evaluated on the test split
    at the end. A finished run (``results.json`` of the same config) returns its stored results
    (with ``"skipped": True``) without loading anything.
    """
    initialize(cfg.get("distributed"))
    if task is None:
        check_method(cfg)  # every value checked before any weight is read or any file written
    stop.check()
    fp = fingerprint(cfg)
    path = pathlib.Path(cfg.workdir)
    status = workdir.STATUSES[agree(workdir.STATUSES.index(workdir.status(path, fp)))]
    if status == "conflict":
        raise WorkdirError(workdir.explain_conflict(path, fp))
    if status == "done":
        results = workdir.read_json(path / workdir.RESULTS)
        if verbose and is_primary():
            print(f"{path} holds this config's finished run; not training again.")
            print("\n".join(summary_lines(results)))
        return results | {"skipped": True}
    primary = is_primary()
    lock = workdir.lock(path)
    error = None
    if primary:  # the run's lock belongs to the run: its primary process holds it
        path.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except WorkdirError as e:
            error = e
    if agree(error is None) != 1:  # every process learns whether the run may go on
        raise error or WorkdirError(f"run {path} is being trained by another run (its primary "
                                    f"process could not take the lock)")
    try:
        return _train(cfg, task, fp, path, status, primary, callback, verbose, stop)
    finally:
        lock.release()


def _train(cfg, task, fp, path, status, primary, callback, verbose, stop) -> dict:
    process_start = time.perf_counter()  # wall time is summed over the processes of a run
    task = build_task(cfg) if task is None else task
    stop.check()
    runner = Runner(task, cfg)
    per_epoch, total = _schedule(cfg, task)
    state = runner.init_state(total)
    abstract = jax.eval_shape(lambda: state)
    counts = gj.methods.count(task.method, task.saved)
    if primary and workdir.read_json(path / workdir.RUN) is None:
        workdir.write_json(path / workdir.RUN, {"fingerprint": fp, "config": cfg.to_dict()})
    run = _Run(cfg, task, runner, fp, path, primary, verbose)
    info: dict[str, Any] = {"best": None, "train_time_s": 0.0, "wall_time_s": 0.0, "examples": 0.0,
                            "evaluations": 0, "step_times": [], "window": []}
    start = 0
    try:
        restored = run.ckpt.restore_latest(abstract, warn=run.say)
    except CheckpointConfigError as e:
        raise WorkdirError(str(e)) from None
    if restored is not None:
        state = replicate(restored[0], runner.mesh)
        info = {k: restored[1].get(k, v) for k, v in info.items()}
        start = int(restored[1]["step"])
    if status == "partial":  # stopped before: drop what it logged after its last checkpoint
        if primary:
            workdir.truncate_jsonl(path / workdir.METRICS, start)
        run.log({"event": "resume", "step": start})
    bar = ProgressBar(total, metric_name=run.metric, enabled=verbose and cfg.progress and primary,
                      every=cfg.log_every)
    if info["best"]:
        bar.set_metric(info["best"]["validation"][run.metric])
    where = f"resuming at step {start}" if start else "starting"
    run.say(f"{cfg.model.name} + {counts['method']} on {cfg.task.dataset}: {counts['total_trainable']:,} "
            f"trainable, {total} steps ({per_epoch} an epoch, batch {cfg.train.batch_size}) on "
            f"{runner.mesh.size} {jax.default_backend()} device(s) in {jax.process_count()} "
            f"process(es); {where} in {path}")

    def checkpoint(step: int, state: dict, new_info: dict, best_order: int | None = None) -> None:
        nonlocal process_start
        now = time.perf_counter()
        new_info = new_info | {"wall_time_s": new_info["wall_time_s"] + now - process_start,
                               "step": step}
        run.ckpt.save(step, jax.device_get(state), info=new_info,
                      metrics=None if best_order is None else {"best_order": best_order})
        process_start = now
        info.clear()
        info.update(new_info)

    stream = task.splits["train"].stream(_position(start, per_epoch))
    # the last step completed, with its validation and checkpoint, and the run's info as of it
    done, done_state, done_info = start, state, copy.deepcopy(info)
    try:
        for step in range(start + 1, total + 1):
            stop.check()
            if stop_agreed(step):
                raise KeyboardInterrupt("a preemption (SIGTERM) reached every process")
            position, batch = next(stream)
            t0 = time.perf_counter()
            state, out = runner.train_step(state, batch)
            loss = float(out["loss"])
            dt = time.perf_counter() - t0
            real = float(np.sum(batch["weight"]))
            info["train_time_s"] += dt
            info["step_times"] = (info["step_times"] + [dt])[-200:]
            info["examples"] += real
            info["window"] = info["window"] + [loss]
            bar.update(step, position.epoch, loss, real)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}; the last good step is "
                                         f"checkpointed: lower the learning rates and train again "
                                         f"in a new workdir")
            if step % cfg.log_every == 0:
                run.log({"step": step, "epoch": position.epoch + 1,
                         "loss": float(np.mean(info["window"])), "examples_per_s": round(real / dt, 2)})
                info["window"] = []
            if step % per_epoch == 0 or step == total:
                new_info, improved, val = _validate(run, state, step, position.epoch + 1, info, stop)
                # logged before the checkpoint: a resume from an earlier step truncates it away,
                # while one logged after could be lost to a kill or a full disk in between
                run.log({"step": step, "epoch": position.epoch + 1, "split": "validation", **val,
                         "best": improved})
                checkpoint(step, state, new_info, step if improved else -1)
                if improved:  # after the checkpoint: a kill in between rewrites it at the end
                    run.save_adapter(jax.device_get(state["trainable"]), jax.device_get(state["saved"]),
                                     _adapter_info(info["best"], fp))
                bar.set_metric(val[run.metric])
                bar.message(f"epoch {position.epoch + 1} step {step}: validation {run.metric} "
                            f"{val[run.metric]:.4f}" + (" (best)" if improved else ""))
            elif step % cfg.train.checkpoint_every == 0:
                checkpoint(step, state, dict(info))
            done, done_state, done_info = step, state, copy.deepcopy(info)
            if callback is not None:
                callback(step, state)
    except KeyboardInterrupt:
        # keep what was done: the next run resumes after the last completed step
        if done > (run.ckpt.latest_step() or 0):
            checkpoint(done, done_state, done_info)
        bar.close()
        run.ckpt.close()
        raise
    bar.close()
    try:
        results = _finish(run, abstract, info, counts, total, per_epoch,
                          time.perf_counter() - process_start, stop)
    finally:
        run.ckpt.close()
    if verbose and primary:
        print("\n".join(summary_lines(results)), flush=True)
    return results


def _adapter_info(best: dict, fp: str) -> dict:
    return {"step": best["step"], "epoch": best["epoch"], "fingerprint": fp,
            "validation": best["validation"]}


def _validate(run: _Run, state: dict, step: int, epoch: int, info: dict,
              stop: StopRequest) -> tuple[dict, bool, dict]:
    """Evaluate on validation; returns the run's info as it will be once this step is saved, whether
    it is a new best (strictly better: the first of equals wins), and the metrics. Nothing of the
    run changes here: a validation and its checkpoint are one unit, so a stop during the
    validation (``stop``, between batches) keeps the step before, and the next run redoes this
    step and its validation."""
    val = run.runner.evaluate(jax.device_get(state["trainable"]), jax.device_get(state["saved"]),
                              "validation", stop=stop)
    improved = _improved(val[run.metric], info["best"], run.metric, run.mode)
    new_info = dict(info) | {"evaluations": info["evaluations"] + 1}
    if improved:
        new_info["best"] = {"step": step, "epoch": epoch, "validation": val}
    return new_info, improved, val


def _position(step: int, per_epoch: int):
    from experiments.data.text import Position

    return Position(step // per_epoch, step % per_epoch)


def _best_adapter(run: _Run, abstract, best: dict):
    """The best step's ``(trainable, saved)`` as ``best_adapter/`` holds them, verified: restored
    from the (verified) best checkpoint, written again unless the adapter on disk is that step's
    and bit-identical, then read back."""
    adapter_dir = run.path / workdir.BEST_ADAPTER
    try:
        state, _ = run.ckpt.restore(abstract, step=best["step"])
    except CheckpointCorruptError as e:
        try:  # the adapter written at that step verifies on its own (sha256 of every array)
            loaded = gj.load_adapter(adapter_dir, method=run.task.method)
            if loaded.metadata["extra"].get("step") == best["step"]:
                run.say(f"{e}; testing the best step from {adapter_dir}, which verifies")
                return loaded.trainable, loaded.saved
        except (gj.AdapterError, gj.LayoutMismatchError, KeyError):
            pass
        raise CheckpointCorruptError(f"{e}, and {adapter_dir} is not that step's verified adapter; "
                                     f"the best step cannot be recovered: train again in a new "
                                     f"workdir") from None
    want = (state["trainable"], state["saved"])
    current = False
    try:
        loaded = gj.load_adapter(adapter_dir, method=run.task.method)
        current = (loaded.metadata["extra"].get("step") == best["step"] and
                   _same((loaded.trainable, loaded.saved), want))
    except (gj.AdapterError, gj.LayoutMismatchError, KeyError):
        current = False
    if not current:
        run.save_adapter(*want, _adapter_info(best, run.fp))
    if run.primary:
        loaded = gj.load_adapter(adapter_dir, method=run.task.method)
        if not _same((loaded.trainable, loaded.saved), want):
            raise CheckpointCorruptError(f"{adapter_dir} does not read back as the best checkpoint")
        return loaded.trainable, loaded.saved
    return want


def _same(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb, strict=True))


def _finish(run: _Run, abstract, info: dict, counts: dict, total: int, per_epoch: int, wall: float,
            stop: StopRequest) -> dict:
    """Test the best step from its verified adapter, then write ``results.json``."""
    cfg, task, path = run.cfg, run.task, run.path
    best = info["best"]
    trainable, saved = _best_adapter(run, abstract, best)
    t0 = time.perf_counter()
    test = run.runner.evaluate(trainable, saved, "test", keep_generations=True, stop=stop)
    generations = test.pop("generations", None)
    if generations is not None and run.primary:  # every test generation, to read the scores against
        import json

        gj.files.write_atomic(path / workdir.TEST_GENERATIONS,
                              "".join(json.dumps(g) + "\n" for g in generations))
    run.log({"step": total, "split": "test", "best_step": best["step"], **test})
    wall_time = info["wall_time_s"] + wall + (time.perf_counter() - t0)
    steps_timed = sorted(info["step_times"][1:]) or sorted(info["step_times"])
    results = {
        "fingerprint": run.fp,
        "workdir": str(path),
        "metric": cfg.task.metric,
        "validation": best["validation"],
        "test": test,
        "best_step": best["step"],
        "best_epoch": best["epoch"],
        "evaluations": info["evaluations"],
        "steps": total,
        "steps_per_epoch": per_epoch,
        "epochs": total / per_epoch,
        "examples_seen": int(info["examples"]),
        "train_time_s": round(info["train_time_s"], 2),
        "wall_time_s": round(wall_time, 2),
        "examples_per_s": round(info["examples"] / max(info["train_time_s"], 1e-9), 2),
        "median_step_s": round(float(np.median(steps_timed)), 4) if steps_timed else None,
        "trainable": counts,
        "adapter": str(path / workdir.BEST_ADAPTER),
        "data": task.info,
        "devices": {"count": run.runner.mesh.size, "processes": jax.process_count(),
                    "platform": jax.default_backend(), "cpu_count": os.cpu_count(),
                    "machine": platform.machine()},
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
        "config": cfg.to_dict(),
    }
    if run.primary:
        workdir.write_json(path / workdir.RESULTS, results)
    return workdir.read_json(path / workdir.RESULTS) if run.primary else results

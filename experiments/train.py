"""One trainer for every method: ``train(cfg)`` fine-tunes ``cfg.model`` on ``cfg.task`` with ``cfg.method``.

    from experiments.config import load_config
    from experiments.train import train
    results = train(load_config("configs/minilm_rt_gpart.py", ["--config.seed=1"]))

A step is one jitted function of ``(state, method, base, batch)``: the batch of
``train.batch_size`` rows is split into ``train.grad_accum`` micro-batches (``lax.scan``), the
gradients of the summed, weighted losses are added up and divided by the total weight (so
accumulation equals one big batch), then ``gpart_jax.optim.make_optimizer``'s AdamW updates the
trainable pytree ``{"adapter", "saved"}`` (the paper's recipe: linear warmup over 6% of steps
then linear decay, separate head learning rate, weight decay 0.1 on theta only). Batches are
sharded over the local devices (``Mesh(devices, ("data",))``, ``PartitionSpec("data")``); params,
method and optimizer state are replicated. ``compute_dtype="bfloat16"`` runs the model's matmuls
in bf16 while params and gradients stay float32.

**Determinism.** The head comes from ``fold_in(key(seed), 0)``, the adapter from
``fold_in(key(seed), 1)``, dropout at step ``s`` from ``fold_in(fold_in(key(seed), 2), s)`` (and
micro-batch ``i`` folds in ``i``); training batch ``s`` is batch ``s mod E`` of epoch ``s div E``
of a stream shuffled by ``seed`` (``E`` batches per epoch). A checkpoint holds the trainable
pytree, the optimizer state and the step, so a resumed run computes exactly what the
uninterrupted run would have (bit for bit on CPU).

**Workdir** (``cfg.workdir``): ``run.json`` (the config and its fingerprint, written first),
``checkpoints/`` (orbax: the last ``train.keep_last`` steps plus the best by validation),
``metrics.jsonl`` (one JSON object per log interval, evaluation and event), ``best_adapter/``
(``gpart_jax.checkpoint.save_adapter`` of the best validation step), for a causal LM
``test_generations.jsonl`` (each test prompt's reference answer and greedy generation) and
``results.json`` (written last). A workdir with ``results.json`` of the same config is a
finished run: ``train`` returns its results without training. A workdir of another config, or a
non-empty directory that is not a run, is refused (``WorkdirError``) and left untouched.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import gpart_jax.methods as M
from experiments import metrics as MX
from experiments.config import fingerprint
from experiments.progress import ProgressBar
from experiments.tasks import Task, UsageError, build_task, generate_answers
from gpart_jax import trainable as T
from gpart_jax.checkpoint import RunCheckpointer, load_adapter, read_adapter_metadata, save_adapter
from gpart_jax.optim import make_optimizer

__all__ = ["Runner", "UsageError", "WorkdirError", "build_task", "evaluate", "train"]

RESULTS = "results.json"
RUN = "run.json"
METRICS = "metrics.jsonl"
BEST_ADAPTER = "best_adapter"
CHECKPOINTS = "checkpoints"
TEST_GENERATIONS = "test_generations.jsonl"


class WorkdirError(UsageError):
    """A workdir that holds something else than this config's run; nothing in it is changed."""


# --------------------------------------------------------------------------- devices and steps

def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ``("data",)`` mesh over the first ``num_devices`` local devices (0: all of them)."""
    devices = jax.local_devices()
    if num_devices < 0 or num_devices > len(devices):
        raise UsageError(f"devices={num_devices} but {len(devices)} local devices exist; set "
                         f"--config.devices=0 (all) or a number up to {len(devices)}")
    return Mesh(np.asarray(devices[:num_devices or len(devices)]), ("data",))


class Runner:
    """The jitted train and eval steps of a task on a mesh, and host-side batch placement."""

    def __init__(self, task: Task, cfg: ml_collections.ConfigDict, mesh: Mesh | None = None):
        self.task, self.cfg = task, cfg
        self.mesh = make_mesh(cfg.devices) if mesh is None else mesh
        n = self.mesh.size
        self.grad_accum = cfg.train.grad_accum
        micro = cfg.train.batch_size // self.grad_accum
        for what, size in (("train.batch_size / train.grad_accum", micro),
                           ("train.eval_batch_size", cfg.train.eval_batch_size)):
            if size % n:
                raise UsageError(f"{what} = {size} is not divisible by the {n} devices; set it to a "
                                 f"multiple of {n} or --config.devices to a divisor of {size}")
        self.replicated = NamedSharding(self.mesh, P())
        self.micro_sharding = NamedSharding(self.mesh, P(None, "data"))
        self.row_sharding = NamedSharding(self.mesh, P("data"))
        self.dropout_key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
        self.method = jax.device_put(task.method, self.replicated)
        self.base = jax.device_put(task.base, self.replicated)
        self.optimizer: optax.GradientTransformation | None = None
        self._train_step: Callable | None = None
        self._eval_step = jax.jit(self._eval_outputs, out_shardings=self.replicated)
        self._merge = jax.jit(lambda tr, method, base: T.full_params(method, tr, base),
                              out_shardings=self.replicated)

    # ------------------------------------------------------------------ training

    def init_state(self, total_steps: int) -> dict:
        """``{"trainable", "opt", "step"}`` at step 0, replicated; sets up the optimizer."""
        task, o = self.task, self.cfg.optim
        key = jax.random.fold_in(jax.random.key(self.cfg.seed), 1)
        trainable = T.init_trainable(task.method, task.base, task.modules_to_save, key=key)
        self.optimizer = make_optimizer(
            trainable, total_steps=total_steps, adapter_lr=o.adapter_lr, saved_lr=o.head_lr,
            warmup_frac=o.warmup_frac, adapter_weight_decay=o.weight_decay,
            saved_weight_decay=o.head_weight_decay, regularization=o.regularization,
            max_grad_norm=o.max_grad_norm or None)
        state = {"trainable": trainable, "opt": self.optimizer.init(trainable), "step": jnp.int32(0)}
        self._train_step = jax.jit(self._step, out_shardings=self.replicated)
        return jax.device_put(state, self.replicated)

    def _loss(self, trainable, method, base, batch, rng):
        return self.task.loss_terms(T.full_params(method, trainable, base), batch, rng)

    def _gradients(self, trainable, method, base, batch, step):
        """Gradient of the mean weighted loss over the ``grad_accum`` micro-batches of ``batch``.

        Sums of weighted losses and their gradients are accumulated over the micro-batches
        (``lax.scan``) and divided by the total weight once: the same as one big batch.
        """
        rng = jax.random.fold_in(self.dropout_key, step)
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)

        def micro(carry, xs):
            mb, i = xs
            (loss, weight), grads = grad_fn(trainable, method, base, mb, jax.random.fold_in(rng, i))
            g_sum, l_sum, w_sum = carry
            return (jax.tree_util.tree_map(jnp.add, g_sum, grads), l_sum + loss, w_sum + weight), None

        carry = (jax.tree_util.tree_map(jnp.zeros_like, trainable), jnp.float32(0), jnp.float32(0))
        if self.grad_accum == 1:
            (grads, loss, weight), _ = micro(carry, (jax.tree_util.tree_map(lambda x: x[0], batch), 0))
        else:
            (grads, loss, weight), _ = jax.lax.scan(micro, carry, (batch, jnp.arange(self.grad_accum)))
        scale = 1.0 / jnp.maximum(weight, 1.0)
        return jax.tree_util.tree_map(lambda g: g * scale, grads), loss * scale, weight

    def _step(self, state, method, base, batch):
        grads, loss, weight = self._gradients(state["trainable"], method, base, batch, state["step"])
        updates, opt = self.optimizer.update(grads, state["opt"], state["trainable"])
        new = {"trainable": optax.apply_updates(state["trainable"], updates), "opt": opt,
               "step": state["step"] + 1}
        return new, {"loss": loss, "weight": weight}

    def put_train_batch(self, batch: dict) -> dict:
        """Host batch ``(B, ...)`` -> device arrays ``(grad_accum, B / grad_accum, ...)``, rows sharded."""
        a = self.grad_accum
        arrays = {k: np.asarray(batch[k]).reshape(a, -1, *np.shape(batch[k])[1:])
                  for k in self.task.device_keys()}
        return jax.device_put(arrays, self.micro_sharding)

    def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """One optimizer step on a host batch: ``(new state, {"loss", "weight"})``."""
        return self._train_step(state, self.method, self.base, self.put_train_batch(batch))

    def grads(self, trainable, batch: dict, step: int = 0) -> tuple[Any, jax.Array]:
        """``(gradient, mean loss)`` of a host batch exactly as a train step computes them (same
        accumulation, sharding and dropout key of ``step``)."""
        fn = jax.jit(self._gradients, out_shardings=self.replicated)
        grads, loss, _ = fn(jax.device_put(trainable, self.replicated), self.method, self.base,
                            self.put_train_batch(batch), jnp.int32(step))
        return grads, loss

    # ------------------------------------------------------------------ evaluation

    def _eval_outputs(self, params, batch):
        return self.task.eval_outputs(params, batch)

    def params(self, trainable) -> Any:
        """The full params of ``trainable`` (the adapter applied once, for evaluation)."""
        return self._merge(jax.device_put(trainable, self.replicated), self.method, self.base)

    def evaluate(self, trainable, split: str, *, generate: bool = True,
                 keep_generations: bool = False) -> dict:
        """Metrics of ``trainable`` on ``split`` (see ``evaluate``); with ``keep_generations`` a
        causal LM's result also holds ``generations``: ``{"answer", "generation"}`` per prompt."""
        task = self.task
        params = self.params(trainable)
        keys = task.device_keys()
        parts: dict[str, list[np.ndarray]] = {}
        for batch in task.splits[split].epoch(0):
            arrays = jax.device_put({k: np.asarray(batch[k]) for k in keys}, self.row_sharding)
            for k, v in self._eval_step(params, arrays).items():
                parts.setdefault(k, []).append(np.asarray(v))
        out = {k: np.concatenate(v) for k, v in parts.items()}
        weight = out["weight"]
        result = {"loss": float(out["loss"].sum() / max(weight.sum(), 1.0))}
        if task.kind == "classification":
            real = weight > 0
            result |= MX.classification_metrics(out["label"][real], out["prediction"][real], task.num_classes)
        else:
            result["examples"] = task.splits[split].num_examples
            prompts, answers = task.generation.get(split, ([], []))
            if generate and prompts:
                texts = generate_answers(task, params, prompts, self.cfg.train.eval_batch_size)
                result["exact_match"] = MX.exact_match(texts, answers)
                result["last_number_match"] = MX.last_number_match(texts, answers)
                result["generated"] = len(texts)
                result["sample"] = texts[0][:300]
                if keep_generations:
                    result["generations"] = [{"answer": a, "generation": t}
                                             for t, a in zip(texts, answers, strict=True)]
        return result


def evaluate(task: Task, cfg: ml_collections.ConfigDict, trainable, split: str = "validation",
             *, runner: Runner | None = None, generate: bool = True) -> dict:
    """Metrics of ``trainable`` on ``split`` of ``task``.

    Classification: ``loss`` (mean cross-entropy), ``accuracy``, ``mcc`` (multi-class Matthews
    correlation) and ``examples``, over real rows only (filler rows have weight 0). Causal LM:
    ``loss`` (mean over answer tokens) and, where the split has prompts to generate from,
    ``exact_match`` (GSM8K: the number after the last ``####`` of the greedy generation) and
    ``last_number_match`` (the last number of the generation, whatever its format).
    """
    runner = Runner(task, cfg) if runner is None else runner
    return runner.evaluate(trainable, split, generate=generate)


# --------------------------------------------------------------------------- workdir

def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def workdir_status(workdir: pathlib.Path, fp: str) -> str:
    """``"new"``, ``"resume"`` or ``"finished"`` for a run of fingerprint ``fp`` in ``workdir``.

    Raises ``WorkdirError`` (nothing is written) when the directory holds another config's run or
    is a non-empty directory that is not a run.
    """
    suggestion = f"--config.workdir={workdir}-{fp[:8]}"
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file; choose another directory with {suggestion}")
    if not workdir.exists() or not any(workdir.iterdir()):
        return "new"
    for name in (RESULTS, RUN):
        record = _read_json(workdir / name)
        if record is not None and record.get("fingerprint") != fp:
            raise WorkdirError(f"workdir {workdir} holds a run of another config (fingerprint "
                               f"{str(record.get('fingerprint'))[:12]}, this config {fp[:12]}); it is "
                               f"left as is: pass {suggestion}")
    if (workdir / RESULTS).exists():
        return "finished"
    if (workdir / RUN).exists():
        return "resume"
    raise WorkdirError(f"workdir {workdir} is not empty and holds no gpart-jax run; it is left as is: "
                       f"pass {suggestion}")


def _append_metrics(path: pathlib.Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Keep the records up to ``step``: a resumed run redoes (identically) what came after it."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    _atomic_write(path, "".join(line + "\n" for line in kept))


def trainable_counts(task: Task) -> dict:
    """``gpart_jax.methods.count`` of the task's method plus its saved modules (the head)."""
    return M.count(task.method, task.base, task.modules_to_save)


def summary_lines(results: dict) -> list[str]:
    """The final summary a run prints: validation and test metrics, trainable count, adapter path."""
    metric = results["metric"]
    val, test, c = results["validation"], results["test"], results["trainable"]
    head = f" + head {c['saved']:,}" if c["saved"] else ""
    lines = [f"validation {metric}: {val[metric]:.4f} (best of {results['evaluations']} evaluations: "
             f"epoch {results['best_epoch']}, step {results['best_step']})",
             f"test {metric}: {test[metric]:.4f}" + (
                 f" (accuracy {test['accuracy']:.4f}, mcc {test['mcc']:.4f})" if "accuracy" in test else ""),
             f"trainable parameters: {c['total_trainable']:,} ({c['method']} {c['trainable']:,}{head}); "
             f"{results['steps']} steps in {results['train_time_s']:.0f} s "
             f"({results['examples_per_s']:.1f} examples/s)",
             f"adapter saved to {results['adapter']}",
             f"results: {results['workdir']}/{RESULTS}"]
    return lines


# --------------------------------------------------------------------------- train

def _schedule(cfg, task: Task) -> tuple[int, int]:
    per_epoch = len(task.splits["train"])
    total = cfg.train.steps if cfg.train.steps > 0 else cfg.train.epochs * per_epoch
    return per_epoch, total


def train(cfg: ml_collections.ConfigDict, *, callback: Callable[[int, dict], None] | None = None,
          verbose: bool = True) -> dict:
    """Train ``cfg`` in ``cfg.workdir``, resuming where a previous process stopped; returns results.

    ``callback(step, state)`` runs after every step (tests use it to stop a run). Evaluation on
    the validation split happens at the end of each epoch and after the last step; the best
    step by ``cfg.task.metric`` is kept (checkpoint and ``best_adapter/``) and evaluated on the
    test split at the end. A finished run (``results.json`` of the same config) returns its
    stored results (with ``"skipped": True``) without loading anything.
    """
    fp = fingerprint(cfg)
    workdir = pathlib.Path(cfg.workdir)
    status = workdir_status(workdir, fp)
    if status == "finished":
        results = json.loads((workdir / RESULTS).read_text())
        if verbose:
            print(f"{workdir} holds this config's finished run; not training again.")
            print("\n".join(summary_lines(results)))
        return results | {"skipped": True}
    session_start = time.perf_counter()  # wall time is summed over the processes of a run
    task = build_task(cfg)
    runner = Runner(task, cfg)
    per_epoch, total = _schedule(cfg, task)
    state = runner.init_state(total)
    abstract = jax.eval_shape(lambda: state)
    counts = trainable_counts(task)
    workdir.mkdir(parents=True, exist_ok=True)
    if status == "new":
        _atomic_write(workdir / RUN, json.dumps({"fingerprint": fp, "config": cfg.to_dict()}, indent=1,
                                                default=str))
    metric = cfg.task.metric
    mode = "max" if metric in MX.MAXIMIZED else "min"
    # orbax keeps the best step by "best_order": the step of each new best, -1 for other evaluations
    # (unique, so it always agrees with the first-best-wins rule below, ties included)
    ckpt = RunCheckpointer(workdir / CHECKPOINTS, keep_last=cfg.train.keep_last, best_metric="best_order",
                           best_mode="max", config_fingerprint=fp)
    metrics_path = workdir / METRICS
    info: dict[str, Any] = {"best": None, "train_time_s": 0.0, "wall_time_s": 0.0, "examples": 0.0,
                            "evaluations": 0, "step_times": []}
    start = 0
    if ckpt.latest_step() is not None:
        restored, saved = ckpt.restore(abstract)
        state = jax.device_put(restored, runner.replicated)
        info = {k: saved.get(k, v) for k, v in info.items()}
        start = int(saved["step"])
    if status == "resume":  # killed before: drop what it logged after its last checkpoint
        _truncate_metrics(metrics_path, start)
        _append_metrics(metrics_path, {"event": "resume", "step": start})
    bar = ProgressBar(total, metric_name=metric, enabled=verbose and cfg.progress, every=cfg.log_every)
    if info["best"]:
        bar.set_metric(info["best"]["validation"][metric])
    if verbose:
        where = f"resuming at step {start}" if start else "starting"
        print(f"{cfg.model.name} + {counts['method']} on {cfg.task.dataset}: {counts['total_trainable']:,} "
              f"trainable, {total} steps ({per_epoch} an epoch, batch {cfg.train.batch_size}) on "
              f"{runner.mesh.size} {jax.default_backend()} device(s); {where} in {workdir}", flush=True)

    def checkpoint(step: int, state: dict, metrics: dict | None = None) -> None:
        nonlocal session_start
        now = time.perf_counter()
        info["wall_time_s"] += now - session_start
        session_start = now
        ckpt.save(step, jax.device_get(state), info=info | {"step": step}, metrics=metrics)

    stream = task.splits["train"].stream(_position(start, per_epoch))
    done, done_state = start, state  # the last step completed with its evaluation and checkpoint
    window: list[float] = []
    try:
        for step in range(start + 1, total + 1):
            position, batch = next(stream)
            t0 = time.perf_counter()
            state, out = runner.train_step(state, batch)
            loss = float(out["loss"])
            dt = time.perf_counter() - t0
            real = float(np.sum(batch["weight"]))
            info["train_time_s"] += dt
            info["step_times"] = (info["step_times"] + [dt])[-200:]
            info["examples"] += real
            window.append(loss)
            bar.update(step, position.epoch, loss, real)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}; lower the learning rates")
            if step % cfg.log_every == 0:
                _append_metrics(metrics_path, {"step": step, "epoch": position.epoch + 1,
                                               "loss": float(np.mean(window)),
                                               "examples_per_s": round(real / dt, 2)})
                window = []
            if step % per_epoch == 0 or step == total:
                improved = _validate(runner, state, step, position.epoch + 1, info, bar, metric, mode, fp,
                                     workdir)
                checkpoint(step, state, {"best_order": step if improved else -1})
            elif step % cfg.train.checkpoint_every == 0:
                checkpoint(step, state)
            done, done_state = step, state
            if callback is not None:
                callback(step, state)
    except KeyboardInterrupt:
        # keep what was done: the next run resumes after the last completed step
        if done > (ckpt.latest_step() or 0):
            checkpoint(done, done_state)
        bar.close()
        ckpt.close()
        raise
    bar.close()
    results = _finish(cfg, task, runner, ckpt, abstract, info, counts, fp, workdir, total, per_epoch,
                      time.perf_counter() - session_start)
    ckpt.close()
    if verbose:
        print("\n".join(summary_lines(results)), flush=True)
    return results


def _validate(runner: Runner, state: dict, step: int, epoch: int, info: dict, bar: ProgressBar,
              metric: str, mode: str, fp: str, workdir: pathlib.Path) -> bool:
    """Evaluate on validation; on a new best (strictly better: the first of equals wins), record
    it and write ``best_adapter/``. Returns whether it was a new best."""
    task = runner.task
    val = runner.evaluate(state["trainable"], "validation")
    info["evaluations"] += 1
    value = val[metric]
    best = info["best"]
    improved = best is None or (value > best["validation"][metric] if mode == "max"
                                else value < best["validation"][metric])
    if improved:
        info["best"] = {"step": step, "epoch": epoch, "validation": val}
        save_adapter(workdir / BEST_ADAPTER, task.method, jax.device_get(state["trainable"]),
                     base_params=task.base, overwrite=True,
                     extra={"step": step, "epoch": epoch, "fingerprint": fp, "validation": val})
    _append_metrics(workdir / METRICS, {"step": step, "epoch": epoch, "split": "validation", **val,
                                        "best": improved})
    bar.set_metric(value)
    bar.message(f"epoch {epoch} step {step}: validation {metric} {value:.4f}"
                + (" (best)" if improved else ""))
    return improved


def _position(step: int, per_epoch: int):
    from experiments.data.text import Position

    return Position(step // per_epoch, step % per_epoch)


def _finish(cfg, task: Task, runner: Runner, ckpt: RunCheckpointer, abstract, info: dict, counts: dict,
            fp: str, workdir: pathlib.Path, total: int, per_epoch: int, wall: float) -> dict:
    """Test the best step, write ``best_adapter/`` (if not current) and ``results.json``."""
    best = info["best"]
    state, _ = ckpt.restore(abstract, step=best["step"])
    trainable = state["trainable"]
    adapter_dir = workdir / BEST_ADAPTER
    try:
        current = read_adapter_metadata(adapter_dir)["extra"].get("step") == best["step"]
        load_adapter(adapter_dir, method=task.method)  # verifies every array
    except (ValueError, KeyError):  # missing or damaged (a kill during its save): write it again
        current = False
    if not current:
        save_adapter(adapter_dir, task.method, trainable, base_params=task.base, overwrite=True,
                     extra={"step": best["step"], "epoch": best["epoch"], "fingerprint": fp,
                            "validation": best["validation"]})
    t0 = time.perf_counter()
    test = runner.evaluate(trainable, "test", keep_generations=True)
    generations = test.pop("generations", None)
    if generations is not None:  # every test generation, to read the scores against
        _atomic_write(workdir / TEST_GENERATIONS, "".join(json.dumps(g) + "\n" for g in generations))
    _append_metrics(workdir / METRICS, {"step": total, "split": "test", "best_step": best["step"], **test})
    wall_time = info["wall_time_s"] + wall + (time.perf_counter() - t0)
    steps_timed = sorted(info["step_times"][1:]) or sorted(info["step_times"])
    results = {
        "fingerprint": fp,
        "workdir": str(workdir),
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
        "adapter": str(adapter_dir),
        "data": task.info,
        "devices": {"count": runner.mesh.size, "platform": jax.default_backend(),
                    "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
        "config": cfg.to_dict(),
    }
    text = json.dumps(results, indent=1, default=str) + "\n"
    _atomic_write(workdir / RESULTS, text)
    return json.loads(text)  # as a later process reads it (tuples as lists)


def remove_run(workdir: pathlib.Path) -> None:
    """Delete a run directory (only one holding ``run.json``); for tests and scripts."""
    if not (workdir / RUN).exists():
        raise WorkdirError(f"{workdir} is not a run directory; not deleting it")
    shutil.rmtree(workdir)

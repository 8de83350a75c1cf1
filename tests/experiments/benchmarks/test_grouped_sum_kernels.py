"""experiments/benchmarks/grouped_sum: the C++ kernels against today's code and the golden ids.

For both schemes, native and torch element order, global and transformer-block scope, extreme
seeds and small to large d (both paths of every modular reduction in kernels.cc):
  * ids: the kernel's hashes reproduce the committed golden vectors (tests/golden);
  * forward: ``expand`` is bit-identical to ``core._expand``, ``expand_add`` to the jitted
    ``w0 + core._expand`` (XLA contracts that to an FMA; the kernel does the same);
  * backward: ``grouped_sum`` against a float64 ``np.bincount`` over host-computed ids, at
    least as accurate as today's scatter; deterministic; vmap over theta.
Slow (each case compiles); skipped where no C++ compiler is installed. No timing is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from experiments.benchmarks.grouped_sum import bench, kernels, sharding
from gpart_jax import core, hashing, layout
from gpart_jax.layout import LayoutEntry

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"
CXX = os.environ.get("CXX", "g++")
needs_compiler = pytest.mark.skipif(shutil.which(CXX) is None,
                                    reason=f"needs g++ ({CXX!r} not found) to build kernels.cc")
pytestmark = pytest.mark.filterwarnings("ignore:GPart.*groups are empty")

SMALL = {f"layers_{i}": {"attn": {"kernel": jnp.zeros((37, 53 + i))},
                         "mlp": {"kernel": jnp.zeros((64, 29))}} for i in range(3)}
BIG = {"a": {"kernel": jnp.zeros((1500, 1500))}, "b": {"kernel": jnp.zeros((700, 900))}}
CASES = [
    (SMALL, dict(d=7)), (SMALL, dict(d=64)), (SMALL, dict(d=1000)), (SMALL, dict(d=5000)),
    (SMALL, dict(d=500, element_order="torch")),
    (SMALL, dict(d=500, scope="transformer_block")),
    (SMALL, dict(d=501, scope="transformer_block", element_order="torch", seed=2**64 - 3)),
    (BIG, dict(d=23040)), (BIG, dict(d=2**20)), (BIG, dict(d=2**21 + 17)),
    (BIG, dict(d=2_880_000)),  # d = N: groups of size about 1
    (BIG, dict(d=40_000, element_order="torch", seed=2**64 - 1)),
]


@pytest.fixture(scope="module")
def built():
    kernels.register()


def make_gpart(params, scheme, element_order="native", **kw) -> gj.GPart:
    entries = layout.build(params, ("kernel",), element_order=element_order)
    return gj.GPart.from_layout(entries, scheme=scheme, **kw)


def golden_ids(gp: gj.GPart) -> np.ndarray:
    """Host (numpy uint64) ids in the leaves' memory order, leaf after leaf."""
    plan = gp.plan
    out = []
    for i, e in enumerate(plan.layout):
        block = plan.blocks[plan.leaf_block[i]]
        if plan.scheme == "stateless":
            ids = hashing.group_ids(plan.leaf_offset[i], e.size, block.d, block.seed)
        else:
            ids = hashing.balanced_group_ids(plan.leaf_offset[i], e.size, block.d, block.seed,
                                             block.num_positions)
        ids = ids + block.theta_offset
        if e.element_order == "torch":  # position c * in + a is memory element (a, c)
            ids = ids.reshape(e.shape[1], e.shape[0]).T
        out.append(ids.reshape(-1))
    return np.concatenate(out)


def kernel_ids(scheme, start_offset, numel, d, seed, n_total) -> np.ndarray:
    """Ids of positions ``[start, start + numel)`` as the kernel hashes them.

    A one-leaf GPart whose plan is moved to the golden case (its offset in a block of
    ``n_total`` positions, its seed); ``expand`` with scales 1 and ``theta_j = j`` then writes
    each position's group id (exact in float32 for d < 2**24).
    """
    leaf = LayoutEntry("ids", (numel,))
    gp = gj.GPart.from_layout((dataclasses.replace(leaf, shape=(max(numel, d),)),), d=d,
                              seed=seed, scheme=scheme)  # d <= N there
    block = dataclasses.replace(gp.plan.blocks[0], num_positions=n_total)
    keys = (hashing.BalancedKeys(n_total, seed),) if scheme == "balanced" else gp.plan.keys
    plan = dataclasses.replace(gp.plan, layout=(leaf,), blocks=(block,),
                               leaf_offset=(start_offset,), keys=keys)
    tables = (hashing.walk_table(keys[0]),) if scheme == "balanced" else gp.tables
    gp = gp.replace(plan=plan, tables=tables, scales=jnp.ones((d,), jnp.float32))
    (ids,) = jax.jit(kernels.expand)(gp, jnp.arange(d, dtype=jnp.float32))
    return np.asarray(ids).astype(np.int64)


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-g++")
    with pytest.raises(kernels.CompilerNotFoundError, match="no-such-compiler-g\\+\\+"):
        kernels.build(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@needs_compiler
def test_ids_match_stateless_golden_vectors(built):
    doc = json.loads((GOLDEN / "reference_ids" / "cases.json").read_text())
    for case in doc["cases"]:
        start, numel = int(case["start_offset"]), case["numel"]
        d, seed = int(case["d"]), int(case["seed"])
        got = kernel_ids("stateless", start, numel, d, seed, start + numel)
        np.testing.assert_array_equal(got, np.load(GOLDEN / "reference_ids" / case["file"]),
                                      err_msg=case["file"])


@pytest.mark.slow
@needs_compiler
def test_ids_match_balanced_golden_vectors(built):
    doc = json.loads((GOLDEN / "balanced_ids.json").read_text())
    for case in doc["cases"]:
        start, numel, d = int(case["start_offset"]), case["numel"], case["d"]
        got = kernel_ids("balanced", start, numel, d, int(case["seed"]), int(case["n_total"]))
        np.testing.assert_array_equal(got, np.asarray(case["ids"]), err_msg=str(start))


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("scheme", ["stateless", "balanced"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernels_match_current(built, scheme, case):
    params, kw = CASES[case]
    gp = make_gpart(params, scheme, **kw)
    rng = np.random.default_rng(case)
    theta = jnp.asarray(rng.standard_normal(gp.d), jnp.float32)
    cot = tuple(jnp.asarray(rng.standard_normal(e.shape), jnp.float32) for e in gp.layout)
    bases = tuple(jnp.asarray(rng.standard_normal(e.shape), jnp.float32) for e in gp.layout)

    # forward, bit for bit
    ref = jax.jit(core._expand, static_argnums=2)(gp, theta, None)
    new = jax.jit(kernels.expand)(gp, theta)
    for a, b in zip(ref, new, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ref_w = jax.jit(bench.forward_current)(gp, theta, bases)
    new_w = jax.jit(kernels.expand_add)(gp, theta, bases)
    for a, b in zip(ref_w, new_w, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # backward: both against float64 over the host ids
    g64 = np.concatenate([np.asarray(c, np.float64).reshape(-1) for c in cot])
    ref64 = np.bincount(golden_ids(gp), weights=g64, minlength=gp.d) * np.asarray(gp.scales,
                                                                                  np.float64)
    scale = np.abs(ref64).max()
    current = bench.forward_backward(bench.REPARAMS["current"])(gp, theta, bases, cot)[1]
    fused = bench.forward_backward(bench.REPARAMS["ffi_fused"])(gp, theta, bases, cot)[1]
    bwd_only = bench.forward_backward(bench.REPARAMS["ffi_bwd_only"])(gp, theta, bases, cot)[1]
    err_current = np.abs(np.asarray(current, np.float64) - ref64).max() / scale
    err_kernel = np.abs(np.asarray(fused, np.float64) - ref64).max() / scale
    assert err_kernel <= max(2 * err_current, 1e-6), (err_kernel, err_current)
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(bwd_only))
    np.testing.assert_allclose(np.asarray(fused), np.asarray(current), rtol=0, atol=1e-5 * scale)

    # the bases' cotangent is the weights' cotangent
    grad_bases = jax.vjp(lambda b: kernels.expand_add(gp, theta, b), bases)[1](cot)[0]
    for a, b in zip(grad_bases, cot, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # deterministic: the same bits on a second call
    once = jax.jit(kernels.grouped_sum)(gp, cot)
    again = jax.jit(kernels.grouped_sum)(gp, cot)
    np.testing.assert_array_equal(np.asarray(once), np.asarray(again))


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("scheme", ["stateless", "balanced"])
def test_vmap_over_theta(built, scheme):
    gp = make_gpart(SMALL, scheme, d=300)
    thetas = jax.random.normal(jax.random.key(0), (3, gp.d))
    bases = tuple(jnp.full(e.shape, 0.5, jnp.float32) for e in gp.layout)
    cot = tuple(jax.random.normal(jax.random.key(i + 1), e.shape) for i, e in enumerate(gp.layout))

    fused = bench.forward_backward(bench.REPARAMS["ffi_fused"])
    current = bench.forward_backward(bench.REPARAMS["current"])
    w_new, g_new = jax.jit(jax.vmap(lambda t: fused(gp, t, bases, cot)))(thetas)
    w_ref, g_ref = jax.jit(jax.vmap(lambda t: current(gp, t, bases, cot)))(thetas)
    for k in range(len(thetas)):  # the kernel runs once per theta: the same bits as unbatched
        w_one, g_one = fused(gp, thetas[k], bases, cot)
        for a, b in zip(w_new, w_one, strict=True):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(g_new[k]), np.asarray(g_one))
    # XLA's batched forward need not contract to an FMA, so only close to today's bits here
    for a, b in zip(w_new, w_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_new, g_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@needs_compiler
def test_custom_call_all_gathers_sharded_bases(built):
    # conftest gives 8 host devices; a custom call is partitioned as replicated
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    result = sharding.measure("auto", leaves=2, leaf_shape=(64, 32), d=64)["variants"]
    assert result["current"]["forward"]["all-gather"] == 0
    assert result["current"]["forward_backward"]["all-gather"] == 0
    assert result["ffi_fused"]["forward"]["all_gather_shapes"] == {"f32[64,32]": 2}
    assert result["ffi_fused"]["forward_backward"]["all_gather_shapes"] == {"f32[64,32]": 4}
    for name in ("current", "ffi_fused"):
        assert result[name]["weights_bit_identical_to_current_on_one_device"]
        assert result[name]["weights_sharding"] == "P(None, 'model')"


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("scheme", ["stateless", "balanced"])
def test_bench_writes_its_json(built, scheme, tmp_path):
    out = tmp_path / "result.json"
    argv = ["--n", "2e5", "--d", "2304", "--scheme", scheme, "--rounds", "2", "--out", str(out)]
    assert bench.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["command"].endswith("python -m experiments.benchmarks.grouped_sum.bench "
                                   + " ".join(argv))
    assert (doc["n"], doc["d"], doc["scheme"], doc["rounds"]) == (200_000, 2304, scheme, 2)
    assert list(doc["variants"]) == list(bench.VARIANTS)
    assert len(doc["loadavg_1min_after_each_round"]) == 2
    for name, row in doc["variants"].items():
        assert len(row["times_ms"]) == 2 and row["core_ns_per_weight"] > 0
        if name in bench.REPARAMS:
            assert row["fwd_bit_identical_to_current"], name
            assert row["grad_max_rel_err_vs_f64"] < 1e-5, name
    assert doc["variants"]["numpy_roof"]["pct_of_roof"] == 100
    assert doc["variants"]["ffi_fused"]["hlo"] == {"f32_big": 0, "s32_big": 0, "int16_big": 0,
                                                   "copies_big": 0, "scatter": 0, "custom_call": 2}
    assert doc["variants"]["current"]["hlo"]["scatter"] == 10
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("scheme", ["stateless", "balanced"])
def test_current_passes_are_checked_against_current(scheme, tmp_path):
    """The ``current_pass_*`` variants (where ``current``'s time goes) compute what ``current``
    does: the ids of the host hashes, its weights and its gradient bit for bit. Each pass's HLO
    holds only its own leaf-sized arrays, as the compiled ``current`` holds them. Run as the
    benchmark is, in a process of one device (this one has 8: the library's other indexing
    form)."""
    out = tmp_path / "passes.json"
    variants = ",".join(("current", *bench.PASSES, "numpy_roof"))
    argv = ["--n", "2e5", "--d", "2304", "--scheme", scheme, "--rounds", "1",
            "--variants", variants, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-m", "experiments.benchmarks.grouped_sum.bench", *argv],
                          cwd=bench.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["variants"]
    assert list(rows) == ["current", *bench.PASSES, "numpy_roof"]
    assert rows["current_pass_hash"]["ids_equal_host_hashes"]
    assert rows["current_pass_forward"]["fwd_bit_identical_to_current"]
    assert rows["current_pass_scatter"]["grad_bit_identical_to_current"]
    leaf = {"current_pass_hash": (0, 10, 0), "current_pass_forward": (10, 0, 0),
            "current_pass_scatter": (0, 0, 10)}
    for name, (f32, ids, scatters) in leaf.items():
        hlo = rows[name]["hlo"]  # d = 2304: uint16 ids
        assert (hlo["f32_big"], hlo["s32_big"], hlo["int16_big"], hlo["scatter"],
                hlo["copies_big"]) == (f32, 0, ids, scatters, 0), name
        assert len(rows[name]["times_ms"]) == 1 and rows[name]["minor_faults_per_call"] >= 0
    assert rows["current"]["hlo"] == {"f32_big": 10, "s32_big": 0, "int16_big": 10,
                                      "copies_big": 0, "scatter": 10, "custom_call": 0}


def test_passes_need_current(tmp_path):
    with pytest.raises(SystemExit, match="add current to the list"):
        bench.main(["--n", "2e5", "--variants", "current_pass_scatter",
                    "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()

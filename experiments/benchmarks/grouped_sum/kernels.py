"""The benchmark's C++ kernels (kernels.cc): build, register, and the JAX calls into them.

A prototype for ``bench.py``; ``gpart_jax`` does not use it. The kernels fuse the group-id
hash of either scheme (bit-exact with ``gpart_jax.hashing``) with

    grouped_sum:  out_j = sum_{i : g(i) = j} g_i            (P^T g before the scales s_j)
    expand:       w_i = fma(theta_{g(i)}, s_{g(i)}, w0_i)   (or theta_{g(i)} s_{g(i)} alone)

so neither direction writes an N-sized ids buffer. The backward splits the N positions into
``parts_for(N, d)`` fixed ranges, each summed into its own d-vector on XLA's intra-op pool and
added in a fixed order: the result depends on N and d, never on the thread count.

``build()`` compiles kernels.cc once with ``g++ -O3 -march=native`` into a cache directory (a
file named by the hash of the source and flags and by the jaxlib version, written through a
temporary file and a rename), so the first call needs a C++ compiler and the library is tuned
to the building machine's CPU (AVX-512 where it has it).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from gpart_jax.core import GPart

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "kernels.cc"
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++17")
# build/ is git-ignored; GPART_KERNELS_CACHE moves the cache elsewhere
CACHE_DIR = pathlib.Path(os.environ.get("GPART_KERNELS_CACHE", HERE / "build"))


class CompilerNotFoundError(RuntimeError):
    """No C++ compiler to build kernels.cc with."""


def compiler() -> str:
    """The C++ compiler's path: ``$CXX`` if set, else ``g++``; raises if it is not installed."""
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise CompilerNotFoundError(
            f"the grouped-sum benchmark kernel (kernels.cc) is compiled on first use and needs a "
            f"C++ compiler, but {name!r} is not on PATH: install g++ (e.g. apt-get install g++) "
            f"or set CXX to another C++17 compiler")
    return path


def library_path(cache_dir: pathlib.Path = CACHE_DIR) -> pathlib.Path:
    """Where the build for this source, these flags and this jaxlib lives in ``cache_dir``."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return pathlib.Path(cache_dir) / f"grouped_sum_{digest}_jaxlib{jaxlib.__version__}.so"


def build(cache_dir: pathlib.Path = CACHE_DIR) -> pathlib.Path:
    """Compile kernels.cc into the cache unless it is there already (about 5 s with g++)."""
    target = library_path(cache_dir)
    if target.exists():
        return target
    cxx = compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    # a temporary sibling renamed into place: a concurrent or killed build never leaves half a file
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} with {cxx} failed:\n{done.stderr}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def register() -> pathlib.Path:
    """Build if needed, load, and register ``gpart_grouped_sum`` and ``gpart_expand`` for CPU."""
    path = build()
    lib = ctypes.CDLL(str(path))
    jax.ffi.register_ffi_target("gpart_grouped_sum", jax.ffi.pycapsule(lib.GpartGroupedSum),
                                platform="cpu")
    jax.ffi.register_ffi_target("gpart_expand", jax.ffi.pycapsule(lib.GpartExpand),
                                platform="cpu")
    return path


def parts_for(n_total: int, d: int) -> int:
    """How many private d-vectors the backward sums into (a function of N and d only).

    Their accumulators together stay within about 16 MiB (in cache): at least two (two cores),
    at most eight, and one when d is large against N (16 d > N).
    """
    if 16 * d > n_total:
        return 1
    parts = max(2, min(8, (16 << 20) // (4 * d)))
    return parts - parts % 2


# --------------------------------------------------------------------------- the plan as attributes
def _attrs(gp: GPart) -> dict:
    """The static description of the partition that the kernels hash with (all int64)."""
    plan = gp.plan
    torch_in = [e.shape[0] if e.element_order == "torch" else 0 for e in plan.layout]
    torch_out = [e.shape[1] if e.element_order == "torch" else 0 for e in plan.layout]
    balanced = plan.scheme == "balanced"

    def i64(values):
        return np.asarray([int(v) for v in values], dtype=np.int64)

    return dict(
        scheme=np.int64(1 if balanced else 0),
        parts=np.int64(parts_for(plan.num_adapted, plan.d)),
        leaf_block=i64(plan.leaf_block),
        leaf_offset=i64(plan.leaf_offset),
        leaf_torch_in=i64(torch_in),
        leaf_torch_out=i64(torch_out),
        block_d=i64(b.d for b in plan.blocks),
        block_theta_offset=i64(b.theta_offset for b in plan.blocks),
        # uint64 seeds passed as the int64 with the same bits
        block_seed=np.asarray([b.seed for b in plan.blocks], dtype=np.uint64).view(np.int64),
        block_n=i64(k.n_total if balanced else 0 for k in plan.keys),
        block_u=i64(k.u if balanced else 0 for k in plan.keys),
        block_v=i64(k.v if balanced else 0 for k in plan.keys),
        block_keys=i64([r for k in plan.keys for r in k.round_keys] if balanced else [0]),
    )


def _walk_tables(gp: GPart) -> list:
    if gp.plan.scheme != "balanced":
        return []
    # an empty walk table (M == N) is never read; one dummy entry keeps the buffer valid
    return [jnp.asarray(t, jnp.int32) if np.size(t) else jnp.zeros((1,), jnp.int32)
            for t in gp.tables]


# --------------------------------------------------------------------------- the calls
def grouped_sum(gp: GPart, cotangents) -> jax.Array:
    """``sum_{i : g(i) = j} cot_i`` for all leaves in one call: f32[d], without the scales."""
    register()
    call = jax.ffi.ffi_call("gpart_grouped_sum", jax.ShapeDtypeStruct((gp.d,), jnp.float32),
                            vmap_method="sequential")
    return call(*[jnp.asarray(g, jnp.float32) for g in cotangents], *_walk_tables(gp),
                **_attrs(gp))


def expand(gp: GPart, theta, bases=None) -> tuple:
    """Per leaf ``(theta * s)[g]`` (``bases=None``) or ``fma(theta[g], s[g], w0)``.

    The first rounds the product once, as ``core._expand_impl``; the second rounds
    ``w0 + theta_g s_g`` once, which is what XLA's CPU fusion of ``w0 + gather(theta * s)``
    computes (it contracts to an FMA), so both are bit-identical to today's forward.
    """
    register()
    shapes = tuple(jax.ShapeDtypeStruct(e.shape, jnp.float32) for e in gp.layout)
    call = jax.ffi.ffi_call("gpart_expand", shapes, vmap_method="sequential")
    pairs = jnp.stack([theta, gp.scales], axis=-1)  # (theta_j, s_j) adjacent: one fetch for both
    extra = list(bases) if bases is not None else []
    return tuple(call(pairs, *extra, *_walk_tables(gp), has_base=np.int64(bases is not None),
                      **_attrs(gp)))


def _zeros_like_gpart(gp: GPart) -> GPart:
    return jax.tree_util.tree_map(
        lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.floating)
        else np.zeros(x.shape, jax.dtypes.float0), gp)


@jax.custom_vjp
def expand_add(gp: GPart, theta, bases: tuple) -> tuple:
    """``w0 + P theta`` for every leaf in one kernel; the VJP is ``grouped_sum * scales``.

    ``dw / dw0`` is the identity, so the bases' cotangent is the weights' cotangent, uncopied.
    """
    return expand(gp, theta, bases)


def _expand_add_fwd(gp, theta, bases):
    return expand(gp, theta, bases), gp


def _expand_add_bwd(gp, cotangents):
    return _zeros_like_gpart(gp), grouped_sum(gp, cotangents) * gp.scales, tuple(cotangents)


expand_add.defvjp(_expand_add_fwd, _expand_add_bwd)

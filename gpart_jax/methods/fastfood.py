"""Fastfood / DID projection (Li et al., 2018, arXiv:1804.08838; Aghajanyan et al., 2020, arXiv:2012.13255).

Intrinsic-dimension fine-tuning trains ``theta`` (length ``d``) through a dense random
projection of the ``N`` adapted weights, never stored as a matrix:

    w = w0 + P theta,    P in R^{N x d}

``P`` is a stack of ``K = ceil(N / L)`` independent Fastfood blocks of size
``L = 2^ceil(log2 d)``, truncated to its first ``N`` rows and applied to ``theta`` zero-padded
to length ``L``:

    P theta = first N entries of [V_1 x; ...; V_K x],    x = (theta, 0, ..., 0) in R^L
    V_k = c_k H G_k Pi_k H B_k,     c_k = 1 / (||G_k||_2 sqrt(N))

with ``H`` the unnormalised ``L x L`` Walsh-Hadamard matrix (``H_ij = (-1)^{popcount(i & j)}``,
``H H = L I``), ``B_k`` a diagonal of random signs, ``Pi_k`` a random permutation
(``(Pi x)_i = x_{pi(i)}``) and ``G_k`` a diagonal of standard normals. ``H`` is applied by the
fast transform (``log2 L`` butterfly passes of adds and subtracts), so applying ``P`` costs
``O(N log L)`` and stores ``3 K L`` numbers (``B``, ``Pi``, ``G``), never ``N d``.

**Normalisation.** Column ``j`` of a full block is ``c_k b_j H G_k Pi_k h_j`` with ``h_j`` the
``j``-th column of ``H`` (entries ``+-1``): ``Pi`` permutes it, ``G`` scales entry ``i`` by ``g_i``
and ``H`` multiplies squared norms by ``L``, so its squared norm is ``c_k^2 L ||G_k||^2 = L / N``
for every draw. Hence when ``L`` divides ``N`` every column of ``P`` has unit norm exactly;
otherwise the truncated last block makes the norm approximately 1. Distinct columns ``j != j'``
carry the factor ``b_j b_j'``, whose mean over the random signs is 0, so ``E[P^T P] = I`` (exactly
on the diagonal when ``L`` divides ``N``). A single draw is not orthogonal: unlike GPart's ``P``
this one is an isometry only in expectation. This is the normalisation of the reference
implementation (Aghajanyan's ``FastFoodProjection``: divide by ``sqrt(L ||G||^2) sqrt(N / L)``,
i.e. ``||G|| sqrt(N)``), here per block.

``B``, ``Pi`` and ``G`` are regenerated from the seed with the project's hash
(``gpart_jax.methods.seeded``; block ``k`` uses streams ``FASTFOOD_SIGNS + k``,
``FASTFOOD_PERM + k``, ``FASTFOOD_GAUSS + k``). ``theta`` starts at zero (the base model exactly).
Global positions follow the same layout as GPart (natural order of the target paths, each leaf
row-major). Stored per adapter: ``theta`` plus the seed.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gpart_jax import _validate
from gpart_jax.filters import Filter
from gpart_jax.hashing import check_uint64
from gpart_jax.method import Method, Shapes, adapted_shapes, add_deltas, check_adapted_dtype
from gpart_jax.methods import seeded


def fwht(x):
    """Unnormalised fast Walsh-Hadamard transform along the last axis (length a power of 2).

    ``log2 L`` butterfly passes: split the axis into pairs of halves of width ``h`` and map
    ``(a, b) -> (a + b, a - b)``, for ``h = 1, 2, 4, ...``. Equals ``x @ H`` with the Sylvester
    ``H`` (symmetric, ``H_ij = (-1)^{popcount(i & j)}``).
    """
    size = x.shape[-1]
    if size & (size - 1):
        raise ValueError(f"fwht: the last axis must be a power of two, got {size}")
    lead = x.shape[:-1]
    h = 1
    while h < size:
        y = x.reshape(*lead, size // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, size)
        h *= 2
    return x


def fastfood_blocks(seed: int, num_blocks: int, block_size: int):
    """``(signs, perm, gauss)`` of shape ``(K, L)``: each block's ``B``, ``pi`` and ``G`` (numpy)."""
    signs = np.stack([seeded.signs(seed, seeded.FASTFOOD_SIGNS + k, block_size)
                      for k in range(num_blocks)])
    perm = np.stack([seeded.permutation(seed, seeded.FASTFOOD_PERM + k, block_size)
                     for k in range(num_blocks)])
    gauss = np.stack([seeded.gaussian(seed, seeded.FASTFOOD_GAUSS + k, block_size)
                      for k in range(num_blocks)])
    return signs, perm.astype(np.int32), gauss


def fastfood_project(theta, signs, perm, gauss, scale, n: int):
    """``P theta`` (length ``n``) for the blocks' ``B``, ``pi``, ``G`` and scales ``c_k``."""
    num_blocks, size = signs.shape
    x = jnp.pad(theta.astype(jnp.float32), (0, size - theta.shape[0]))
    y = fwht(signs * x[None, :])  # H B x, per block
    y = jnp.take_along_axis(y, perm, axis=1)  # Pi H B x
    y = fwht(gauss * y)  # H G Pi H B x
    return (y * scale[:, None]).reshape(-1)[:n]


class Fastfood(Method):
    """``w = w0 + P theta`` with ``P`` the stacked, normalised Fastfood blocks ``H G Pi H B``."""

    name: ClassVar[str] = "fastfood"
    signs: jax.Array
    perm: jax.Array
    gauss: jax.Array
    scale: jax.Array
    shapes: Shapes = struct.field(pytree_node=False)
    d: int = struct.field(pytree_node=False)
    seed: int = struct.field(pytree_node=False)
    adapted_dtype: str = struct.field(pytree_node=False, default="float32")

    @classmethod
    def create(cls, base_params, *, d: int, seed: int = 0,
               targets: Filter = ("query/kernel", "value/kernel"),
               adapted_dtype: str = "float32") -> Fastfood:
        """Fastfood projection of ``d`` trainable numbers onto the leaves ``targets`` selects."""
        d = _validate.positive_int(d, "d")
        seed = check_uint64(seed, "seed")
        check_adapted_dtype(adapted_dtype)
        shapes = adapted_shapes(base_params, targets)
        n = sum(math.prod(s) for _, s in shapes)
        if d > n:
            raise ValueError(f"d = {d} exceeds N = {n}, the number of adapted weights; choose "
                             f"d <= {n} or target more parameters")
        block_size = 1 << (d - 1).bit_length()  # L = 2^ceil(log2 d)
        signs, perm, gauss = fastfood_blocks(seed, -(-n // block_size), block_size)
        g_norm = np.sqrt(np.sum(gauss.astype(np.float64) ** 2, axis=1))
        scale = (1.0 / (g_norm * math.sqrt(n))).astype(np.float32)
        return cls(jnp.asarray(signs), jnp.asarray(perm), jnp.asarray(gauss), jnp.asarray(scale),
                   shapes, d, seed, adapted_dtype)

    @property
    def adapted(self) -> Shapes:
        return self.shapes

    @property
    def block_size(self) -> int:
        return int(self.signs.shape[1])

    @property
    def num_blocks(self) -> int:
        return int(self.signs.shape[0])

    def __repr__(self) -> str:
        return (f"Fastfood(d={self.d}, N={self.num_adapted}, seed={self.seed}, "
                f"blocks={self.num_blocks} x {self.block_size})")

    def init(self, key=None):
        """``theta = 0`` (float32, length d): the base model exactly."""
        return jnp.zeros((self.d,), jnp.float32)

    def project(self, theta):
        """``P theta``: the flat update of all ``N`` adapted weights, in layout order (float32)."""
        _validate.float_vector(theta, "theta", self.d)
        return fastfood_project(theta, self.signs, self.perm, self.gauss, self.scale,
                                self.num_adapted)

    def deltas(self, theta) -> dict:
        """``{path: delta}``: ``P theta`` split into the target leaves' shapes."""
        flat = self.project(theta)
        out, offset = {}, 0
        for p, shape in self.shapes:
            size = math.prod(shape)
            out[p] = flat[offset:offset + size].reshape(shape)
            offset += size
        return out

    def apply(self, trainable, base_params):
        return add_deltas(base_params, self.deltas(trainable), self.adapted_dtype,
                          what="this Fastfood projection")

    def details(self) -> dict:
        return {"d": self.d, "seed": self.seed, "blocks": f"{self.num_blocks} x {self.block_size}"}

    def spec(self) -> dict:
        return {"method": self.name, "d": self.d, "seed": str(self.seed),
                "adapted_dtype": self.adapted_dtype, "adapted": [[p, list(s)] for p, s in self.shapes]}

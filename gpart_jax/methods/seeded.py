"""Random structures regenerated from a seed with the project's own hash (never a library RNG).

A saved adapter of VeRA or Fastfood is its trainable numbers plus a seed; the frozen random
matrices are rebuilt from that seed, so the generator must give the same numbers forever. Library
generators (``jax.random``, numpy's) may change their streams between versions; these functions
only use SplitMix64 (``gpart_jax.hashing``) and IEEE arithmetic, and golden vectors in
``tests/golden/method_random.json`` lock them.

**Streams.** A structure is a ``(seed, stream)`` pair; ``stream`` is a small integer naming what
is drawn (``VERA_A``, ``FASTFOOD_SIGNS + block``, ...), so different structures of one seed are
unrelated. The stream key is

    k = splitmix64(splitmix64(seed + gamma) + stream + gamma)

(``splitmix64`` the output function, ``gamma = 0x9E3779B97F4A7C15``, arithmetic mod 2^64; the
seed is mixed through the hash before the stream is added), and the stream's ``i``-th 64-bit
word is SplitMix64's ``i``-th output from state ``k``:

    z_i = splitmix64(k + (i + 1) gamma),   i = 0, 1, ...

so any entry can be computed without the ones before it.

**Draws.**

- ``uniform``: ``u_i = floor(z_i / 2^40) / 2^24`` in ``[0, 1)``, the top 24 bits, exact in float32.
- ``signs``: ``s_i = +1`` if the top bit of ``z_i`` is 0, else ``-1``.
- ``gaussian``: Box-Muller on the word pair ``(z_{2i}, z_{2i+1})``: ``u = (floor(z_{2i} / 2^11) + 1)
  / 2^53`` in ``(0, 1]``, ``v = floor(z_{2i+1} / 2^11) / 2^53`` in ``[0, 1)``,
  ``g_i = sqrt(-2 ln u) cos(2 pi v)`` in float64, rounded to float32 (only the cosine branch, so
  entry ``i`` depends on two words only).
- ``permutation``: ``pi = argsort(z_0, ..., z_{n-1})`` with ties broken by index (a stable
  sort), a uniformly random permutation of ``[0, n)``; ``(Pi x)_i = x_{pi(i)}``.

Everything is computed on the host in numpy (``uint64`` integers, float64 for Box-Muller) and
returned as numpy arrays.
"""

from __future__ import annotations

import numpy as np

from gpart_jax import _validate
from gpart_jax.hashing import GOLDEN_GAMMA, MASK64, check_uint64, splitmix64_int, splitmix64_np

# Stream tags: what a (seed, stream) pair draws. Per-block streams add the block index.
VERA_A = 1
VERA_B = 2
FASTFOOD_SIGNS = 1 << 32
FASTFOOD_PERM = 2 << 32
FASTFOOD_GAUSS = 3 << 32

_TWO_PI = 2.0 * np.pi


def stream_key(seed: int, stream: int) -> int:
    """``k = splitmix64(splitmix64(seed + gamma) + stream + gamma)`` (mod 2^64)."""
    seed = check_uint64(seed, "seed")
    stream = check_uint64(stream, "stream")
    return splitmix64_int((splitmix64_int(seed + GOLDEN_GAMMA) + stream + GOLDEN_GAMMA) & MASK64)


def words(seed: int, stream: int, n: int, start: int = 0) -> np.ndarray:
    """``z_i = splitmix64(k + (i + 1) gamma)`` for ``i`` in ``[start, start + n)`` (numpy ``uint64``)."""
    n = _validate.integer(n, "n", low=0)
    key = np.uint64(stream_key(seed, stream))
    with np.errstate(over="ignore"):
        i = np.arange(start + 1, start + n + 1, dtype=np.uint64)
        return splitmix64_np(key + i * np.uint64(GOLDEN_GAMMA))


def uniform(seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` floats in ``[0, 1)``: the top 24 bits of each word over ``2^24`` (float32, exact)."""
    z = words(seed, stream, n)
    return ((z >> np.uint64(40)).astype(np.float64) * 2.0**-24).astype(np.float32)


def signs(seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` entries of ``+1`` / ``-1`` (float32): ``+1`` where the word's top bit is 0."""
    z = words(seed, stream, n)
    return (1.0 - 2.0 * (z >> np.uint64(63)).astype(np.float64)).astype(np.float32)


def gaussian(seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` standard normals (float32) by Box-Muller's cosine branch on word pairs."""
    n = _validate.integer(n, "n", low=0)
    z = words(seed, stream, 2 * n)
    u = ((z[0::2] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    v = (z[1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    return (np.sqrt(-2.0 * np.log(u)) * np.cos(_TWO_PI * v)).astype(np.float32)


def permutation(seed: int, stream: int, n: int) -> np.ndarray:
    """A permutation ``pi`` of ``[0, n)`` (numpy ``int64``): stable argsort of the words."""
    return np.argsort(words(seed, stream, n), kind="stable").astype(np.int64)


def kaiming_uniform(seed: int, stream: int, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """``(2 u - 1) sqrt(6 / fan_in)`` of the requested shape, row-major (float32).

    Kaiming-uniform with gain ``sqrt(2)``: bound ``sqrt(3) * sqrt(2) / sqrt(fan_in)``, the bound
    PEFT's VeRA draws its shared matrices with. Computed in float64, rounded once.
    """
    n = int(np.prod(shape))
    u = uniform(seed, stream, n).astype(np.float64)
    return ((2.0 * u - 1.0) * np.sqrt(6.0 / fan_in)).astype(np.float32).reshape(shape)

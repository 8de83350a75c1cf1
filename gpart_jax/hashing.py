"""The project's integer hashes: where every group id comes from.

Two schemes assign global position ``i`` (of ``N`` adapted weights) to a group ``g(i)`` of ``d``:

``stateless`` (the reference's, bit-exact)
    ``g(i) = splitmix64(i + seed + 0x9E3779B97F4A7C15) mod d`` in unsigned 64-bit arithmetic:
    one output of SplitMix64 (Steele, Lea and Flood, 2014) whose state is ``i + seed``. Group
    sizes are multinomial, so some groups may be empty. Because the seed is *added* to the
    position, seed ``s + 1`` is seed ``s`` shifted by one position; we keep that for
    compatibility with the reference implementation.

``balanced`` (this project's own)
    ``g(i) = pi(i) mod d`` where ``pi`` is a keyed permutation of ``[0, N)``: a six-round Feistel
    network on ``Z_u x Z_v`` (``u = ceil(sqrt N)``, ``v = ceil(N / u)``, so ``M = u v >= N``),
    made a permutation of ``[0, N)`` by cycle walking. Since ``pi`` is a bijection, group ``j``
    receives exactly the positions ``{p < N : p mod d = j}``: ``n_j = ceil(N/d)`` for
    ``j < N mod d`` and ``floor(N/d)`` otherwise, for every seed. The round keys are
    SplitMix64 outputs of (seed, round), so the seed is mixed through the hash and different
    seeds give unrelated partitions.

Cycle walking without a data-dependent loop: a walk that leaves ``[0, N)`` at ``y`` (``N <= y < M``)
continues along the orbit of ``y`` only, so its end point is a function of ``y``. The table
``W[y - N]`` of those end points has ``M - N < u ~ sqrt(N)`` entries and is built on the host
(``walk_table``); inside ``jit`` a position then costs six rounds plus one lookup.

Never ``jax.random`` or numpy's generators: their streams may change between versions, and an
adapter is stored as theta plus a seed, so the partition must be reproducible forever. Golden
vectors in ``tests/golden`` lock both schemes.

Each hash exists twice, on the host in numpy ``uint64`` (exact reference, used at init and in
tests) and in JAX with 64-bit values emulated by pairs of ``uint32`` (``hi``, ``lo``), so that it
runs inside ``jit`` without ``jax_enable_x64``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from gpart_jax import _validate

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
FEISTEL_ROUNDS = 6
MAX_D = 2**31 - 1  # group ids are int32


check_uint64 = _validate.uint64


def check_d(d) -> int:
    """``d`` as a Python int in ``[1, 2**31 - 1]`` (group ids are int32)."""
    return _validate.integer(d, "d", low=1, high=MAX_D)


# --------------------------------------------------------------------------- host (numpy)

def splitmix64_np(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a ``uint64`` array (the state already includes gamma)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def splitmix64_int(z: int) -> int:
    """SplitMix64's output function on one Python int (exact, for keys and constants)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & MASK64
    return z ^ (z >> 31)


def group_ids(start_offset: int, numel: int, d: int, seed: int) -> np.ndarray:
    """Stateless (reference) group ids of global positions ``[start_offset, start_offset + numel)``.

    ``g(p) = splitmix64(p + seed + 0x9E3779B97F4A7C15) mod d``, unsigned 64-bit arithmetic with
    logical shifts, where ``splitmix64(z) = z3`` for ``z1 = (z ^ z >> 30) * 0xBF58476D1CE4E5B9``,
    ``z2 = (z1 ^ z1 >> 27) * 0x94D049BB133111EB``, ``z3 = z2 ^ z2 >> 31``. Bit-exact with the
    reference implementation's ``stateless`` backend; ids do not depend on chunking.

    Returns a numpy ``int64`` array of length ``numel``.
    """
    start_offset = check_uint64(start_offset, "start_offset")
    numel = _validate.integer(numel, "numel", low=0)
    if start_offset + int(numel) > MASK64 + 1:
        raise ValueError("start_offset + numel must not exceed 2**64")
    d = check_d(d)
    seed = check_uint64(seed, "seed")
    base = np.uint64((start_offset + seed + GOLDEN_GAMMA) & MASK64)
    with np.errstate(over="ignore"):
        z = np.arange(int(numel), dtype=np.uint64) + base
    return (splitmix64_np(z) % np.uint64(d)).astype(np.int64)


def _mix32_np(x: np.ndarray) -> np.ndarray:
    """A 32-bit bijective integer mixer (xor-shift-multiply, constants 0x7feb352d, 0x846ca68b)."""
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


@dataclasses.dataclass(frozen=True, init=False)
class BalancedKeys:
    """The constants of the balanced scheme for one (N, seed): domain split and round keys.

    Compared and hashed by value, so that a GPart holding them is static data for ``jit``.
    """

    n_total: int
    seed: int
    u: int
    v: int
    m: int
    round_keys: tuple[int, ...]

    def __init__(self, n_total: int, seed: int):
        n_total = _validate.positive_int(n_total, "N (number of adapted weights)")
        seed = check_uint64(seed, "seed")
        u = math.isqrt(n_total - 1) + 1  # ceil(sqrt(N))
        v = -(-n_total // u)  # ceil(N / u)
        if u * v > 2**32 - 1:
            raise ValueError(
                f"scheme='balanced' supports N up to about 2**32 - 2**17 adapted weights, got N = "
                f"{n_total}; use scheme='stateless' for larger target sets")
        # Round key r: 32 bits of SplitMix64 over (seed, r), so the seed is mixed, not added.
        round_keys = tuple(
            splitmix64_int(splitmix64_int(seed + GOLDEN_GAMMA) + r + 1 + GOLDEN_GAMMA) & 0xFFFFFFFF
            for r in range(FEISTEL_ROUNDS))
        for name, value in (("n_total", n_total), ("seed", seed), ("u", u), ("v", v),
                            ("m", u * v), ("round_keys", round_keys)):
            object.__setattr__(self, name, value)


def feistel_np(x: np.ndarray, keys: BalancedKeys) -> np.ndarray:
    """The six-round Feistel permutation of ``[0, M)`` (numpy, ``uint32`` in and out).

    ``x = a v + b`` with ``a`` in ``Z_u``, ``b`` in ``Z_v``; each round maps ``(a, b)`` to
    ``(b, (a + F_r(b)) mod m_r)`` where ``F_r(b) = mix32(b ^ k_r)``, and the moduli alternate
    between ``u`` and ``v`` so that after an even number of rounds ``(a, b)`` is back in
    ``Z_u x Z_v``.
    """
    x = np.asarray(x, dtype=np.uint64)
    a, b = x // np.uint64(keys.v), x % np.uint64(keys.v)
    mods = (keys.u, keys.v)
    for r, k in enumerate(keys.round_keys):
        mod = np.uint64(mods[r % 2])
        f = _mix32_np((b & np.uint64(0xFFFFFFFF)).astype(np.uint32) ^ np.uint32(k))
        a, b = b, (a + f.astype(np.uint64) % mod) % mod
    return (a * np.uint64(keys.v) + b).astype(np.uint32)


def walk_table(keys: BalancedKeys) -> np.ndarray:
    """End points of cycle walks: ``W[y - N]`` = first point of the orbit of ``y`` below ``N``.

    For ``N <= y < M``. Points on a cycle that never enters ``[0, N)`` are never reached from a
    position below ``N``; their entry is 0 and unused. ``int32`` array of ``M - N`` entries.
    """
    n, m = keys.n_total, keys.m
    start = np.arange(n, m, dtype=np.uint64)
    out = np.zeros(m - n, dtype=np.int64)
    z = start.copy()
    active = np.ones(m - n, dtype=bool)
    for _ in range(m - n + 1):  # a walk visits at most M - N points above N
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        z[idx] = feistel_np(z[idx].astype(np.uint32), keys)
        done = z[idx] < n
        out[idx[done]] = z[idx[done]].astype(np.int64)
        cycled = ~done & (z[idx] == start[idx])
        active[idx[done | cycled]] = False
    return out.astype(np.int32)


def balanced_permutation_np(start_offset: int, numel: int, keys: BalancedKeys,
                            table: np.ndarray | None = None) -> np.ndarray:
    """``pi(p)`` for positions ``[start_offset, start_offset + numel)`` (numpy ``int64``)."""
    if not (0 <= start_offset and start_offset + numel <= keys.n_total):
        raise ValueError(f"positions [{start_offset}, {start_offset + numel}) are outside "
                         f"[0, N = {keys.n_total})")
    if table is None:
        table = walk_table(keys)
    y = feistel_np(np.arange(start_offset, start_offset + numel, dtype=np.uint64), keys)
    y = y.astype(np.int64)
    out = y >= keys.n_total
    y[out] = table[y[out] - keys.n_total]
    return y


def balanced_group_ids(start_offset: int, numel: int, d: int, seed: int, n_total: int) -> np.ndarray:
    """Balanced group ids ``g(p) = pi(p) mod d`` of positions ``[start_offset, start_offset + numel)``.

    ``pi`` is the keyed permutation of ``[0, N)`` described in the module docstring (``N`` =
    ``n_total``). Group sizes are ``ceil(N/d)`` for the first ``N mod d`` groups and ``floor(N/d)``
    for the rest, for every seed. Returns a numpy ``int64`` array.
    """
    d = check_d(d)
    keys = BalancedKeys(n_total, seed)
    if d > keys.n_total:
        raise ValueError(f"d = {d} must not exceed N = {keys.n_total}")
    return balanced_permutation_np(int(start_offset), int(numel), keys) % d


def balanced_group_sizes(n_total: int, d: int) -> np.ndarray:
    """Closed-form group sizes of the balanced scheme: ``floor(N/d) + [j < N mod d]``."""
    q, r = divmod(int(n_total), int(d))
    sizes = np.full(int(d), q, dtype=np.int64)
    sizes[:r] += 1
    return sizes


# --------------------------------------------------------------------------- JAX (uint32 pairs)

def _u32(c: int):
    return np.uint32(c & 0xFFFFFFFF)


def _mulhi_u32_const(a, c: int):
    """High 32 bits of ``a * c`` for a ``uint32`` array ``a`` and a 32-bit constant ``c``."""
    a0, a1 = a & _u32(0xFFFF), a >> _u32(16)
    c0, c1 = _u32(c & 0xFFFF), _u32(c >> 16)
    lo_lo, lo_hi, hi_lo = a0 * c0, a0 * c1, a1 * c0
    mid = (lo_lo >> _u32(16)) + (lo_hi & _u32(0xFFFF)) + (hi_lo & _u32(0xFFFF))
    return a1 * c1 + (lo_hi >> _u32(16)) + (hi_lo >> _u32(16)) + (mid >> _u32(16))


def _mul64_const(hi, lo, c: int):
    """Low 64 bits of ``(hi, lo) * c`` for a 64-bit constant ``c``."""
    c_lo, c_hi = c & 0xFFFFFFFF, c >> 32
    new_hi = _mulhi_u32_const(lo, c_lo) + hi * _u32(c_lo) + lo * _u32(c_hi)
    return new_hi, lo * _u32(c_lo)


def _xorshift64(hi, lo, k: int):
    """``z ^ (z >> k)`` for ``0 < k < 32``."""
    return hi ^ (hi >> _u32(k)), lo ^ ((lo >> _u32(k)) | (hi << _u32(32 - k)))


def _mod64_const(hi, lo, d: int):
    """``(hi * 2**32 + lo) mod d`` with 32-bit operations only (``1 <= d < 2**31``).

    Long division by digits: with ``r < d``, ``r * 2**k + digit`` fits in 32 bits when
    ``k = 32 - bitlen(d - 1)``, and a remainder by a constant compiles to multiply and shift.
    """
    if d == 1:
        return jnp.zeros_like(lo)
    if d & (d - 1) == 0:  # power of two: 2**32 is a multiple of d
        return lo & _u32(d - 1)
    k = 32 - (d - 1).bit_length()
    r = hi % _u32(d)
    consumed = 0
    while consumed < 32:
        width = min(k, 32 - consumed)
        shift = 32 - consumed - width
        digit = (lo >> _u32(shift)) & _u32((1 << width) - 1)
        r = ((r << _u32(width)) | digit) % _u32(d)
        consumed += width
    return r


def stateless_ids_jax(local, base, d: int, dtype=jnp.int32):
    """Stateless group ids of positions ``p = offset + local`` inside ``jit`` (no x64 needed).

    ``local``: ``uint32`` array of positions relative to ``offset``; ``base``: the 64-bit value
    ``offset + seed + 0x9E3779B97F4A7C15 (mod 2**64)``, as a Python int (a compile-time
    constant) or as a pair of ``uint32`` scalars ``(hi, lo)`` (a traced value). Returns ids in
    ``[0, d)`` as ``dtype``: ``int32`` or ``uint32`` (the hash's own type, so no conversion
    pass; ``GPart`` indexes with these).
    """
    if isinstance(base, int):
        base_hi, base_lo = _u32(base >> 32), _u32(base)
    else:
        base_hi, base_lo = base
    local = local.astype(jnp.uint32)
    lo = local + base_lo
    hi = base_hi + (lo < base_lo).astype(jnp.uint32)
    hi, lo = _xorshift64(hi, lo, 30)
    hi, lo = _mul64_const(hi, lo, _MIX1)
    hi, lo = _xorshift64(hi, lo, 27)
    hi, lo = _mul64_const(hi, lo, _MIX2)
    hi, lo = _xorshift64(hi, lo, 31)
    return _id_dtype(_mod64_const(hi, lo, d), dtype)


def _mix32_jax(x):
    x = x ^ (x >> _u32(16))
    x = x * _u32(0x7FEB352D)
    x = x ^ (x >> _u32(15))
    x = x * _u32(0x846CA68B)
    return x ^ (x >> _u32(16))


def _addmod(a, b, m: int):
    """``(a + b) mod m`` for ``a, b < m < 2**31``."""
    s = a + b
    return jnp.where(s >= _u32(m), s - _u32(m), s)


def balanced_ids_jax(positions, keys: BalancedKeys, table, d: int, dtype=jnp.int32):
    """Balanced group ids of global positions (``uint32`` array, each ``< N``) inside ``jit``.

    ``table`` is ``walk_table(keys)`` as a JAX ``int32`` array (or ``None`` when ``M == N``).
    Ids are ``dtype``, ``int32`` or ``uint32``, as in ``stateless_ids_jax``.
    """
    x = positions.astype(jnp.uint32)
    a, b = x // _u32(keys.v), x % _u32(keys.v)
    mods = (keys.u, keys.v)
    for r, k in enumerate(keys.round_keys):
        mod = mods[r % 2]
        f = _mix32_jax(b ^ _u32(k)) % _u32(mod)
        a, b = b, _addmod(a, f, mod)
    y = a * _u32(keys.v) + b
    if keys.m > keys.n_total:
        n = _u32(keys.n_total)
        walked = table[jnp.minimum(y - n, _u32(keys.m - keys.n_total - 1)).astype(jnp.int32)]
        y = jnp.where(y >= n, walked.astype(jnp.uint32), y)
    return _id_dtype(y % _u32(d), dtype)


def _id_dtype(ids, dtype):
    """``uint32`` ids (each ``< d < 2**31``) as ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype == np.uint32:
        return ids
    if dtype != np.int32:
        raise TypeError(f"dtype must be int32 or uint32, got {dtype}")
    return lax.convert_element_type(ids, jnp.int32)

"""Group ids: the reference's stateless hash (golden vectors) and the project's balanced scheme."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from gpart_jax import hashing

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"


def _reference_cases():
    doc = json.loads((GOLDEN / "reference_ids" / "cases.json").read_text())
    return doc["cases"]


@pytest.mark.parametrize("case", _reference_cases(), ids=lambda c: c["file"])
def test_stateless_ids_match_reference_golden(case):
    expected = np.load(GOLDEN / "reference_ids" / case["file"])
    start, numel, d, seed = int(case["start_offset"]), case["numel"], int(case["d"]), int(case["seed"])
    np.testing.assert_array_equal(gj.group_ids(start, numel, d, seed), expected)
    # Inside jit, with 64-bit values emulated by uint32 pairs (x64 is off).
    base = (start + seed + hashing.GOLDEN_GAMMA) & hashing.MASK64
    got = jax.jit(lambda local: hashing.stateless_ids_jax(local, base, d))(
        jnp.arange(numel, dtype=jnp.uint32))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_golden_cases_cover_large_offsets_and_seeds():
    cases = _reference_cases()
    assert any(int(c["start_offset"]) >= 2**33 for c in cases)
    assert any(int(c["seed"]) >= 2**63 for c in cases)


@pytest.mark.parametrize("d", [2, 3, 7, 1000, 4096, 23040, 65537, 1_000_003, 2**24 + 1, 2**31 - 1])
def test_jax_ids_equal_numpy_ids_for_many_moduli(d):
    rng = np.random.default_rng(d)
    for seed in (0, 2**64 - 1, int(rng.integers(0, 2**63)) * 2 + 1):
        start = int(rng.integers(0, 2**62))
        base = (start + seed + hashing.GOLDEN_GAMMA) & hashing.MASK64
        got = hashing.stateless_ids_jax(jnp.arange(3000, dtype=jnp.uint32), base, d)
        np.testing.assert_array_equal(np.asarray(got), gj.group_ids(start, 3000, d, seed))


def test_stateless_traced_base_equals_constant_base():
    base = (2**40 + 5 + hashing.GOLDEN_GAMMA) & hashing.MASK64
    local = jnp.arange(2000, dtype=jnp.uint32)
    traced = jax.jit(lambda hi, lo: hashing.stateless_ids_jax(local, (hi, lo), 997))(
        np.uint32(base >> 32), np.uint32(base & 0xFFFFFFFF))
    np.testing.assert_array_equal(traced, hashing.stateless_ids_jax(local, base, 997))


def test_stateless_ids_do_not_depend_on_chunking():
    whole = gj.group_ids(2**35, 5000, 777, 11)
    parts = np.concatenate([gj.group_ids(2**35 + s, 1000, 777, 11) for s in range(0, 5000, 1000)])
    np.testing.assert_array_equal(whole, parts)


def test_stateless_seed_plus_one_is_a_shift_reference_behaviour():
    # Documented weakness kept for bit-exactness: seed s + 1 is seed s shifted by one position.
    np.testing.assert_array_equal(gj.group_ids(0, 999, 50, 8)[:-1], gj.group_ids(1, 998, 50, 7))


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "3", True])
def test_group_ids_rejects_bad_seed(bad):
    with pytest.raises((ValueError, TypeError), match="seed"):
        gj.group_ids(0, 10, 5, bad)


@pytest.mark.parametrize("bad", [0, -3, 2**31])
def test_group_ids_rejects_bad_d(bad):
    with pytest.raises(ValueError, match="d must be"):
        gj.group_ids(0, 10, bad, 1)


def test_balanced_golden_vectors():
    doc = json.loads((GOLDEN / "balanced_ids.json").read_text())
    assert len(doc["cases"]) >= 5
    for case in doc["cases"]:
        start, numel, d = int(case["start_offset"]), case["numel"], case["d"]
        seed, n_total = int(case["seed"]), int(case["n_total"])
        expected = np.asarray(case["ids"])
        np.testing.assert_array_equal(
            gj.balanced_group_ids(start, numel, d, seed, n_total), expected)
        keys = hashing.BalancedKeys(n_total, seed)
        table = jnp.asarray(hashing.walk_table(keys))
        positions = jnp.asarray(np.arange(start, start + numel, dtype=np.uint32))
        got = jax.jit(lambda p, t, keys=keys, d=d: hashing.balanced_ids_jax(p, keys, t, d))(
            positions, table)
        np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("n_total", [1, 2, 3, 5, 17, 100, 1000, 12_345, 99_991])
def test_balanced_is_a_permutation(n_total):
    keys = hashing.BalancedKeys(n_total, 5)
    perm = hashing.balanced_permutation_np(0, n_total, keys)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n_total))


@pytest.mark.parametrize("n_total,d", [(1000, 7), (12_345, 100), (99_991, 99_991), (5000, 1)])
def test_balanced_sizes_are_floor_or_ceil_in_closed_form(n_total, d):
    for seed in (0, 1, 2**64 - 1):
        ids = gj.balanced_group_ids(0, n_total, d, seed, n_total)
        counts = np.bincount(ids, minlength=d)
        np.testing.assert_array_equal(counts, gj.balanced_group_sizes(n_total, d))
        assert counts.max() - counts.min() <= 1
        assert counts.min() == n_total // d


def test_balanced_seeds_give_unrelated_partitions():
    n_total, d = 50_000, 100
    a = gj.balanced_group_ids(0, n_total, d, 7, n_total)
    for other in (8, 7 + 2**32):
        b = gj.balanced_group_ids(0, n_total, d, other, n_total)
        # Same group for a position by chance: 1/d. A shift or near-copy would be far above.
        assert abs(np.mean(a == b) - 1 / d) < 0.004
        # Nor is b a shift of a (the stateless weakness).
        assert np.mean(a[1:] == b[:-1]) < 2 / d


def test_balanced_positions_spread_over_groups_uniformly():
    # Consecutive positions (one leaf) should not cluster in a few groups.
    n_total, d = 200_000, 64
    ids = gj.balanced_group_ids(0, 6400, d, 3, n_total)
    counts = np.bincount(ids, minlength=d)
    chi2 = np.sum((counts - 100) ** 2 / 100)
    assert chi2 < 120  # 63 degrees of freedom; p < 1e-5 above this


def test_balanced_rejects_too_large_n():
    with pytest.raises(ValueError, match="stateless"):
        hashing.BalancedKeys(2**32, 0)

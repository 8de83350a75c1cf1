"""The seeded random structures of the baselines: definitions, golden vectors, statistics."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpart_jax.hashing import GOLDEN_GAMMA, MASK64, splitmix64_int
from gpart_jax.methods import Fastfood, UniLoRA, VeRA, seeded
from gpart_jax.methods.fastfood import fastfood_blocks
from gpart_jax.methods.vera import vera_matrices

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "method_random.json").read_text())


def golden_shapes():
    sds = jax.ShapeDtypeStruct
    return {"params": {f"layer_{i}": {"query": {"kernel": sds((6, 5), jnp.float32)},
                                      "value": {"kernel": sds((6, 4), jnp.float32)}}
                       for i in range(2)}}


def test_words_are_splitmix64_outputs_from_the_stream_key():
    seed, stream = 2**64 - 5, seeded.FASTFOOD_PERM + 7
    key = splitmix64_int((splitmix64_int((seed + GOLDEN_GAMMA) & MASK64) + stream + GOLDEN_GAMMA) & MASK64)
    assert seeded.stream_key(seed, stream) == key
    expected = [splitmix64_int((key + (i + 1) * GOLDEN_GAMMA) & MASK64) for i in range(50)]
    assert [int(w) for w in seeded.words(seed, stream, 50)] == expected
    # Entry i does not depend on the entries before it.
    assert [int(w) for w in seeded.words(seed, stream, 5, start=45)] == expected[45:]


def test_draws_follow_their_definitions():
    seed, stream, n = 9, 3, 500
    z = [int(w) for w in seeded.words(seed, stream, 2 * n)]
    np.testing.assert_array_equal(seeded.uniform(seed, stream, n),
                                  np.array([(w >> 40) / 2**24 for w in z[:n]], np.float32))
    np.testing.assert_array_equal(seeded.signs(seed, stream, n),
                                  np.array([1.0 if w >> 63 == 0 else -1.0 for w in z[:n]], np.float32))
    u = np.array([((w >> 11) + 1) / 2**53 for w in z[0::2]])
    v = np.array([(w >> 11) / 2**53 for w in z[1::2]])
    np.testing.assert_array_equal(seeded.gaussian(seed, stream, n),
                                  (np.sqrt(-2 * np.log(u)) * np.cos(2 * np.pi * v)).astype(np.float32))
    perm = seeded.permutation(seed, stream, n)
    assert sorted(perm.tolist()) == list(range(n))
    assert [z[i] for i in perm] == sorted(z[:n])


def test_golden_streams():
    for case in GOLDEN["streams"]:
        seed, stream = int(case["seed"]), int(case["stream"])
        assert [str(int(w)) for w in seeded.words(seed, stream, 8)] == case["words"]
        np.testing.assert_array_equal(seeded.uniform(seed, stream, 16), np.float32(case["uniform"]))
        np.testing.assert_array_equal(seeded.signs(seed, stream, 16), np.float32(case["signs"]))
        # float64 log/cos from the platform's libm, rounded to float32: allow one ulp.
        np.testing.assert_array_max_ulp(seeded.gaussian(seed, stream, 16), np.float32(case["gaussian"]),
                                        maxulp=1)
        assert seeded.permutation(seed, stream, 20).tolist() == case["permutation"]


def test_golden_vera_matrices():
    g = GOLDEN["vera"]
    a, b = vera_matrices(g["seed"], g["r"], g["n_max"], g["m_max"])
    np.testing.assert_array_max_ulp(a.reshape(-1), np.float32(g["A"]), maxulp=0)
    np.testing.assert_array_max_ulp(b.reshape(-1), np.float32(g["B"]), maxulp=0)
    # The method uses exactly these matrices.
    method = VeRA.create(golden_shapes(), r=g["r"], seed=g["seed"])
    assert method.A.shape == (4, 6) and method.B.shape == (5, 4)
    np.testing.assert_array_equal(method.A, a)
    np.testing.assert_array_equal(method.B, b)


def test_golden_fastfood_blocks_and_projection():
    g = GOLDEN["fastfood_blocks"]
    signs, perm, gauss = fastfood_blocks(g["seed"], g["num_blocks"], g["block_size"])
    np.testing.assert_array_equal(signs.reshape(-1), np.float32(g["signs"]))
    assert perm.reshape(-1).tolist() == g["perm"]
    np.testing.assert_array_max_ulp(gauss.reshape(-1), np.float32(g["gauss"]), maxulp=1)
    g = GOLDEN["fastfood_projection"]
    ff = Fastfood.create(golden_shapes(), d=g["d"], seed=g["seed"])
    np.testing.assert_allclose(ff.project(jnp.float32(g["theta"])), np.float32(g["p_theta"]),
                               rtol=1e-5, atol=1e-7)


def test_golden_unilora_partition():
    g = GOLDEN["unilora_partition"]
    uni = UniLoRA.create(golden_shapes(), d=g["d"], r=g["r"], seed=g["seed"])
    assert [e.path for e in uni.gpart.layout] == g["layout"]
    assert uni.gpart.global_group_ids().tolist() == g["ids"]


def test_distributions():
    n = 200_000
    u = seeded.uniform(1, 2, n).astype(np.float64)
    assert u.min() >= 0 and u.max() < 1
    np.testing.assert_allclose(np.histogram(u, bins=10, range=(0, 1))[0] / n, 0.1, atol=0.003)
    g = seeded.gaussian(1, 2, n).astype(np.float64)
    assert abs(g.mean()) < 0.01 and abs(g.var() - 1) < 0.015
    assert abs(np.mean(g**4) - 3) < 0.06  # Gaussian kurtosis
    s = seeded.signs(1, 2, n)
    assert abs(s.mean()) < 0.01
    # Streams and seeds are unrelated (words of neighbouring streams and seeds uncorrelated).
    for other in (seeded.uniform(1, 3, n), seeded.uniform(2, 2, n)):
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.01
    # Permutations: every position equally likely to receive element 0 across seeds.
    where = np.array([np.argmax(seeded.permutation(s, 0, 8) == 0) for s in range(4000)])
    np.testing.assert_allclose(np.bincount(where, minlength=8) / 4000, 1 / 8, atol=0.025)


def test_no_library_rng_for_seeded_structures(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a library RNG was used for a seeded structure")

    for name in ("default_rng", "permutation", "normal", "uniform", "randint", "rand", "randn",
                 "random", "shuffle", "choice", "seed", "RandomState"):
        monkeypatch.setattr(np.random, name, refuse)
    for name in ("normal", "uniform", "permutation", "bernoulli", "randint", "key", "PRNGKey", "split"):
        monkeypatch.setattr(jax.random, name, refuse)
    VeRA.create(golden_shapes(), r=3, seed=1)
    Fastfood.create(golden_shapes(), d=5, seed=1)
    UniLoRA.create(golden_shapes(), d=7, r=2, seed=1)


def test_seed_changes_every_structure():
    a0, b0 = vera_matrices(0, 4, 6, 5)
    a1, b1 = vera_matrices(1, 4, 6, 5)
    assert not np.allclose(a0, a1) and not np.allclose(b0, b1)
    s0, p0, g0 = fastfood_blocks(0, 2, 16)
    s1, p1, g1 = fastfood_blocks(1, 2, 16)
    assert not np.array_equal(s0, s1) and not np.array_equal(p0, p1) and not np.allclose(g0, g1)
    # Blocks of one seed differ from each other.
    assert not np.array_equal(p0[0], p0[1]) and not np.allclose(g0[0], g0[1])


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "3", True])
def test_bad_seed(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        seeded.uniform(bad, 0, 3)

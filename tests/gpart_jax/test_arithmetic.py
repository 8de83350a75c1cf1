"""Adapter arithmetic in GPart coordinates, against dense float64 computations on delta w."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from tests.gpart_jax.tiny_model import tiny_setup

KERNELS = ("layer_0/kernel", "layer_1/kernel", "classifier/kernel")


@pytest.fixture(scope="module")
def base():
    return tiny_setup()[3]


def gpart(base, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty groups of the stateless scheme
        return gj.GPart.create(base, targets=KERNELS, **options)


def flat_delta(gp, theta):
    return np.concatenate([np.asarray(d, np.float64).ravel() for d in gp.deltas(theta)])


def normals(n, d, seed):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=d), jnp.float32) for _ in range(n)]


@pytest.mark.parametrize("isometric", [True, False])
def test_inner_distance_norm_cosine_equal_those_of_dense_delta_w(base, isometric):
    gp = gpart(base, d=50, isometric=isometric)
    ta, tb = normals(2, 50, 1)
    da, db = flat_delta(gp, ta), flat_delta(gp, tb)
    np.testing.assert_allclose(gj.inner(gp, ta, tb), da @ db, rtol=1e-5)
    np.testing.assert_allclose(gj.norm(gp, ta), np.linalg.norm(da), rtol=1e-5)
    np.testing.assert_allclose(gj.distance(gp, ta, tb), np.linalg.norm(da - db), rtol=1e-5)
    np.testing.assert_allclose(gj.cosine(gp, ta, tb), da @ db / np.linalg.norm(da) / np.linalg.norm(db),
                               rtol=1e-5, atol=1e-6)
    plain = float(np.dot(np.asarray(ta, np.float64), np.asarray(tb, np.float64)))
    if isometric:  # the plain dot product of the thetas (no group is empty here)
        assert gp.num_empty_groups == 0
        np.testing.assert_allclose(gj.inner(gp, ta, tb), plain, rtol=1e-5)
    else:  # weighted by the group sizes
        assert abs(gj.inner(gp, ta, tb) - plain) > 1e-3 * abs(plain)


def test_empty_groups_do_not_count(base):
    gp = gpart(base, d=400, seed=3)  # N = 464: many empty groups
    assert gp.num_empty_groups > 0
    ta, tb = normals(2, 400, 2)
    np.testing.assert_allclose(gj.inner(gp, ta, tb), flat_delta(gp, ta) @ flat_delta(gp, tb), rtol=1e-5)


def test_linear_combination_is_the_combination_of_updates(base):
    gp = gpart(base, d=30, scheme="balanced")
    thetas = normals(3, 30, 2)
    weights = [0.5, -1.0, 2.0]
    combined = gj.combine(thetas, weights)
    expected = sum(w * flat_delta(gp, t) for w, t in zip(weights, thetas, strict=True))
    np.testing.assert_allclose(flat_delta(gp, combined), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="as many weights as thetas"):
        gj.combine(thetas, [1.0])
    with pytest.raises(ValueError, match="as many weights as thetas"):
        gj.combine([], [])
    with pytest.raises(ValueError, match="different shapes"):
        gj.combine([thetas[0], jnp.ones(29)], [1.0, 1.0])


def update_vector(gp, update):
    leaves = dict(jax.tree_util.tree_flatten_with_path(update)[0])
    by_path = {"/".join(k.key for k in kp): v for kp, v in leaves.items()}
    return np.concatenate([np.asarray(by_path[e.path], np.float64).ravel() for e in gp.layout])


@pytest.mark.parametrize("isometric", [True, False])
def test_projection_is_least_squares_with_the_captured_fraction(base, isometric):
    gp = gpart(base, d=60, isometric=isometric)
    rng = np.random.default_rng(3)
    update = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32), base)
    theta, captured = gj.project(gp, update)
    p, u = gp.dense_projection(), update_vector(gp, update)
    best, *_ = np.linalg.lstsq(p, u, rcond=None)
    np.testing.assert_allclose(np.asarray(theta), best, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(captured, np.sum((p @ best) ** 2) / np.sum(u**2), rtol=1e-4)
    assert 0 < captured < 1
    # an update inside the subspace is captured whole
    inside = gp.apply(theta, jax.tree_util.tree_map(jnp.zeros_like, base))
    theta2, captured2 = gj.project(gp, inside)
    np.testing.assert_allclose(theta2, theta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(captured2, 1.0, rtol=1e-5)
    # a zero update captures nothing, and a pytree without the adapted leaves is refused
    zero, none = gj.project(gp, jax.tree_util.tree_map(jnp.zeros_like, base))
    assert none == 0.0 and not np.any(np.asarray(zero))
    with pytest.raises(gj.LayoutMismatchError, match="params/classifier/kernel: missing"):
        gj.project(gp, {"params": {k: v for k, v in base["params"].items() if k != "classifier"}})


def test_refuses_adapters_on_different_partitions(base):
    a = gpart(base, d=30, seed=1)
    t = jnp.ones(30, jnp.float32)
    for other, why in ((gpart(base, d=30, seed=2), "seeds differ"),
                       (gpart(base, d=31, seed=1), "fingerprints"),
                       (gpart(base, d=30, seed=1, isometric=False), "isometric differs")):
        for fn in (gj.inner, gj.distance, gj.cosine):
            with pytest.raises(gj.IncompatibleAdaptersError, match=why):
                fn(a, t, t, gp_b=other)
    same = gpart(base, d=30, seed=1)  # an equal plan built again is compatible
    assert gj.distance(a, t, t, gp_b=same) == 0.0


def test_bad_thetas(base):
    gp = gpart(base, d=30)
    t = jnp.ones(30, jnp.float32)
    with pytest.raises(ValueError, match=r"theta_a must have shape \(30,\)"):
        gj.inner(gp, jnp.ones(29), t)
    with pytest.raises(TypeError, match="theta_b must be float32"):
        gj.distance(gp, t, jnp.ones(30, jnp.int32))
    with pytest.raises(ValueError, match="cosine of a zero update"):
        gj.cosine(gp, jnp.zeros(30), t)

"""merge/unmerge, and adapter arithmetic against dense float64 computations on delta w."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from gpart_jax import arithmetic as A
from gpart_jax import trainable as T
from gpart_jax.merge import merge, unmerge
from gpart_jax.methods import GPartMethod
from tests.test_training import tiny_setup


def flat_delta(gp, theta):
    return np.concatenate([np.asarray(d, np.float64).ravel() for d in gp.deltas(theta)])


def test_merge_equals_reparam_outputs_and_unmerge_restores_base():
    model, x, _, base = tiny_setup()
    method = GPartMethod.create(base, d=40, targets="all-linear")
    trainable = T.init_trainable(method, base, ("classifier",))
    rng = np.random.default_rng(0)
    trainable = jax.tree_util.tree_map(
        lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32), trainable)
    merged = merge(method, trainable, base)
    jax.tree_util.tree_map(lambda m, b: np.testing.assert_equal(m.dtype, b.dtype), merged, base)
    out_merged = model.apply(merged, x)
    out_reparam = model.apply(T.full_params(method, trainable, base), x)
    np.testing.assert_allclose(out_merged, out_reparam, rtol=1e-6, atol=1e-6)
    restored = unmerge(method, trainable, merged)
    for path in method.target_paths:
        a = restored
        b = base
        for k in path.split("/"):
            a, b = a[k], b[k]
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name,options", [("lora", {"r": 2}), ("vera", {"r": 8}),
                                          ("fastfood", {"d": 16}), ("unilora", {"d": 16, "r": 2})])
def test_merge_unmerge_for_other_additive_methods(name, options):
    from gpart_jax import methods as M

    model, x, _, base = tiny_setup()
    method = M.build(name, base, targets="all-linear", **options)
    adapter = jax.tree_util.tree_map(lambda v: v + 0.05, method.init(jax.random.key(0)))
    trainable = {"adapter": adapter, "saved": {}}
    merged = merge(method, trainable, base)
    np.testing.assert_allclose(model.apply(merged, x),
                               model.apply(T.full_params(method, trainable, base), x), atol=1e-5)
    restored = unmerge(method, trainable, merged)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), restored, base)


def test_unmerge_refuses_full_fine_tuning():
    from gpart_jax import methods as M

    _, _, _, base = tiny_setup()
    method = M.build("full", base)
    trainable = {"adapter": method.init(), "saved": {}}
    with pytest.raises(ValueError, match="cannot be recovered"):
        unmerge(method, trainable, merge(method, trainable, base))


def test_merge_keeps_float32_or_base_dtype():
    _, _, _, base = tiny_setup()
    base16 = jax.tree_util.tree_map(lambda v: v.astype(jnp.bfloat16), base)
    gp = gj.GPart.create(base16, d=8, targets="all-linear")
    trainable = {"adapter": jnp.ones(8, jnp.float32), "saved": {}}
    assert merge(gp, trainable, base16)["params"]["layer_0"]["kernel"].dtype == jnp.bfloat16
    assert merge(gp, trainable, base16, dtype="float32")["params"]["layer_0"]["kernel"].dtype == \
        jnp.float32


@pytest.mark.parametrize("isometric", [True, False])
def test_distance_inner_cosine_from_theta_equal_dense_delta_w(isometric):
    _, _, _, base = tiny_setup()
    gp = gj.GPart.create(base, d=50, targets="all-linear", isometric=isometric, warn_empty=False)
    rng = np.random.default_rng(1)
    ta, tb = (jnp.asarray(rng.normal(size=50), jnp.float32) for _ in range(2))
    da, db = flat_delta(gp, ta), flat_delta(gp, tb)
    np.testing.assert_allclose(A.inner(gp, ta, tb), da @ db, rtol=1e-5)
    np.testing.assert_allclose(A.distance(gp, ta, tb), np.linalg.norm(da - db), rtol=1e-5)
    np.testing.assert_allclose(A.cosine(gp, ta, tb),
                               da @ db / np.linalg.norm(da) / np.linalg.norm(db), rtol=1e-5, atol=1e-6)
    if isometric:  # the plain dot product of the thetas
        np.testing.assert_allclose(A.inner(gp, ta, tb), float(np.dot(ta, tb)), rtol=1e-5)


def test_linear_combination_is_combination_of_updates():
    _, _, _, base = tiny_setup()
    gp = gj.GPart.create(base, d=30, targets="all-linear", scheme="balanced")
    rng = np.random.default_rng(2)
    thetas = [jnp.asarray(rng.normal(size=30), jnp.float32) for _ in range(3)]
    weights = [0.5, -1.0, 2.0]
    combined = A.combine(thetas, weights)
    expected = sum(w * flat_delta(gp, t) for w, t in zip(weights, thetas, strict=True))
    np.testing.assert_allclose(flat_delta(gp, combined), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isometric", [True, False])
def test_projection_is_least_squares_with_captured_fraction(isometric):
    _, _, _, base = tiny_setup()
    gp = gj.GPart.create(base, d=60, targets="all-linear", isometric=isometric, warn_empty=False)
    rng = np.random.default_rng(3)
    update = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32), base)
    theta, captured = A.project(gp, update)
    p = gp.dense_projection()
    u = np.concatenate([np.asarray(update["params"][e.path.split("/")[1]]["kernel"], np.float64).ravel()
                        for e in gp.layout])
    best, *_ = np.linalg.lstsq(p, u, rcond=None)
    np.testing.assert_allclose(np.asarray(theta), best, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(captured, np.sum((p @ best) ** 2) / np.sum(u**2), rtol=1e-4)
    assert 0 < captured < 1
    # An update inside the subspace is captured whole.
    inside = {"params": {k: {"kernel": v} for k, v in zip(
        [e.path.split("/")[1] for e in gp.layout], gp.deltas(theta), strict=True)}}
    theta2, captured2 = A.project(gp, inside)
    np.testing.assert_allclose(theta2, theta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(captured2, 1.0, rtol=1e-5)


def test_refuses_adapters_on_different_partitions():
    _, _, _, base = tiny_setup()
    a = gj.GPart.create(base, d=30, seed=1, targets="all-linear")
    t = jnp.ones(30, jnp.float32)
    for other, why in ((gj.GPart.create(base, d=30, seed=2, targets="all-linear"), "seeds differ"),
                       (gj.GPart.create(base, d=31, seed=1, targets="all-linear"), "fingerprints"),
                       (gj.GPart.create(base, d=30, seed=1, targets="all-linear", isometric=False),
                        "isometric differs")):
        with pytest.raises(A.IncompatibleAdaptersError, match=why):
            A.distance(a, t, t, gp_b=other)
    with pytest.raises(ValueError, match=r"theta_a must have shape \(30,\)"):
        A.inner(a, jnp.ones(29), t)

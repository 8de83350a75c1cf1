"""Properties of GPart for random shapes, budgets, seeds and both schemes: isometry
``||P theta|| = ||theta||``, linearity of ``theta -> w - w0`` and ``grad_theta = P^T grad_w``.

Every example is a new partition, hence a new compilation: the examples are few and small."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gpart_jax as gj

SETTINGS = settings(max_examples=20, deadline=None, database=None)


@st.composite
def gparts(draw):
    """``(gpart, zero params)``: one or two leaves of rank 1 to 3, ``1 <= d <= N``, any seed,
    either scheme, ids recomputed or materialized."""
    shapes = draw(st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
                           min_size=1, max_size=2))
    params = {f"leaf_{i}": {"kernel": jnp.zeros(s, jnp.float32)} for i, s in enumerate(shapes)}
    n = sum(int(np.prod(s)) for s in shapes)
    options = dict(d=draw(st.integers(1, n)), seed=draw(st.integers(0, 2**64 - 1)),
                   scheme=draw(st.sampled_from(["stateless", "balanced"])),
                   materialize=draw(st.booleans()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty groups (stateless, d close to N) are expected
        return gj.GPart.create(params, targets="kernel", **options), params


def flat(tree):
    """The leaves of ``tree`` (the test params' structure) in the layout's (natural) order."""
    return np.concatenate([np.asarray(tree[f"leaf_{i}"]["kernel"], np.float64).ravel()
                           for i in range(len(tree))])


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def apply_all(gp, thetas, base):
    """``gp.apply`` for each row of ``thetas``, as a list of flat float64 vectors."""
    out = jax.jit(jax.vmap(gp.apply, in_axes=(0, None)))(thetas, base)
    return [flat(jax.tree_util.tree_map(lambda a, k=k: a[k], out)) for k in range(len(thetas))]


@SETTINGS
@given(problem=gparts(), data_seed=st.integers(0, 2**32 - 1))
def test_isometry(problem, data_seed):
    """``||P theta|| = ||theta||`` for theta on the used groups (an empty group's entry moves
    nothing): the distance between two thetas is the distance between their weights."""
    gp, zeros = problem
    used = jnp.asarray(gp.group_sizes > 0, jnp.float32)
    t = normal(data_seed, (2, gp.d)) * used
    w1, w2 = apply_all(gp, t, zeros)
    t1, t2 = np.asarray(t, np.float64)
    np.testing.assert_allclose(np.linalg.norm(w1), np.linalg.norm(t1), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(w1 - w2), np.linalg.norm(t1 - t2), rtol=1e-5)
    if gp.scheme == "balanced":
        assert gp.num_empty_groups == 0


@SETTINGS
@given(problem=gparts(), data_seed=st.integers(0, 2**32 - 1), a=st.floats(-3, 3),
       b=st.floats(-3, 3))
def test_linearity(problem, data_seed, a, b):
    """``apply(a t1 + b t2) - w0 = a (apply(t1) - w0) + b (apply(t2) - w0)`` on a random base."""
    gp, zeros = problem
    base = jax.tree_util.tree_map(lambda x: normal(data_seed + 1, x.shape), zeros)
    t1, t2 = normal(data_seed, (2, gp.d))
    w0 = flat(base)
    d1, d2, d12 = (w - w0 for w in apply_all(gp, jnp.stack([t1, t2, a * t1 + b * t2]), base))
    np.testing.assert_allclose(d12, a * d1 + b * d2, rtol=1e-4, atol=1e-5 * (1 + abs(a) + abs(b)))


@SETTINGS
@given(problem=gparts(), data_seed=st.integers(0, 2**32 - 1))
def test_gradient_is_p_transpose_grad_w(problem, data_seed):
    """The custom VJP: ``grad_theta = P^T grad_w`` against the dense ``P`` in float64."""
    gp, zeros = problem
    theta = normal(data_seed, (gp.d,))
    grad_w = jax.tree_util.tree_map(lambda x: normal(data_seed + 1, x.shape), zeros)

    @jax.jit
    def pullback(theta, grad_w):  # the VJP of apply at theta, applied to the cotangent grad_w
        return jax.vjp(lambda t: gp.apply(t, zeros), theta)[1](grad_w)[0]

    grad = np.asarray(pullback(theta, grad_w), np.float64)
    np.testing.assert_allclose(grad, gp.dense_projection().T @ flat(grad_w), rtol=1e-5, atol=1e-5)

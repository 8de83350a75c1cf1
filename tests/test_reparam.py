"""reparam against dense float64 references: isometry, gradients, vmap, dtypes, dropout, errors."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals
from jax.ad_checkpoint import print_saved_residuals

import gpart_jax as gj

CONFIGS = [  # (scheme, scope, materialize, element_order, bias)
    ("stateless", "global", False, "native", False),
    ("stateless", "global", True, "torch", True),
    ("balanced", "global", False, "torch", False),
    ("balanced", "global", True, "native", True),
    ("stateless", "transformer_block", False, "torch", True),
    ("balanced", "transformer_block", False, "native", False),
]


def small_params(n_layers=3, seed=0):
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    return {"params": {
        "embed": arr(11, 6),
        **{f"layer_{i}": {"query": {"kernel": arr(6, 5), "bias": arr(5)},
                          "value": {"kernel": arr(6, 4), "bias": arr(4)},
                          "mlp": {"kernel": arr(5, 6)}} for i in range(n_layers)},
        "head": {"kernel": arr(6, 2)},
    }}


def get(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def flat_global(gp, tree):
    """Adapted leaves of ``tree`` concatenated in the layout's global order (float64)."""
    out = []
    for e in gp.layout:
        x = np.asarray(get(tree, e.path), np.float64)
        out.append((x.T if e.element_order == "torch" else x).reshape(-1))
    return np.concatenate(out)


def make(config, d=17, params=None, **kw):
    scheme, scope, materialize, order, bias = config
    return gj.GPart.create(params if params is not None else small_params(), d=d, seed=5,
                           targets=("query/kernel", "value/kernel", "mlp/kernel"), scheme=scheme,
                           scope=scope, materialize=materialize, element_order=order, bias=bias,
                           warn_empty=False, **kw)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_projection_is_isometric_and_reparam_is_w0_plus_p_theta(config):
    params = small_params()
    gp = make(config, params=params)
    p = gp.dense_projection()
    assert gp.num_empty_groups == 0
    np.testing.assert_allclose(p.T @ p, np.eye(gp.d), atol=1e-6)
    rng = np.random.default_rng(1)
    t1, t2 = rng.normal(size=(2, gp.d)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(p @ (t1 - t2)), np.linalg.norm(t1 - t2), rtol=1e-6)
    out = jax.jit(gp.reparam)(jnp.asarray(t1), params)
    expected = flat_global(gp, params) + p @ t1.astype(np.float64)
    np.testing.assert_allclose(flat_global(gp, out), expected, atol=1e-6)
    # Leaves outside the layout come back untouched (the same arrays).
    assert out["params"]["head"]["kernel"] is params["params"]["head"]["kernel"] or np.array_equal(
        out["params"]["head"]["kernel"], params["params"]["head"]["kernel"])
    np.testing.assert_array_equal(out["params"]["embed"], params["params"]["embed"])


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_gradient_is_p_transpose_grad_w_under_jit(config):
    params = small_params()
    gp = make(config, params=params)
    p = gp.dense_projection()
    theta = jnp.asarray(np.random.default_rng(2).normal(size=gp.d), jnp.float32)

    def loss(theta):
        full = gp.reparam(theta, params)
        return sum(jnp.sum(jnp.sin(x) * x) for x in jax.tree_util.tree_leaves(full))

    grad = jax.jit(jax.grad(loss))(theta)
    w = flat_global(gp, params) + p @ np.asarray(theta, np.float64)
    grad_w = np.cos(w) * w + np.sin(w)
    np.testing.assert_allclose(np.asarray(grad), p.T @ grad_w, rtol=1e-5, atol=1e-5)


def test_empty_groups_identity_on_used_groups():
    params = {"w": {"kernel": jnp.zeros((4, 5))}}
    with pytest.warns(UserWarning, match="groups are empty"):
        gp = gj.GPart.create(params, d=20, seed=0, targets=("kernel",))
    assert gp.num_empty_groups == int(np.sum(gp.group_sizes == 0)) > 0
    p = gp.dense_projection()
    used = gp.group_sizes > 0
    np.testing.assert_allclose((p.T @ p)[np.ix_(used, used)], np.eye(used.sum()), atol=1e-6)
    assert np.all(p[:, ~used] == 0)
    np.testing.assert_array_equal(np.asarray(gp.scales)[~used], 1.0)  # clamped n_j = 1


@pytest.mark.parametrize("scheme", ["stateless", "balanced"])
def test_non_isometric_gram_is_diag_group_sizes(scheme):
    gp = make((scheme, "global", False, "native", False), isometric=False)
    p = gp.dense_projection()
    np.testing.assert_allclose(p.T @ p, np.diag(gp.group_sizes.astype(np.float64)))
    np.testing.assert_array_equal(np.asarray(gp.scales), 1.0)


@pytest.mark.parametrize("isometric", [True, False])
def test_l2_identity(isometric):
    params = small_params()
    gp = make(("balanced", "global", False, "native", False), params=params, isometric=isometric)
    theta = jnp.asarray(np.random.default_rng(3).normal(size=gp.d), jnp.float32)
    delta = np.concatenate([np.asarray(x, np.float64).ravel() for x in gp.deltas(theta)])
    t = np.asarray(theta, np.float64)
    lam = 0.1
    if isometric:
        np.testing.assert_allclose(lam * np.sum(delta**2), lam * np.sum(t**2), rtol=1e-6)
    else:  # ||delta w||^2 = sum_j n_j theta_j^2: off by the group sizes (about N / d)
        np.testing.assert_allclose(np.sum(delta**2), np.sum(gp.group_sizes * t**2), rtol=1e-6)
        ratio = np.sum(delta**2) / np.sum(t**2)
        assert 0.5 * gp.num_adapted / gp.d < ratio < 2 * gp.num_adapted / gp.d


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_recomputed_ids_equal_materialized_ids(config):
    scheme, scope, _, order, bias = config
    a = make((scheme, scope, False, order, bias))
    b = make((scheme, scope, True, order, bias))
    np.testing.assert_array_equal(a.global_group_ids(), b.global_group_ids())
    for i in range(len(a.layout)):
        np.testing.assert_array_equal(jax.jit(lambda j=i: a._leaf_ids(j))(), b._ids[i])


def test_stateless_ids_are_the_public_group_ids():
    gp = make(("stateless", "global", False, "torch", True))
    np.testing.assert_array_equal(gp.global_group_ids(),
                                  gj.group_ids(0, gp.num_adapted, gp.d, gp.seed))


def test_balanced_ids_are_the_public_balanced_ids():
    gp = make(("balanced", "global", False, "torch", False))
    np.testing.assert_array_equal(
        gp.global_group_ids(),
        gj.balanced_group_ids(0, gp.num_adapted, gp.d, gp.seed, gp.num_adapted))
    np.testing.assert_array_equal(gp.group_sizes, gj.balanced_group_sizes(gp.num_adapted, gp.d))


def test_transformer_block_scope_follows_reference_rules():
    gp = make(("stateless", "transformer_block", False, "torch", False), d=17)
    assert [b.prefix for b in gp.blocks] == [f"params/layer_{i}" for i in range(3)]
    assert [b.d for b in gp.blocks] == [6, 6, 5]  # divmod(17, 3): the first 2 get one more
    assert [b.seed for b in gp.blocks] == [5, 6, 7]
    assert [b.theta_offset for b in gp.blocks] == [0, 6, 12]
    ids = gp.global_group_ids()
    start = 0
    for b in gp.blocks:  # positions restart at 0 in each block, seeded seed + k
        np.testing.assert_array_equal(ids[start:start + b.num_positions] - b.theta_offset,
                                      gj.group_ids(0, b.num_positions, b.d, b.seed))
        start += b.num_positions


def test_transformer_block_scope_needs_blocks():
    with pytest.raises(ValueError, match="in no transformer block"):
        gj.GPart.create(small_params(), d=4, targets=("kernel",), scope="transformer_block")


@pytest.mark.parametrize("config", CONFIGS[:3], ids=str)
def test_vmap_over_thetas_equals_loop(config):
    params = small_params()
    gp = make(config, params=params)
    thetas = jnp.asarray(np.random.default_rng(4).normal(size=(3, gp.d)), jnp.float32)
    batched = jax.jit(jax.vmap(gp.reparam, in_axes=(0, None)))(thetas, params)

    def loss(theta):
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(gp.reparam(theta, params)))

    batched_grads = jax.jit(jax.vmap(jax.grad(loss)))(thetas)
    single_reparam, single_grad = jax.jit(gp.reparam), jax.jit(jax.grad(loss))
    for k in range(3):
        single = single_reparam(thetas[k], params)
        jax.tree_util.tree_map(lambda b, s, k=k: np.testing.assert_allclose(b[k], s, atol=1e-6),
                               batched, single)
        np.testing.assert_allclose(batched_grads[k], single_grad(thetas[k]), atol=1e-5)


def test_backward_keeps_no_n_sized_residual():
    big = {"a": {"kernel": jnp.ones((300, 200))}, "b": {"kernel": jnp.ones((200, 300))}}
    for materialize in (False, True):
        gp = gj.GPart.create(big, d=64, targets=("kernel",), materialize=materialize)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            print_saved_residuals(gp.deltas, gp.init_theta())
        text = buf.getvalue()
        assert "f32[64]" in text, text  # the scales
        residuals = saved_residuals(gp.deltas, gp.init_theta())
        big_ones = [(aval, why) for aval, why in residuals if np.prod(aval.shape) > gp.d]
        if materialize:  # only the stored ids themselves, nothing computed in the forward
            assert len(big_ones) == 2 and all("constant" in why for _, why in big_ones), text
        else:
            assert not big_ones, text


def test_bf16_base_lean_and_exact():
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), small_params())
    exact = gj.GPart.create(params, d=9, targets=("kernel",), adapted_dtype="float32")
    lean = gj.GPart.create(params, d=9, targets=("kernel",), adapted_dtype="base")
    theta = jnp.full((9,), 1e-3, jnp.float32)
    out_exact, out_lean = exact.reparam(theta, params), lean.reparam(theta, params)
    path = exact.layout[0].path
    w0 = np.asarray(get(params, path), np.float32)
    assert get(out_exact, path).dtype == jnp.float32 and get(out_lean, path).dtype == jnp.bfloat16
    delta = np.asarray(exact.deltas(theta)[0])
    np.testing.assert_allclose(np.asarray(get(out_exact, path)) - w0, delta, rtol=1e-3, atol=1e-7)
    # bf16 rounding loses most of a delta of ~5e-4 on weights of order 1.
    lost = np.abs(np.asarray(get(out_lean, path), np.float32) - w0 - delta).mean()
    assert lost > 0.3 * np.abs(delta).mean()


def test_dropout_on_kernel_deltas_only():
    params = small_params()
    gp = make(("stateless", "global", False, "native", True), params=params)
    theta = jnp.ones((gp.d,), jnp.float32)
    key = jax.random.key(0)
    a = gp.reparam(theta, params, dropout=0.5, key=key)
    b = gp.reparam(theta, params, dropout=0.5, key=key)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)  # deterministic given the key
    deltas = gp.deltas(theta)
    for e, delta in zip(gp.layout, deltas, strict=True):
        got = np.asarray(get(a, e.path)) - np.asarray(get(params, e.path))
        if e.is_bias:
            np.testing.assert_allclose(got, delta, atol=1e-6)
        else:
            kept = np.abs(got) > 1e-7
            np.testing.assert_allclose(got[kept], 2 * np.asarray(delta)[kept], rtol=1e-5)
            assert 0 < kept.mean() < 1
    no_drop = gp.reparam(theta, params, dropout=0.0, key=key)
    jax.tree_util.tree_map(np.testing.assert_array_equal, no_drop, gp.reparam(theta, params))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        gp.reparam(theta, params, dropout=0.1)


def test_reparam_fn_seed_rules():
    params = small_params()
    stateless = make(("stateless", "global", False, "native", False), params=params)
    theta = jnp.ones((stateless.d,), jnp.float32)
    f = stateless.reparam_fn()
    jax.tree_util.tree_map(np.testing.assert_array_equal, f(theta, 5, params),
                           stateless.reparam(theta, params))
    with pytest.raises(ValueError, match="depend on the seed"):
        f(theta, 6, params)
    balanced = make(("balanced", "global", False, "native", False), params=params)
    g = jax.jit(balanced.reparam_fn(), static_argnums=1)
    other = gj.GPart.create(params, d=balanced.d, seed=99, scheme="balanced",
                            targets=("query/kernel", "value/kernel", "mlp/kernel"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, g(theta, 99, params),
                           other.reparam(theta, params))
    assert not np.array_equal(get(g(theta, 99, params), balanced.layout[0].path),
                              get(g(theta, 5, params), balanced.layout[0].path))
    np.testing.assert_array_equal(np.asarray(balanced.with_seed(99).scales), balanced.scales)
    # The module-level functional form is the same function.
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           gj.reparam(theta, 99, params, plan=balanced), g(theta, 99, params))


def test_gpart_passes_through_jit_as_an_argument():
    params = small_params()
    gp = make(("stateless", "global", True, "native", False), params=params)
    theta = jnp.ones((gp.d,), jnp.float32)
    f = jax.jit(lambda gp, t, p: gp.reparam(t, p))
    jax.tree_util.tree_map(np.testing.assert_array_equal, f(gp, theta, params),
                           gp.reparam(theta, params))


def test_nnx_model_round_trip():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
            self.head = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            for layer in self.layers:
                x = jnp.tanh(layer(x))
            return self.head(x)

    model = Model(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    gp = gj.GPart.create(state, d=6, targets=r"layers/\d+/kernel")
    theta = jnp.asarray(np.random.default_rng(0).normal(size=6), jnp.float32)
    x = jnp.ones((3, 4))

    def forward(theta):
        return nnx.merge(graphdef, gp.reparam(theta, state))(x)

    out = jax.jit(forward)(theta)
    dense = {e.path: np.asarray(v) for e, v in zip(gp.layout, gp.deltas(theta), strict=True)}
    ref_model = nnx.merge(graphdef, state)
    for i, layer in enumerate(ref_model.layers):
        layer.kernel.set_value(layer.kernel.get_value() + dense[f"layers/{i}/kernel"])
    np.testing.assert_allclose(out, ref_model(x), atol=1e-6)
    assert jax.grad(lambda t: forward(t).sum())(theta).shape == (6,)


# ----------------------------------------------------------------------------- bad input

def test_bad_d():
    params = small_params()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="d must be"):
            gj.GPart.create(params, d=bad, targets=("kernel",))
    with pytest.raises(ValueError, match=r"d = 10000 exceeds N = \d+"):
        gj.GPart.create(params, d=10_000, targets=("kernel",))
    with pytest.raises(TypeError, match="d must be"):
        gj.GPart.create(params, d=3.0, targets=("kernel",))


@pytest.mark.parametrize("bad", [-1, 2**64, 2.0, None])
def test_bad_seed(bad):
    with pytest.raises((ValueError, TypeError), match="seed"):
        gj.GPart.create(small_params(), d=4, seed=bad, targets=("kernel",))


def test_bad_options():
    params = small_params()
    with pytest.raises(ValueError, match="scheme"):
        gj.GPart.create(params, d=4, scheme="random")
    with pytest.raises(ValueError, match="scope"):
        gj.GPart.create(params, d=4, scope="layer")
    with pytest.raises(ValueError, match="element_order"):
        gj.GPart.create(params, d=4, element_order="fortran")
    with pytest.raises(ValueError, match="adapted_dtype"):
        gj.GPart.create(params, d=4, adapted_dtype="float16")


def test_bad_theta():
    params = small_params()
    gp = make(CONFIGS[0], params=params)
    with pytest.raises(ValueError, match=r"theta must have shape \(17,\)"):
        gp.reparam(jnp.zeros((16,), jnp.float32), params)
    with pytest.raises(ValueError, match="theta must have shape"):
        gp.reparam(jnp.zeros((2, 17), jnp.float32), params)
    with pytest.raises(TypeError, match="theta must be float32.*bfloat16"):
        gp.reparam(jnp.zeros((17,), jnp.bfloat16), params)
    with pytest.raises(TypeError, match="theta must be float32"):
        gp.reparam(jnp.zeros((17,), jnp.int32), params)


def test_base_params_with_another_structure():
    params = small_params()
    gp = make(CONFIGS[0], params=params)
    theta = gp.init_theta()
    other = small_params(n_layers=2)
    with pytest.raises(ValueError, match=r"base_params.*params/layer_2/mlp/kernel: missing"):
        gp.reparam(theta, other)
    wider = jax.tree_util.tree_map(lambda x: x, params)
    wider["params"]["layer_0"]["query"]["kernel"] = jnp.ones((7, 5))
    with pytest.raises(ValueError, match=r"layer_0/query/kernel: shape \(7, 5\), expected \(6, 5\)"):
        gp.reparam(theta, wider)


def test_init_theta():
    gp = make(CONFIGS[0])
    np.testing.assert_array_equal(gp.init_theta(), 0.0)
    t = gp.init_theta(jax.random.key(0), bound=0.02)
    assert t.dtype == jnp.float32 and float(jnp.abs(t).max()) <= 0.02 and float(jnp.abs(t).min()) > 0
    with pytest.raises(ValueError, match="PRNG key"):
        gp.init_theta(bound=0.1)
    # A zero theta reproduces the base model exactly.
    params = small_params()
    gp = make(CONFIGS[0], params=params)
    out = gp.reparam(gp.init_theta(), params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out, params)

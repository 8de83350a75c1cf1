"""GPart against dense float64 references: isometry, w = w0 + P theta, grad_theta = P^T grad_w,
residuals, dropout, dtypes, seeds, specs and bad input."""

import contextlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

import gpart_jax as gj
from gpart_jax import core, layout

TARGETS = ("query/kernel", "value/kernel", "mlp/kernel")
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

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

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


def make(config, d=17, params=None, **options):
    """A GPart on ``params`` (default: two layers) with the config's options."""
    scheme, scope, materialize, order, bias = config
    entries = layout.build(params if params is not None else small_params(2), TARGETS,
                           element_order=order, bias=bias)
    return gj.GPart.from_layout(entries, d=d, seed=5, scheme=scheme, scope=scope,
                                materialize=materialize, **options)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


# --------------------------------------------------------------------------- the defining identities

@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_apply_is_w0_plus_p_theta_and_gradient_is_p_transpose_grad_w(config):
    params = small_params(2)
    gp = make(config, params=params)
    p = gp.dense_projection()
    assert p.shape == (gp.num_adapted, gp.d) and gp.num_empty_groups == 0
    np.testing.assert_allclose(p.T @ p, np.eye(gp.d), atol=1e-6)  # P^T P = I
    rng = np.random.default_rng(1)
    t1, t2 = rng.normal(size=(2, gp.d)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(p @ (t1 - t2)), np.linalg.norm(t1 - t2), rtol=1e-6)

    def loss(theta):
        full = gp.apply(theta, params)
        return sum(jnp.sum(jnp.sin(x) * x) for x in jax.tree_util.tree_leaves(full)), full

    grad, out = jax.jit(jax.grad(loss, has_aux=True))(jnp.asarray(t1))
    w = flat_global(gp, params) + p @ t1.astype(np.float64)
    np.testing.assert_allclose(flat_global(gp, out), w, atol=1e-6)
    grad_w = np.cos(w) * w + np.sin(w)
    np.testing.assert_allclose(np.asarray(grad), p.T @ grad_w, rtol=1e-5, atol=1e-5)
    # Leaves outside the layout come back unchanged.
    np.testing.assert_array_equal(out["params"]["head"]["kernel"], params["params"]["head"]["kernel"])
    np.testing.assert_array_equal(out["params"]["embed"], params["params"]["embed"])
    if not config[4]:
        np.testing.assert_array_equal(get(out, "params/layer_0/query/bias"),
                                      get(params, "params/layer_0/query/bias"))


@pytest.mark.parametrize("flat", [False, True], ids=["leaf_shaped", "flat"])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3]], ids=str)
def test_higher_derivatives_are_those_of_w0_plus_p_theta(config, flat, monkeypatch):
    """The README's claims: reverse mode at any order and forward over reverse (Hessian,
    Hessian-vector products) give ``P^T H_w P``; forward mode through ``apply`` raises. Against
    the same loss on ``w0 + P theta`` with the dense ``P`` (float64 numpy)."""
    monkeypatch.setattr(core, "_flat_indexing", lambda: flat)
    params = small_params(2)
    gp = make(config, params=params)
    p = gp.dense_projection()
    theta = jnp.asarray(np.random.default_rng(3).normal(size=gp.d), jnp.float32)
    v = jnp.asarray(np.random.default_rng(4).normal(size=gp.d), jnp.float32)

    def loss(t):  # sum of sin over the adapted leaves: its Hessian in w is diag(-sin w)
        full = gp.apply(t, params)
        return sum(jnp.sum(jnp.sin(get(full, e.path))) for e in gp.layout)

    w = flat_global(gp, params) + p @ np.asarray(theta, np.float64)
    hessian = p.T @ (-np.sin(w)[:, None] * p)
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.hessian(loss))(theta), hessian, **tol)
    np.testing.assert_allclose(jax.jit(jax.jacrev(jax.jacrev(loss)))(theta), hessian, **tol)
    hvp = jax.jit(lambda t, v: jax.jvp(jax.grad(loss), (t,), (v,))[1])(theta, v)
    np.testing.assert_allclose(hvp, hessian @ np.asarray(v, np.float64), **tol)
    for forward_mode in (lambda: jax.jvp(loss, (theta,), (v,)), lambda: jax.jacfwd(loss)(theta)):
        with pytest.raises(TypeError, match="custom_vjp"):
            forward_mode()
    _, linear = jax.linearize(loss, theta)
    with pytest.raises(TypeError, match="custom_vjp"):
        linear(v)


def test_empty_groups_warn_and_leave_the_used_groups_isometric():
    params = {"w": {"kernel": jnp.zeros((4, 5))}}
    with pytest.warns(UserWarning, match="groups are empty"):
        gp = gj.GPart.create(params, d=20, seed=0, targets="kernel")
    assert gp.num_empty_groups == int(np.sum(gp.group_sizes == 0)) > 0
    p = gp.dense_projection()
    used = gp.group_sizes > 0
    np.testing.assert_allclose((p.T @ p)[np.ix_(used, used)], np.eye(used.sum()), atol=1e-6)
    assert np.all(p[:, ~used] == 0)
    np.testing.assert_array_equal(np.asarray(gp.scales)[~used], 1.0)  # clamped n_j = 1
    # The balanced scheme never has empty groups for d <= N, and so never warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balanced = gj.GPart.create(params, d=20, targets="kernel", scheme="balanced")
    assert balanced.num_empty_groups == 0


@pytest.mark.parametrize("scheme", ["stateless", "balanced"])
def test_non_isometric_gram_is_diag_group_sizes(scheme):
    gp = make((scheme, "global", False, "native", False), isometric=False)
    assert gp.name == "gpart-noniso"
    p = gp.dense_projection()
    np.testing.assert_allclose(p.T @ p, np.diag(gp.group_sizes.astype(np.float64)))
    np.testing.assert_array_equal(np.asarray(gp.scales), 1.0)


@pytest.mark.parametrize("isometric", [True, False])
def test_weight_decay_identity(isometric):
    gp = make(("balanced", "global", False, "native", False), isometric=isometric)
    theta = jnp.asarray(np.random.default_rng(3).normal(size=gp.d), jnp.float32)
    delta = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.jit(gp.deltas)(theta)])
    t = np.asarray(theta, np.float64)
    if isometric:  # ||Delta w||^2 = ||theta||^2: decay on theta is decay on the update
        np.testing.assert_allclose(np.sum(delta**2), np.sum(t**2), rtol=1e-6)
    else:  # ||Delta w||^2 = sum_j n_j theta_j^2: off by the group sizes (about N / d)
        np.testing.assert_allclose(np.sum(delta**2), np.sum(gp.group_sizes * t**2), rtol=1e-6)
        ratio = np.sum(delta**2) / np.sum(t**2)
        assert 0.5 * gp.num_adapted / gp.d < ratio < 2 * gp.num_adapted / gp.d


# --------------------------------------------------------------------------- ids

@pytest.mark.parametrize("config", [CONFIGS[4], CONFIGS[5]], ids=str)
def test_recomputed_ids_equal_materialized_ids(config):
    scheme, scope, _, order, bias = config
    a = make((scheme, scope, False, order, bias))
    b = make((scheme, scope, True, order, bias))
    assert a.ids is None and len(b.ids) == len(b.layout)
    for entry, ids in zip(b.layout, b.ids, strict=True):
        assert ids.dtype == jnp.int32 and ids.shape == entry.shape
    np.testing.assert_array_equal(a.global_group_ids(), b.global_group_ids())


def test_stateless_ids_are_the_public_group_ids():
    gp = make(("stateless", "global", False, "torch", True))
    np.testing.assert_array_equal(gp.global_group_ids(),
                                  gj.group_ids(0, gp.num_adapted, gp.d, gp.seed))
    np.testing.assert_array_equal(gp.group_sizes,
                                  np.bincount(gp.global_group_ids(), minlength=gp.d))


def test_balanced_ids_are_the_public_balanced_ids():
    gp = make(("balanced", "global", False, "torch", False))
    np.testing.assert_array_equal(
        gp.global_group_ids(),
        gj.balanced_group_ids(0, gp.num_adapted, gp.d, gp.seed, gp.num_adapted))
    np.testing.assert_array_equal(gp.group_sizes, gj.balanced_group_sizes(gp.num_adapted, gp.d))


def test_transformer_block_scope_follows_reference_rules():
    gp = make(("stateless", "transformer_block", False, "torch", False), d=17,
              params=small_params(3))
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
    assert start == gp.num_adapted


def test_transformer_block_scope_errors():
    params = small_params()
    with pytest.raises(gj.TargetError, match="in no transformer block"):
        gj.GPart.from_layout(layout.build(params, "kernel"), d=4, scope="transformer_block")
    with pytest.raises(ValueError, match="smaller than the number of transformer blocks"):
        gj.GPart.from_layout(layout.build(params, TARGETS), d=2, scope="transformer_block")
    custom = {"stage1": {"kernel": jnp.ones((3, 3))}, "stage2": {"kernel": jnp.ones((3, 3))}}
    gp = gj.GPart.from_layout(layout.build(custom, "kernel"), d=4, scope="transformer_block",
                              layer_pattern=r"stage(\d+)")
    assert [b.prefix for b in gp.blocks] == ["stage1", "stage2"]


# --------------------------------------------------------------------------- memory, dtypes, dropout

def test_backward_keeps_no_n_sized_residual():
    big = {"a": {"kernel": jnp.ones((300, 200))}, "b": {"kernel": jnp.ones((200, 300))}}
    for materialize in (False, True):
        gp = gj.GPart.create(big, d=64, targets="kernel", materialize=materialize)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            print_saved_residuals(gp.deltas, gp.init())
        lines = buf.getvalue().splitlines()  # "f32[64] from a constant", one per residual
        shapes = [tuple(int(n) for n in re.match(r"\w+\[([\d,]*)\]", line).group(1).split(",") if n)
                  for line in lines]
        assert (64,) in shapes, lines  # the scales
        big_ones = [line for line, shape in zip(lines, shapes, strict=True) if np.prod(shape) > gp.d]
        if materialize:  # only the stored ids themselves, nothing computed in the forward
            assert len(big_ones) == 2 and all("constant" in line for line in big_ones), lines
        else:
            assert not big_ones, lines


def test_bf16_base_lean_and_exact():
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), small_params(1))
    exact = gj.GPart.create(params, d=9, targets="kernel", adapted_dtype="float32")
    lean = gj.GPart.create(params, d=9, targets="kernel", adapted_dtype="base")
    theta = jnp.full((9,), 1e-3, jnp.float32)
    out_exact, out_lean, deltas = jax.jit(
        lambda t: (exact.apply(t, params), lean.apply(t, params), exact.deltas(t)))(theta)
    path = exact.layout[0].path
    w0 = np.asarray(get(params, path), np.float32)
    assert get(out_exact, path).dtype == jnp.float32 and get(out_lean, path).dtype == jnp.bfloat16
    assert get(out_exact, "params/embed").dtype == jnp.bfloat16  # not adapted: as it was
    delta = np.asarray(deltas[0])
    np.testing.assert_allclose(np.asarray(get(out_exact, path)) - w0, delta, rtol=1e-3, atol=1e-7)
    # bf16 rounding loses most of a delta of ~5e-4 on weights of order 1.
    lost = np.abs(np.asarray(get(out_lean, path), np.float32) - w0 - delta).mean()
    assert lost > 0.3 * np.abs(delta).mean()


def test_dropout_on_kernel_deltas_only():
    params = small_params(1)
    gp = make(("stateless", "global", False, "native", True), params=params)
    theta = jnp.ones((gp.d,), jnp.float32)
    key = jax.random.key(0)

    @jax.jit
    def run(theta, key, other_key):
        return (gp.apply(theta, params, dropout=0.5, key=key),
                gp.apply(theta, params, dropout=0.5, key=other_key),
                gp.apply(theta, params, dropout=0.0, key=key), gp.deltas(theta))

    a, other, no_drop, deltas = run(theta, key, jax.random.key(1))
    assert_trees_equal(a, run(theta, key, jax.random.key(2))[0])  # deterministic given the key
    assert not np.array_equal(get(a, gp.layout[0].path), get(other, gp.layout[0].path))
    for e, delta in zip(gp.layout, deltas, strict=True):
        w0 = np.asarray(get(params, e.path))
        np.testing.assert_array_equal(get(no_drop, e.path), w0 + np.asarray(delta))
        got = np.asarray(get(a, e.path)) - w0
        if e.is_bias:  # the biases' deltas are never dropped
            np.testing.assert_allclose(got, delta, atol=1e-6)
        else:  # a kernel's survivors are scaled by 1 / (1 - 0.5)
            kept = np.abs(got) > 1e-7
            np.testing.assert_allclose(got[kept], 2 * np.asarray(delta)[kept], rtol=1e-5)
            assert 0 < kept.mean() < 1
    with pytest.raises(ValueError, match="needs a PRNG key"):
        gp.apply(theta, params, dropout=0.1)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        gp.apply(theta, params, dropout=1.0, key=key)


# ------------------------------------------------------------- the grouped gather and scatter's two forms
# With one device the ids and cotangents are indexed flattened, as views; with several, in each
# leaf's own shape, which the SPMD partitioner can split (core._flat_indexing).

def leaf_sized(hlo: str, numel: int) -> list[tuple[str, str]]:
    """``(dtype, op)`` of each instruction of the compiled entry computation that makes a new
    array of ``numel`` elements (parameters, bitcasts and tuple accesses excluded); a fusion is
    named by its root's op."""
    fused = {m.group(1): m.group(2)
             for m in re.finditer(r"\n(%[\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo, re.S)}
    out = []
    for line in hlo[hlo.index("\nENTRY"):].splitlines()[1:]:
        m = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[([\d,]*)\]\S* ([\w-]+)\(", line)
        if not m or m.group(3) in ("parameter", "bitcast", "get-tuple-element", "tuple"):
            continue
        dtype, dims, op = m.groups()
        if int(np.prod([int(x) for x in dims.split(",") if x])) != numel:
            continue
        if op == "fusion":
            body = fused[re.search(r"calls=(%[\w.\-]+)", line).group(1)]
            op = re.search(r"ROOT %[\w.\-]+ = \S+ ([\w-]+)\(", body).group(1)
        out.append((dtype, op))
    return out


def grouped_sum_step(gp, params):
    """``(w, grad_theta)`` for a given weight cotangent, as the grouped_sum benchmark times it."""
    def step(theta, params, cotangent):
        weights, vjp = jax.vjp(lambda t: gp.apply(t, params), theta)
        return weights, vjp(cotangent)[0]
    return jax.jit(step)


def check_one_device_backward(leaves=4, shape=(64, 48), d=100):
    """The one-device form's compiled forward + backward: per leaf one ids buffer (uint16 on CPU
    when d <= 0xFFFF, else uint32), written by the hash's own pass and shared by the gather and
    the scatter, and the adapted weight; no copy or converted ids. Returns the temporary bytes per
    weight."""
    params = {f"layer_{i}": {"kernel": jnp.zeros(shape)} for i in range(leaves)}
    gp = gj.GPart.create(params, d=d, targets="kernel")
    theta = jnp.zeros((gp.d,))
    compiled = grouped_sum_step(gp, params).lower(theta, params, params).compile()
    made = leaf_sized(compiled.as_text(), int(np.prod(shape)))
    ids = "u16" if core._uint16_ids(d) else "u32"
    assert sorted(made) == sorted([("f32", "add")] * leaves + [(ids, "remainder")] * leaves), made
    return compiled.memory_analysis().temp_size_in_bytes / gp.num_adapted


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_flat_and_leaf_shaped_indexing_give_the_same_bits(config, monkeypatch):
    params = small_params(2)
    gp = make(config, params=params)
    theta = jnp.asarray(np.random.default_rng(1).normal(size=gp.d), jnp.float32)
    cotangent = jax.tree_util.tree_map(lambda x: jnp.cos(x) * 3.0, params)
    got, hlo = {}, {}
    for flat in (False, True):
        monkeypatch.setattr(core, "_flat_indexing", lambda flat=flat: flat)
        step = grouped_sum_step(gp, params)  # a new function: traced again, not taken from a cache
        batched = jax.jit(jax.vmap(lambda t: gp.apply(t, params)))(jnp.stack([theta, -theta]))
        got[flat] = (*step(theta, params, cotangent), batched)
        hlo[flat] = step.lower(theta, params, cotangent).as_text()
    assert_trees_equal(got[False][:2], got[True][:2])
    # under vmap XLA may fuse w0 + theta_g s_g into one FMA in one form and not the other
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2**-23, atol=0),
                           got[False][2], got[True][2])
    assert "update_window_dims = [1]" in hlo[True] and "update_window_dims = [1]" not in hlo[False]


def test_one_device_backward_has_no_leaf_sized_copies(monkeypatch):
    monkeypatch.setattr(core, "_flat_indexing", lambda: True)
    assert check_one_device_backward() <= 2.1  # the uint16 ids, 2 bytes a weight
    # d > 0xFFFF: uint32 ids, 4 bytes a weight
    assert check_one_device_backward(shape=(128, 160), d=70_000) <= 4.1
    monkeypatch.setattr(core, "_flat_indexing", lambda: False)  # what the flat form avoids
    with pytest.raises(AssertionError, match="copy"):
        check_one_device_backward()


def test_uint16_ids_are_chosen_on_cpu_up_to_d_0xffff():
    assert jax.default_backend() == "cpu"
    assert core._uint16_ids(1) and core._uint16_ids(0xFFFF) and not core._uint16_ids(0x10000)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_uint16_and_uint32_ids_give_the_same_bits(config, monkeypatch):
    """The narrow ids index exactly as the hash's uint32 ones: weights, gradient and a vmap over
    theta are bit-identical, in both indexing forms."""
    params = small_params(2)
    gp = make(config, d=40, params=params)
    theta = jnp.asarray(np.random.default_rng(2).normal(size=gp.d), jnp.float32)
    cotangent = jax.tree_util.tree_map(lambda x: jnp.sin(x) * 2.0, params)
    for flat in (False, True):
        monkeypatch.setattr(core, "_flat_indexing", lambda flat=flat: flat)
        got = {}
        for narrow in (False, True):
            monkeypatch.setattr(core, "_uint16_ids", lambda d, narrow=narrow: narrow)
            step = grouped_sum_step(gp, params)
            batched = jax.jit(jax.vmap(lambda t: gp.apply(t, params)))(jnp.stack([theta, -theta]))
            got[narrow] = (*step(theta, params, cotangent), batched)
            hlo = step.lower(theta, params, cotangent).as_text()
            assert ("ui16" in hlo) == (narrow and not gp.materialize), (flat, narrow)
        assert_trees_equal(got[False], got[True])


def test_one_device_is_what_selects_the_flat_form():
    assert jax.device_count() == 8 and not core._flat_indexing()  # tests/conftest.py's 8 devices
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = ("import jax; from gpart_jax import core; from tests.gpart_jax import test_core as t; "
            "assert jax.device_count() == 1 and core._flat_indexing(); "
            "print(t.check_one_device_backward())")
    done = subprocess.run([sys.executable, "-c", code], cwd=pathlib.Path(__file__).parents[2],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.split()[-1]) <= 2.1


# --------------------------------------------------------------------------- init, seeds, jit

def test_init():
    params = small_params(1)
    gp = make(CONFIGS[0], params=params)
    theta = gp.init()
    assert theta.dtype == jnp.float32 and theta.shape == (17,)
    np.testing.assert_array_equal(theta, 0.0)
    assert_trees_equal(jax.jit(gp.apply)(theta, params), params)  # theta = 0: the base exactly
    bounded = make(CONFIGS[0], init_bound=0.02)
    t = bounded.init(jax.random.key(0))
    assert t.dtype == jnp.float32 and 0 < float(jnp.abs(t).min()) and float(jnp.abs(t).max()) <= 0.02
    assert not np.array_equal(t, bounded.init(jax.random.key(1)))
    with pytest.raises(ValueError, match="PRNG key"):
        bounded.init()


def test_reparam_fn_seed_rules():
    params = small_params(1)
    stateless = make(("stateless", "global", False, "native", False), params=params)
    theta = jnp.ones((stateless.d,), jnp.float32)
    f = stateless.reparam_fn()
    got, expected = jax.jit(lambda t, p: (f(t, 5, p), stateless.apply(t, p)))(theta, params)
    assert_trees_equal(got, expected)
    with pytest.raises(ValueError, match="depend on the seed"):
        f(theta, 6, params)  # refused before anything is computed
    with pytest.raises(TypeError, match="seed must be a concrete Python integer"):
        jax.jit(f)(theta, 5, params)  # a traced seed: refused while tracing
    balanced = make(("balanced", "global", False, "native", False), params=params)
    other = gj.GPart.create(params, d=balanced.d, seed=99, scheme="balanced", targets=TARGETS)
    # The function is a pytree (a Partial holding the GPart): an argument of jit like any other.
    run = jax.jit(lambda g, t, p: (g(t, 99, p), g(t, 5, p), other.apply(t, p)))
    seed_99, seed_5, expected = run(balanced.reparam_fn(), theta, params)
    assert_trees_equal(seed_99, expected)
    assert not np.array_equal(get(seed_99, balanced.layout[0].path),
                              get(seed_5, balanced.layout[0].path))
    np.testing.assert_array_equal(np.asarray(balanced.with_seed(99).scales), balanced.scales)
    assert balanced.with_seed(5) is balanced
    with pytest.raises(ValueError, match="materialized ids"):
        make(("balanced", "global", True, "native", False)).with_seed(6)


def test_gpart_passes_through_jit_as_an_argument():
    params = small_params()
    gp = make(("stateless", "global", True, "native", False), params=params)
    theta = jnp.ones((gp.d,), jnp.float32)
    leaves = jax.tree_util.tree_leaves(gp)
    assert any(x.dtype == jnp.int32 for x in leaves)  # the materialized ids are leaves
    traces = []

    @jax.jit
    def f(gp, t, p):
        traces.append(gp.plan)
        return gp.apply(t, p)

    out = f(gp, theta, params)
    for e, ids in zip(gp.layout, gp.ids, strict=True):  # w = w0 + theta_g scale_g
        expected = np.asarray(get(params, e.path)) + np.asarray(gp.scales)[np.asarray(ids)]
        np.testing.assert_allclose(get(out, e.path), expected, rtol=1e-6)
    # Equal plans compare equal (static data by value): a rebuilt GPart is not traced again.
    again = make(("stateless", "global", True, "native", False), params=params)
    assert again.plan == gp.plan and hash(again.plan) == hash(gp.plan)
    assert_trees_equal(f(again, theta, params), out)
    assert len(traces) == 1


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
    assert gp.target_paths == ("layers/0/kernel", "layers/1/kernel")
    theta = jnp.asarray(np.random.default_rng(0).normal(size=6), jnp.float32)
    x = jnp.ones((3, 4))

    def forward(theta):
        return nnx.merge(graphdef, gp.apply(theta, state))(x)

    def run(theta):
        out, pullback = jax.vjp(forward, theta)
        return out, pullback(jnp.ones_like(out))[0], gp.deltas(theta)

    out, grad, deltas = jax.jit(run)(theta)
    ref_model = nnx.merge(graphdef, state)
    for i, layer in enumerate(ref_model.layers):
        layer.kernel.set_value(layer.kernel.get_value() + deltas[i])
    np.testing.assert_allclose(out, ref_model(x), atol=1e-6)
    assert grad.shape == (6,) and np.any(grad != 0)


def test_apply_takes_array_like_base_leaves():
    """A base leaf JAX cannot type (an object with ``__jax_array__``, as lazy loaders return)
    is converted, not refused while looking for its sharding."""
    class Lazy:
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim

        def __jax_array__(self):
            return jnp.asarray(self.array)

        def __array__(self, dtype=None, copy=None):
            return self.array

    base = small_params()
    gp = gj.GPart.create(base, d=7, targets=TARGETS)
    theta = jnp.arange(7.0, dtype=jnp.float32)
    lazy = jax.tree.map(lambda a: Lazy(np.asarray(a)), base)
    for got, want in zip(jax.tree.leaves(gp.apply(theta, lazy)), jax.tree.leaves(gp.apply(theta, base)),
                         strict=True):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- spec, summary

def test_spec_round_trip():
    params = small_params(2)
    gp = make(("balanced", "transformer_block", False, "torch", True), params=params,
              init_bound=0.01)
    spec = json.loads(json.dumps(gp.spec()))
    assert spec["method"] == "gpart" and spec["seed"] == "5" and spec["fingerprint"] == gp.fingerprint
    again = gj.GPart.from_spec(spec, params)
    assert again.plan == gp.plan  # the same partition: ids are a function of the plan
    assert gj.methods.from_spec(spec, params).plan == gp.plan
    lean = gj.GPart.from_spec(spec, params, materialize=True, adapted_dtype="base")
    assert lean.materialize and lean.adapted_dtype == "base" and lean.fingerprint == gp.fingerprint
    with pytest.raises(TypeError, match="only materialize and adapted_dtype"):
        gj.GPart.from_spec(spec, params, d=3)
    with pytest.raises(gj.LayoutMismatchError, match="layer_1/query/kernel: missing"):
        gj.GPart.from_spec(spec, small_params(1))
    edited = dict(spec, d=16)
    with pytest.raises(gj.LayoutMismatchError, match="fingerprint"):
        gj.GPart.from_spec(edited, params)


def test_summary_and_repr():
    params = small_params()
    gp = gj.GPart.create(params, d=17, seed=5, targets=TARGETS)
    s = gp.summary(params)
    assert (s.method, s.trainable, s.saved, s.adapted_count) == ("gpart", 17, 0, gp.num_adapted)
    assert s.total == sum(x.size for x in jax.tree_util.tree_leaves(params))
    text = str(s)
    assert "gpart (d 17, N 252, scheme stateless, seed 5" in text
    assert "params/layer_2/mlp/kernel  (5, 6)" in text and "trainable%" in text
    assert repr(gp).startswith("GPart(d=17, N=252, seed=5, scheme='stateless'")
    assert gp.num_trainable == 17 and gp.trainable_bytes() == 68


# --------------------------------------------------------------------------- bad input

def test_bad_d():
    params = small_params()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="d must be in"):
            gj.GPart.create(params, d=bad, targets="kernel")
    with pytest.raises(ValueError, match=r"d = 10000 exceeds N = \d+"):
        gj.GPart.create(params, d=10_000, targets="kernel")
    with pytest.raises(TypeError, match="d must be an integer"):
        gj.GPart.create(params, d=3.0, targets="kernel")


@pytest.mark.parametrize("bad", [-1, 2**64, 2.0, None, True])
def test_bad_seed(bad):
    with pytest.raises((ValueError, TypeError), match="seed"):
        gj.GPart.create(small_params(), d=4, seed=bad, targets="kernel")


def test_traced_seed_is_refused():
    params = small_params()
    with pytest.raises(TypeError, match="seed must be a concrete Python integer.*static"):
        jax.jit(lambda s: gj.GPart.create(params, d=4, seed=s, targets="kernel").init())(3)


def test_bad_options():
    params = small_params()
    entries = layout.build(params, TARGETS)
    with pytest.raises(ValueError, match="scheme must be one of"):
        gj.GPart.create(params, d=4, scheme="random")
    with pytest.raises(ValueError, match="scope must be one of"):
        gj.GPart.from_layout(entries, d=4, scope="layer")
    with pytest.raises(ValueError, match="adapted_dtype must be one of"):
        gj.GPart.create(params, d=4, adapted_dtype="float16")
    with pytest.raises(TypeError, match="isometric must be True or False"):
        gj.GPart.create(params, d=4, isometric=1)
    with pytest.raises(TypeError, match="materialize must be True or False"):
        gj.GPart.create(params, d=4, materialize="yes")
    with pytest.raises(ValueError, match="init_bound must be in"):
        gj.GPart.create(params, d=4, init_bound=-0.1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        gj.GPart.create(params, d=4, warn_empty=False)


def test_bad_theta():
    params = small_params()
    gp = make(CONFIGS[0], params=params)
    with pytest.raises(ValueError, match=r"theta must have shape \(17,\), got \(16,\)"):
        gp.apply(jnp.zeros((16,), jnp.float32), params)
    with pytest.raises(ValueError, match="theta must have shape.*jax.vmap"):
        gp.apply(jnp.zeros((2, 17), jnp.float32), params)
    with pytest.raises(TypeError, match="theta must be float32, got bfloat16"):
        gp.apply(jnp.zeros((17,), jnp.bfloat16), params)
    with pytest.raises(TypeError, match="theta must be float32, got int32"):
        gp.apply(jnp.zeros((17,), jnp.int32), params)
    with pytest.raises(TypeError, match=r"theta must be a float32 array of shape \(17,\), got list"):
        gp.apply([0.0] * 17, params)


def test_bad_base_params():
    params = small_params()
    gp = make(CONFIGS[0], params=params)
    theta = gp.init()
    with pytest.raises(TypeError, match="base_params is None"):
        gp.apply(theta, None)
    with pytest.raises(gj.LayoutMismatchError, match=r"base_params.*params/layer_2/mlp/kernel: missing"):
        gp.apply(theta, small_params(n_layers=2))
    wider = small_params()
    wider["params"]["layer_0"]["query"]["kernel"] = jnp.ones((7, 5))
    with pytest.raises(gj.LayoutMismatchError,
                       match=r"layer_0/query/kernel: shape \(7, 5\), expected \(6, 5\)"):
        gp.apply(theta, wider)
    ints = small_params()
    ints["params"]["layer_1"]["value"]["kernel"] = jnp.ones((6, 4), jnp.int32)
    with pytest.raises(gj.LayoutMismatchError, match="layer_1/value/kernel: dtype int32"):
        gp.apply(theta, ints)
    shapes = jax.eval_shape(small_params)
    assert make(CONFIGS[0], params=shapes).plan == gp.plan  # shapes are enough to build ...
    with pytest.raises(gj.LayoutMismatchError, match="ShapeDtypeStruct.*needs the arrays"):
        gp.apply(theta, shapes)  # ... but applying needs the weights

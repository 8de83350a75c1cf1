"""Every method behind one protocol: defining identities against dense float64 references,
geometry (isometric vs bilinear), one training loop for all, specs, budgets and counts, the
seeded random structures (golden vectors), and errors."""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import gpart_jax as gj
import gpart_jax.methods as methods
from gpart_jax.hashing import GOLDEN_GAMMA, MASK64, splitmix64_int
from gpart_jax.method import tree_size
from gpart_jax.methods import seeded
from gpart_jax.methods.fastfood import fastfood_blocks, fastfood_project
from gpart_jax.methods.vera import vera_matrices

GOLDEN = json.loads((pathlib.Path(__file__).parents[1] / "golden" / "method_random.json").read_text())
TARGETS = ("query/kernel", "value/kernel")


def small_params(n_layers=2, seed=0):
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {"params": {
        "embed": arr(11, 6),
        **{f"layer_{i}": {"query": {"kernel": arr(6, 5), "bias": arr(5)},
                          "value": {"kernel": arr(6, 4), "bias": arr(4)}} for i in range(n_layers)},
        "head": {"kernel": arr(6, 2), "bias": arr(2)},
    }}


def get(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def f64(x):
    return np.asarray(x, np.float64)


SMALL_OPTIONS = {
    "gpart": dict(d=7), "gpart-noniso": dict(d=7), "lora": dict(r=2), "unilora": dict(d=9, r=2),
    "vera": dict(r=3), "full": {}, "head-only": {}, "fastfood": dict(d=5),
}


def build(name, params, **options):
    return methods.build(name, params, targets=TARGETS, seed=3, **{**SMALL_OPTIONS[name], **options})


# --------------------------------------------------------------------------- the protocol

@pytest.mark.parametrize("name", methods.METHODS)
def test_every_method_follows_the_protocol(name):
    params = small_params()
    method = build(name, params)
    assert method.name == name and isinstance(method, gj.Method)
    trainable = method.init(jax.random.key(0))
    assert method.num_trainable == tree_size(trainable)
    assert jax.tree_util.tree_structure(method.trainable_shapes()) == jax.tree_util.tree_structure(
        trainable)
    # The method is a pytree: pass it into jit as an argument.
    out = jax.jit(lambda m, t, p: m.apply(t, p))(method, trainable, params)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(params)
    np.testing.assert_array_equal(out["params"]["embed"], params["params"]["embed"])
    np.testing.assert_array_equal(out["params"]["head"]["kernel"], params["params"]["head"]["kernel"])
    expected = () if name == "head-only" else tuple(
        (f"params/layer_{i}/{m}/kernel", (6, 5 if m == "query" else 4))
        for i in range(2) for m in ("query", "value"))
    assert method.adapted == expected
    assert method.num_adapted == sum(int(np.prod(s)) for _, s in expected)
    if name == "unilora":  # theta_d starts uniform in [-0.02, 0.02]: a small, nonzero update
        delta = f64(get(out, expected[0][0])) - f64(get(params, expected[0][0]))
        assert 0 < np.abs(delta).max() < 1e-2
    else:  # every other method starts from the base model exactly
        jax.tree_util.tree_map(np.testing.assert_array_equal, out, params)
    # spec() is JSON and rebuilds the same method.
    spec = json.loads(json.dumps(method.spec()))
    assert spec["method"] == name
    again = methods.from_spec(spec, params)
    assert type(again) is type(method) and again.adapted == method.adapted
    assert again.spec() == method.spec()
    assert methods.count(method)["trainable"] == method.num_trainable
    s = method.summary(params)
    assert s.method == name and s.trainable == method.num_trainable and s.total == tree_size(params)
    assert f"adapted leaves ({len(expected)}):" in str(s)


def test_saved_modules_may_not_overlap_the_adapted_leaves():
    params = small_params()
    lora = build("lora", params)
    gj.saved.check_disjoint(lora, gj.saved_modules(params, "head"))
    with pytest.raises(gj.TargetError, match="overlap the adapted leaves.*layer_0/query/kernel"):
        gj.saved.check_disjoint(lora, gj.saved_modules(params, "layer_0"))


# --------------------------------------------------------------------------- defining identities

def test_lora_delta_is_scaled_BA():
    params = small_params()
    method = methods.LoRA.create(params, r=3, alpha=6.0, targets=TARGETS)
    rng = np.random.default_rng(2)
    trainable = {p: {"A": jnp.float32(rng.normal(size=(3, s[0]))),
                     "B": jnp.float32(rng.normal(size=(s[1], 3)))} for p, s in method.adapted}
    out = jax.jit(method.apply)(trainable, params)
    for p in method.target_paths:
        a, b = f64(trainable[p]["A"]), f64(trainable[p]["B"])
        expected = f64(get(params, p)) + (6.0 / 3) * (b @ a).T  # PyTorch Delta W = (alpha/r) B A
        np.testing.assert_allclose(f64(get(out, p)), expected, atol=1e-5)
    for p in ("params/layer_0/query/bias", "params/embed"):
        np.testing.assert_array_equal(get(out, p), get(params, p))


def test_lora_init_A_uniform_B_zero():
    params = small_params()
    method = methods.LoRA.create(params, r=4, targets=TARGETS)
    a1, a2 = method.init(jax.random.key(0)), method.init(jax.random.key(1))
    for p, (n_in, n_out) in method.adapted:
        assert a1[p]["A"].shape == (4, n_in) and a1[p]["B"].shape == (n_out, 4)
        np.testing.assert_array_equal(a1[p]["B"], 0)
        assert 0 < np.abs(a1[p]["A"]).max() <= 1 / np.sqrt(n_in)
        assert not np.array_equal(a1[p]["A"], a2[p]["A"])
    assert method.scale == 1.0  # alpha defaults to r
    assert method.num_trainable == 4 * 2 * ((6 + 5) + (6 + 4))


def test_unilora_first_hop_is_isometric_and_delta_is_BA_of_projected_factors():
    params = small_params()
    method = methods.UniLoRA.create(params, d=13, r=2, seed=4, scale=1.5, targets=TARGETS)
    gp = method.gpart
    big_d = 2 * 2 * ((6 + 5) + (6 + 4))
    assert gp.num_adapted == big_d and gp.scheme == "balanced"
    p = gp.dense_projection()
    np.testing.assert_allclose(p.T @ p, np.eye(13), atol=1e-6)  # P^T P = I_d (float32 scales)
    assert set(gp.group_sizes.tolist()) <= {big_d // 13, big_d // 13 + 1}  # exactly balanced
    theta = jnp.float32(np.random.default_rng(5).normal(size=13))
    theta_big = p @ f64(theta)  # theta_D = P theta_d, in the layout's order
    offset, factors = 0, {}
    for e in gp.layout:
        factors[e.path] = theta_big[offset:offset + e.size].reshape(e.shape)
        offset += e.size
    got, out = jax.jit(lambda t: (method.factors(t), method.apply(t, params)))(theta)
    for path in method.target_paths:
        a, b = factors[f"{path}/A"], factors[f"{path}/B"]
        np.testing.assert_allclose(f64(got[path]["A"]), a, atol=1e-6)
        np.testing.assert_allclose(f64(got[path]["B"]), b, atol=1e-6)
        np.testing.assert_allclose(f64(get(out, path)), f64(get(params, path)) + 1.5 * (b @ a).T,
                                   atol=1e-5)
    init = method.init(jax.random.key(0))
    assert init.shape == (13,) and 0 < np.abs(init).max() <= 0.02


def test_vera_delta_is_diag_lambda_b_B_diag_lambda_d_A_with_shared_matrices():
    params = small_params()
    method = methods.VeRA.create(params, r=3, seed=11, targets=TARGETS)
    # Shared A (r, max in) and B (max out, r), Kaiming-uniform from the project's hash (float64 ref).
    a_full = (2 * f64(seeded.uniform(11, seeded.VERA_A, 3 * 6)) - 1).reshape(3, 6) * np.sqrt(6 / 6)
    b_full = (2 * f64(seeded.uniform(11, seeded.VERA_B, 5 * 3)) - 1).reshape(5, 3) * np.sqrt(6 / 3)
    np.testing.assert_allclose(f64(method.A), a_full, rtol=1e-6)
    np.testing.assert_allclose(f64(method.B), b_full, rtol=1e-6)
    rng = np.random.default_rng(6)
    trainable = {p: {"lambda_d": jnp.float32(rng.normal(size=3)),
                     "lambda_b": jnp.float32(rng.normal(size=s[1]))} for p, s in method.adapted}
    out = jax.jit(method.apply)(trainable, params)
    for p, (n_in, n_out) in method.adapted:
        a, b = f64(method.A)[:, :n_in], f64(method.B)[:n_out, :]
        dw = np.diag(f64(trainable[p]["lambda_b"])) @ b @ np.diag(f64(trainable[p]["lambda_d"])) @ a
        np.testing.assert_allclose(f64(get(out, p)), f64(get(params, p)) + dw.T, atol=1e-5)
    init = method.init()
    for p, (_, n_out) in method.adapted:
        np.testing.assert_array_equal(init[p]["lambda_b"], np.zeros(n_out))
        np.testing.assert_allclose(init[p]["lambda_d"], 0.1)
    assert method.num_trainable == 2 * ((3 + 5) + (3 + 4))


def test_full_substitutes_the_weights_and_head_only_changes_nothing():
    params = small_params()
    full = methods.Full.create(params, targets=TARGETS)
    trainable = full.init()
    assert set(trainable) == set(full.target_paths)
    trainable = {p: w + 1.0 for p, w in trainable.items()}
    out = jax.jit(full.apply)(trainable, params)
    for p in full.target_paths:
        np.testing.assert_array_equal(get(out, p), get(params, p) + 1.0)
    assert full.num_trainable == full.num_adapted == 2 * (30 + 24)
    head = methods.HeadOnly.create(params)
    assert head.apply({}, params) is params and head.num_trainable == 0


def sylvester(size):
    h = np.ones((1, 1))
    while h.shape[0] < size:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("size", [1, 2, 8, 64])
def test_fwht_is_the_walsh_hadamard_matrix(size):
    x = np.random.default_rng(size).normal(size=(3, size))
    h = sylvester(size)
    i, j = np.indices((size, size))
    np.testing.assert_array_equal(h, (-1.0) ** np.vectorize(lambda v: bin(v).count("1"))(i & j))
    np.testing.assert_allclose(f64(jax.jit(methods.fwht)(jnp.float32(x))), x @ h, atol=1e-4)
    np.testing.assert_allclose(h @ h, size * np.eye(size))


def test_fwht_needs_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        methods.fwht(jnp.zeros(6))


def fastfood_dense_reference(ff):
    """``P`` (N x d) in float64 from explicit H, G, Pi, B matrices, block by block."""
    size, blocks = ff.block_size, []
    h = sylvester(size)
    signs, perm, gauss = (f64(x) for x in (ff.signs, ff.perm, ff.gauss))
    for k in range(ff.num_blocks):
        pi = np.zeros((size, size))
        pi[np.arange(size), perm[k].astype(int)] = 1  # (Pi x)_i = x_{pi(i)}
        v = h @ np.diag(gauss[k]) @ pi @ h @ np.diag(signs[k])
        blocks.append(v / (np.linalg.norm(gauss[k]) * np.sqrt(ff.num_adapted)))
    return np.concatenate(blocks)[:ff.num_adapted, :ff.d]


def test_fastfood_matches_dense_float64_reference():
    params = small_params()
    ff = methods.Fastfood.create(params, d=6, seed=2, targets=TARGETS)
    assert (ff.block_size, ff.num_blocks) == (8, -(-2 * (30 + 24) // 8))
    p_ref = fastfood_dense_reference(ff)
    theta = jnp.float32(np.random.default_rng(1).normal(size=6))
    p, out = jax.jit(lambda t: (jax.jacfwd(ff.project)(t), ff.apply(t, params)))(theta)
    np.testing.assert_allclose(f64(p), p_ref, atol=1e-6)
    flat = np.concatenate([(f64(get(out, q)) - f64(get(params, q))).reshape(-1)
                           for q in ff.target_paths])
    np.testing.assert_allclose(flat, p_ref @ f64(theta), atol=1e-5)


def test_fastfood_columns_have_unit_norm_when_L_divides_N():
    params = {"params": {"layer_0": {"query": {"kernel": jnp.zeros((8, 8))}}}}
    for seed in range(5):
        ff = methods.Fastfood.create(params, d=5, seed=seed, targets="query/kernel")
        assert ff.num_adapted % ff.block_size == 0
        p = fastfood_dense_reference(ff)
        np.testing.assert_allclose(np.linalg.norm(p, axis=0), 1.0, atol=1e-12)


def test_fastfood_expected_gram_is_identity():
    """E[P^T P] ~ I over seeds (N = 100 not a multiple of L = 8); a single draw is not orthogonal."""
    n, d, size = 100, 6, 8
    num_blocks = -(-n // size)
    project = jax.jit(jax.vmap(fastfood_project, in_axes=(0, None, None, None, None, None)),
                      static_argnums=5)
    grams = []
    for seed in range(300):
        signs, perm, gauss = fastfood_blocks(seed, num_blocks, size)
        scale = 1 / (np.linalg.norm(f64(gauss), axis=1) * np.sqrt(n))
        p = f64(project(jnp.eye(d, dtype=jnp.float32), jnp.asarray(signs), jnp.asarray(perm),
                        jnp.asarray(gauss), jnp.float32(scale), n)).T
        grams.append(p.T @ p)
    grams = np.stack(grams)
    np.testing.assert_allclose(grams.mean(0), np.eye(d), atol=0.03)
    np.testing.assert_allclose(np.diagonal(grams, axis1=1, axis2=2), 1.0, atol=0.15)
    off = grams[:, ~np.eye(d, dtype=bool)]
    assert np.abs(off).max() > 0.05  # single draws: only orthogonal in expectation


# --------------------------------------------------------------------------- geometry

def singular_values(f, *points, jacobian=jax.jacrev):
    """Singular values of the Jacobian of ``f`` at each point (one compilation for all points).

    GPart's custom VJP allows reverse mode only, hence ``jacrev`` by default."""
    jac = jax.jit(jacobian(f))
    return [np.linalg.svd(f64(jac(x)), compute_uv=False) for x in points]


def test_gpart_map_is_isometric_at_any_theta():
    params = small_params()
    method = methods.build("gpart", params, d=9, targets=TARGETS, scheme="balanced")

    def delta(theta):
        out = method.apply(theta, params)
        return jnp.concatenate([(get(out, p) - get(params, p)).reshape(-1) for p in method.target_paths])

    theta = jnp.float32(np.random.default_rng(0).normal(size=9))
    for sv in singular_values(delta, jnp.zeros(9, jnp.float32), theta, 10 * theta):
        np.testing.assert_allclose(sv, 1.0, atol=1e-5)
    noniso = methods.build("gpart-noniso", params, d=9, targets=TARGETS, scheme="balanced")
    (sv,) = singular_values(lambda t: ravel_pytree(noniso.deltas(t))[0], theta)
    np.testing.assert_allclose(np.sort(sv), np.sort(np.sqrt(noniso.group_sizes)), rtol=1e-5)
    assert sv.max() > 2  # without 1/sqrt(n_j) the map stretches by sqrt(n_j)


def test_lora_jacobian_singular_values_depend_on_the_factors():
    params = {"params": {"layer_0": {"query": {"kernel": jnp.zeros((3, 4))}}}}
    method = methods.LoRA.create(params, r=2, targets="query/kernel")
    rng = np.random.default_rng(0)
    a, b = jnp.float32(rng.normal(size=(2, 3))), jnp.float32(rng.normal(size=(4, 2)))
    x1, unravel = ravel_pytree({"params/layer_0/query/kernel": {"A": a, "B": b}})
    x2, _ = ravel_pytree({"params/layer_0/query/kernel": {"A": 2 * a, "B": b / 2}})

    def delta(x):
        return method.deltas(unravel(x))["params/layer_0/query/kernel"].reshape(-1)

    np.testing.assert_allclose(delta(x1), delta(x2), atol=1e-5)  # the same Delta W ...
    sv1, sv2 = singular_values(delta, x1, x2, jacobian=jax.jacfwd)
    assert abs(sv1.max() / sv2.max() - 1) > 0.1  # ... reached through a different metric
    assert not np.allclose(sv1[sv1 > 1e-6], 1.0, atol=0.05)


def test_unilora_jacobian_scales_with_theta():
    params = small_params()
    method = methods.UniLoRA.create(params, d=11, r=2, seed=1, targets=TARGETS)

    def delta(theta):
        return jnp.concatenate([v.reshape(-1) for v in method.deltas(theta).values()])

    theta = jnp.float32(np.random.default_rng(3).normal(size=11))
    sv1, sv2, sv0 = singular_values(delta, theta, 2 * theta, jnp.zeros(11, jnp.float32))
    np.testing.assert_allclose(sv2, 2 * sv1, rtol=1e-4, atol=1e-6)  # bilinear after an isometry
    assert np.all(sv0 < 1e-7)  # flat at zero


# --------------------------------------------------------------------------- one loop for all

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(16, name="dense_0")(x))
        x = nn.tanh(nn.Dense(16, name="dense_1")(x))
        return nn.Dense(1, name="head")(x)


TRAIN_OPTIONS = {
    "gpart": dict(d=32), "gpart-noniso": dict(d=32), "lora": dict(r=2), "unilora": dict(d=32, r=2),
    "vera": dict(r=4), "full": {}, "head-only": {}, "fastfood": dict(d=32),
}


# Each method compiles its own loop (about a second): GPart, a low-rank method, substitution and
# an empty trainable run on CI, the others with -m slow (test_transforms checks their gradients).
TRAINED_ON_CI = ("gpart", "lora", "full", "head-only")


@pytest.mark.parametrize("name", [name if name in TRAINED_ON_CI else pytest.param(
    name, marks=pytest.mark.slow) for name in methods.METHODS])
def test_every_method_trains_a_tiny_model_under_the_same_loop(name):
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (128, 8))
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    params = model.init(jax.random.key(1), x)
    method = methods.build(name, params, targets=("dense_0", "dense_1"), seed=0, **TRAIN_OPTIONS[name])
    saved = gj.saved_modules(params, "head")  # a new head trains in full next to every method
    assert set(saved) == {"params/head/kernel", "params/head/bias"}
    pair0 = (method.init(jax.random.key(2)), saved)
    opt = optax.adam(2e-2)

    def loss(pair):
        trainable, saved = pair
        return jnp.mean((model.apply(gj.full_params(method, trainable, params, saved), x) - y) ** 2)

    @jax.jit
    def run(pair):
        def step(carry, _):
            pair, state = carry
            value, grad = jax.value_and_grad(loss)(pair)
            updates, state = opt.update(grad, state)
            return (optax.apply_updates(pair, updates), state), value
        (pair, _), values = jax.lax.scan(step, (pair, opt.init(pair)), None, length=100)
        return pair, values

    pair1, values = run(pair0)
    assert np.all(np.isfinite(values))
    assert values[-1] < 0.8 * values[0], (name, float(values[0]), float(values[-1]))
    moved = [np.abs(f64(a) - f64(b)).max() for a, b in zip(jax.tree_util.tree_leaves(pair1),
                                                          jax.tree_util.tree_leaves(pair0), strict=True)]
    assert len(moved) == len(jax.tree_util.tree_leaves(method.trainable_shapes())) + 2
    assert min(moved) > 0  # every trainable leaf moved, the method's and the head's


# --------------------------------------------------------------------------- specs and registry

def test_from_spec_refuses_another_base_or_an_unknown_method():
    params = small_params()
    for name in ("lora", "unilora", "gpart"):
        spec = build(name, params).spec()
        with pytest.raises(gj.LayoutMismatchError, match="layer_1/value/kernel: missing"):
            methods.from_spec(spec, small_params(n_layers=1))
    spec = build("unilora", params).spec()
    with pytest.raises(gj.LayoutMismatchError, match="fingerprint"):
        methods.from_spec(dict(spec, fingerprint="0" * 64), params)
    with pytest.raises(ValueError, match="unknown method 'dora' in the spec"):
        methods.from_spec({"method": "dora"}, params)


def test_options_of_and_build_errors():
    assert methods.options_of("lora") == ("r", "alpha", "targets", "adapted_dtype")
    assert "isometric" not in methods.options_of("gpart-noniso")
    params = small_params()
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        methods.build("dora", params)
    with pytest.raises(TypeError, match=r"'lora' does not take option\(s\) \['d'\]"):
        methods.build("lora", params, d=5, targets=TARGETS)
    with pytest.raises(TypeError, match=r"fixes \['isometric'\]"):
        methods.build("gpart-noniso", params, d=5, isometric=True)
    for removed in ("exclude", "layers", "layer_pattern"):
        with pytest.raises(TypeError, match="does not take option"):
            methods.build("lora", params, targets=TARGETS, **{removed: None})
    # Common options are dropped where a method has no use for them.
    assert methods.build("head-only", params, targets=TARGETS, seed=1).adapted == ()
    assert methods.build("lora", params, r=1, targets=TARGETS, seed=1).r == 1


# --------------------------------------------------------------------------- budgets and counts

def encoder_qv_shapes(layers=6, hidden=384):
    sds = jax.ShapeDtypeStruct((hidden, hidden), jnp.float32)
    return {"params": {"encoder": {f"layer_{i}": {"attention": {"self": {
        "query": {"kernel": sds}, "key": {"kernel": sds}, "value": {"kernel": sds}}}}
        for i in range(layers)}}}


def test_budget_helpers_on_minilm_qv():
    base = encoder_qv_shapes()
    assert methods.lora_params(base, TARGETS, r=1) == 6 * 2 * (384 + 384) == 9_216
    assert methods.d_for_lora_rank(base, TARGETS, r=8) == 73_728
    assert methods.lora_rank_for_d(base, TARGETS, d=9_216) == 1
    assert methods.lora_rank_for_d(base, TARGETS, d=23_040) == 2  # 18,432 and 27,648 tie: the smaller
    assert methods.lora_rank_for_d(base, TARGETS, d=23_041) == 3
    assert methods.lora_rank_for_d(base, TARGETS, d=1) == 1
    assert methods.lora_rank_for_d(base, TARGETS, d=80_000) == 9
    d = methods.d_for_lora_rank(base, TARGETS, r=2)
    lora = methods.build("lora", base, r=2, targets=TARGETS)
    gpart = methods.build("gpart", base, d=d, targets=TARGETS, scheme="balanced")
    uni = methods.build("unilora", base, d=d, r=4, targets=TARGETS)
    assert lora.num_trainable == gpart.num_trainable == uni.num_trainable == 18_432
    for r in (1, 4, 8):  # round trip
        assert methods.lora_rank_for_d(base, TARGETS, methods.d_for_lora_rank(base, TARGETS, r)) == r


def test_the_papers_glue_counts_on_roberta_qv():
    # The GPart paper's counts on RoBERTa q, v: LoRA 294K / 786K, VeRA 43K, GPart 23K.
    base, large = encoder_qv_shapes(12, 768), encoder_qv_shapes(24, 1024)
    assert methods.lora_params(base, TARGETS, r=8) == 294_912
    assert methods.lora_params(large, TARGETS, r=8) == 786_432
    assert methods.build("vera", base, r=1024, targets=TARGETS).num_trainable == 43_008
    assert methods.build("gpart", base, d=23_040, targets=TARGETS, scheme="balanced").num_trainable == 23_040


def test_counts_quote_trainable_numbers_and_bytes():
    base = encoder_qv_shapes()
    gp = methods.count(methods.build("gpart", base, d=23_040, targets=TARGETS, scheme="balanced"))
    assert gp["method"] == "gpart" and gp["trainable"] == 23_040 and gp["adapted"] == 1_769_472
    assert gp["trainable_bytes"] == 4 * 23_040 and gp["stored_bytes"] == 4 * 23_040 + 8
    lora = methods.count(methods.build("lora", base, r=8, targets=TARGETS))
    assert lora["trainable"] == 73_728 and lora["stored_bytes"] == 4 * 73_728  # no seed to store
    vera = methods.count(methods.build("vera", base, r=256, targets=TARGETS))
    assert vera["trainable"] == 12 * (256 + 384) and vera["stored_bytes"] == 4 * 12 * 640 + 8
    params = small_params()
    head = methods.count(methods.build("head-only", params), gj.saved_modules(params, "head"))
    assert head["trainable"] == 0 and head["saved"] == 6 * 2 + 2 == head["total_trainable"]
    assert head["stored_bytes"] == 4 * 14 and head["adapted"] == 0


# --------------------------------------------------------------------------- dtypes, nnx, errors

def test_adapted_dtype_of_a_bf16_base():
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), small_params())
    for adapted_dtype, expected in (("float32", jnp.float32), ("base", jnp.bfloat16)):
        method = methods.build("lora", params, r=2, targets=TARGETS, adapted_dtype=adapted_dtype)
        out = method.apply(method.init(jax.random.key(0)), params)
        assert out["params"]["layer_0"]["query"]["kernel"].dtype == expected
        assert out["params"]["embed"].dtype == jnp.bfloat16


def test_methods_work_on_nnx_state():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.query = nnx.Linear(6, 5, rngs=rngs)
            self.value = nnx.Linear(6, 4, rngs=rngs)

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    linen_like = {"query": {"kernel": state["query"]["kernel"][...]},
                  "value": {"kernel": state["value"]["kernel"][...]}}
    for name in ("lora", "unilora", "vera", "fastfood", "full"):
        opts = SMALL_OPTIONS[name]
        method = methods.build(name, state, targets=("query", "value"), seed=1, **opts)
        assert method.target_paths == ("query/kernel", "value/kernel")
        # away from the initial point, so that every method changes the kernels
        trainable = jax.tree_util.tree_map(lambda x: x + 0.1, method.init(jax.random.key(0)))
        ref = methods.build(name, linen_like, targets=("query", "value"), seed=1, **opts)
        new, expected = jax.jit(lambda t, m=method, r=ref: (m.apply(t, state), r.apply(t, linen_like)))(
            trainable)
        new = nnx.state(nnx.merge(graphdef, new))
        for p in method.target_paths:
            module = p.split("/")[0]
            np.testing.assert_allclose(new[module]["kernel"][...], get(expected, p), atol=1e-6)
            assert not np.allclose(get(expected, p), get(linen_like, p))


def test_bad_inputs_name_the_argument():
    params = small_params()
    with pytest.raises(ValueError, match=r"r \(LoRA rank\) must be in \[1, inf\]"):
        methods.LoRA.create(params, r=0, targets=TARGETS)
    with pytest.raises(TypeError, match=r"r \(LoRA rank\) must be an integer"):
        methods.LoRA.create(params, r=1.5, targets=TARGETS)
    with pytest.raises(ValueError, match="alpha must be in"):
        methods.LoRA.create(params, r=2, alpha=0.0, targets=TARGETS)
    with pytest.raises(gj.TargetError, match=r"LoRA adapts 2-D kernels.*query/bias \(5,\)"):
        methods.LoRA.create(params, r=2, targets=("query/kernel", "query/bias"))
    with pytest.raises(gj.TargetError, match="VeRA adapts 2-D"):
        methods.VeRA.create(params, r=2, targets="query/bias")
    with pytest.raises(ValueError, match=r"r \(VeRA rank\)"):
        methods.VeRA.create(params, r=-1, targets=TARGETS)
    with pytest.raises(ValueError, match="d = 1000 exceeds D = 84"):
        methods.UniLoRA.create(params, d=1000, r=2, targets=TARGETS)
    with pytest.raises(ValueError, match="d must be in"):
        methods.UniLoRA.create(params, d=0, targets=TARGETS)
    with pytest.raises(ValueError, match="init_bound must be > 0"):
        methods.UniLoRA.create(params, d=5, init_bound=0.0, targets=TARGETS)
    with pytest.raises(ValueError, match="d = 200 exceeds N = 108"):
        methods.Fastfood.create(params, d=200, targets=TARGETS)
    with pytest.raises(gj.TargetError, match="matched no parameter"):
        methods.LoRA.create(params, r=2, targets="nothing/kernel")
    with pytest.raises(ValueError, match="adapted_dtype"):
        methods.build("vera", params, r=2, targets=TARGETS, adapted_dtype="half")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        methods.LoRA.create(params, r=2, targets=TARGETS).init()
    with pytest.raises(ValueError, match="needs a PRNG key"):
        methods.UniLoRA.create(params, d=5, targets=TARGETS).init()
    with pytest.raises(ValueError, match=r"theta must have shape \(5,\)"):
        methods.Fastfood.create(params, d=5, targets=TARGETS).project(jnp.zeros(4))
    with pytest.raises(ValueError, match="the trainable pytree must be empty"):
        methods.HeadOnly().apply({"x": jnp.zeros(2)}, params)
    shapes = jax.eval_shape(small_params)
    with pytest.raises(ValueError, match="Full.init needs the base weights"):
        methods.Full.create(shapes, targets=TARGETS).init()
    lora = methods.LoRA.create(params, r=2, targets=TARGETS)
    other = small_params()
    other["params"]["layer_1"]["value"]["kernel"] = jnp.zeros((6, 3))
    with pytest.raises(gj.LayoutMismatchError,
                       match=r"layer_1/value/kernel: shape \(6, 3\), expected \(6, 4\)"):
        lora.apply(lora.init(jax.random.key(0)), other)


# --------------------------------------------------------------------------- seeded structures

def golden_shapes():
    sds = jax.ShapeDtypeStruct
    return {"params": {f"layer_{i}": {"query": {"kernel": sds((6, 5), jnp.float32)},
                                      "value": {"kernel": sds((6, 4), jnp.float32)}}
                       for i in range(2)}}


def test_words_are_splitmix64_outputs_from_the_stream_key():
    seed, stream = 2**64 - 5, seeded.FASTFOOD_PERM + 7
    key = splitmix64_int((splitmix64_int((seed + GOLDEN_GAMMA) & MASK64) + stream + GOLDEN_GAMMA)
                         & MASK64)
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
    assert len(GOLDEN["streams"]) >= 4
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
    method = methods.VeRA.create(golden_shapes(), r=g["r"], seed=g["seed"])
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
    ff = methods.Fastfood.create(golden_shapes(), d=g["d"], seed=g["seed"])
    np.testing.assert_allclose(jax.jit(ff.project)(jnp.float32(g["theta"])), np.float32(g["p_theta"]),
                               rtol=1e-5, atol=1e-7)


def test_golden_unilora_partition():
    g = GOLDEN["unilora_partition"]
    uni = methods.UniLoRA.create(golden_shapes(), d=g["d"], r=g["r"], seed=g["seed"])
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
    methods.VeRA.create(golden_shapes(), r=3, seed=1)
    methods.Fastfood.create(golden_shapes(), d=5, seed=1)
    methods.UniLoRA.create(golden_shapes(), d=7, r=2, seed=1)


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

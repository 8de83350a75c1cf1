"""Every method behind one protocol: defining identities against dense float64 references,
geometry (isometric vs bilinear), one training loop for all, budgets and counts, errors."""

import importlib.util
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import gpart_jax.methods as M
from gpart_jax import trainable
from gpart_jax.methods import seeded
from gpart_jax.methods.fastfood import fastfood_blocks, fastfood_project

TARGETS = ("query/kernel", "value/kernel")


def small_params(n_layers=2, seed=0):
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
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
    "vera": dict(r=3), "full": dict(targets=TARGETS), "head-only": {}, "fastfood": dict(d=5),
}


# --------------------------------------------------------------------------- the protocol

@pytest.mark.parametrize("name", M.METHODS)
def test_registry_builds_every_method_and_apply_is_pure_under_jit(name):
    params = small_params()
    method = M.build(name, params, targets=TARGETS, seed=3, **{
        k: v for k, v in SMALL_OPTIONS[name].items() if k != "targets"})
    assert method.name == name
    adapter = method.init(jax.random.key(0))
    # The method is a pytree: pass it into jit as an argument, like GPart.
    out = jax.jit(lambda m, a, p: m.apply(a, p))(method, adapter, params)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(params)
    np.testing.assert_array_equal(out["params"]["embed"], params["params"]["embed"])
    np.testing.assert_array_equal(out["params"]["head"]["kernel"], params["params"]["head"]["kernel"])
    for path in method.target_paths:
        assert path in {f"params/layer_{i}/{t}" for i in range(2) for t in TARGETS}
    if name == "unilora":  # theta_d starts uniform in [-0.02, 0.02]: a small, nonzero update
        path = "params/layer_0/query/kernel"
        delta = f64(get(out, path)) - f64(get(params, path))
        assert 0 < np.abs(delta).max() < 1e-2
    else:  # every other method starts from the base model exactly
        for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(params), strict=True):
            np.testing.assert_array_equal(a, b)
    json.dumps(method.metadata())  # JSON-able
    assert method.metadata()["method"] == name
    assert method.num_trainable == M.tree_size(adapter)


def test_trainable_split_works_for_every_method_with_optax():
    params = small_params()
    opt = optax.adamw(1e-2)

    @jax.jit
    def step(method, t):
        def loss(t):
            full = trainable.full_params(method, t, params)
            return jnp.sum(full["params"]["head"]["kernel"] ** 2) + jnp.sum(
                full["params"]["layer_0"]["query"]["kernel"] ** 2)

        grads = jax.grad(loss)(t)
        updates, _ = opt.update(grads, opt.init(t), t)
        return optax.apply_updates(t, updates)

    for name in M.METHODS:
        method = M.build(name, params, targets=TARGETS, **{k: v for k, v in SMALL_OPTIONS[name].items()
                                                         if k != "targets"})
        t0 = trainable.init_trainable(method, params, ("head",), key=jax.random.key(1))
        t1 = step(method, t0)
        assert set(t1["saved"]) == {"params/head/kernel", "params/head/bias"}
        assert not np.array_equal(t1["saved"]["params/head/kernel"], t0["saved"]["params/head/kernel"])
        assert jax.tree_util.tree_structure(t1) == jax.tree_util.tree_structure(t0)
    assert M.build("head-only", params).init() == {}
    with pytest.raises(ValueError, match="overlaps the adapted targets"):
        trainable.init_trainable(M.build("lora", params, r=1, targets=TARGETS), params,
                                 ("layer_0",), key=jax.random.key(0))


# --------------------------------------------------------------------------- defining identities

def test_lora_delta_is_scaled_BA():
    params = small_params()
    method = M.LoRA.create(params, r=3, alpha=6.0, targets=TARGETS)
    rng = np.random.default_rng(2)
    adapter = {p: {"A": jnp.float32(rng.normal(size=(3, s[0]))), "B": jnp.float32(rng.normal(size=(s[1], 3)))}
               for p, s in method.target_shapes.items()}
    out = method.apply(adapter, params)
    for p in method.target_paths:
        a, b = f64(adapter[p]["A"]), f64(adapter[p]["B"])
        expected = f64(get(params, p)) + (6.0 / 3) * (b @ a).T  # PyTorch Delta W = (alpha/r) B A
        np.testing.assert_allclose(f64(get(out, p)), expected, atol=1e-5)
    for p in ("params/layer_0/query/bias", "params/embed"):
        np.testing.assert_array_equal(get(out, p), get(params, p))


def test_lora_init_A_uniform_B_zero():
    params = small_params()
    method = M.LoRA.create(params, r=4, targets=TARGETS)
    a1, a2 = method.init(jax.random.key(0)), method.init(jax.random.key(1))
    for p, (n_in, n_out) in method.target_shapes.items():
        assert a1[p]["A"].shape == (4, n_in) and a1[p]["B"].shape == (n_out, 4)
        np.testing.assert_array_equal(a1[p]["B"], 0)
        assert np.abs(a1[p]["A"]).max() <= 1 / np.sqrt(n_in) and np.abs(a1[p]["A"]).max() > 0
        assert not np.array_equal(a1[p]["A"], a2[p]["A"])
    assert method.scale == 1.0  # alpha defaults to r
    assert method.num_trainable == 4 * 2 * ((6 + 5) + (6 + 4))


def test_unilora_first_hop_is_isometric_and_delta_is_BA_of_projected_factors():
    params = small_params()
    method = M.UniLoRA.create(params, d=13, r=2, seed=4, scale=1.5, targets=TARGETS)
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
        n = int(np.prod(e.shape))
        factors[e.path] = theta_big[offset:offset + n].reshape(e.shape)
        offset += n
    got = jax.jit(method.factors)(theta)
    out = jax.jit(method.apply)(theta, params)
    for path in method.target_paths:
        a, b = factors[f"{path}/A"], factors[f"{path}/B"]
        np.testing.assert_allclose(f64(got[path]["A"]), a, atol=1e-6)
        np.testing.assert_allclose(f64(got[path]["B"]), b, atol=1e-6)
        np.testing.assert_allclose(f64(get(out, path)), f64(get(params, path)) + 1.5 * (b @ a).T, atol=1e-5)
    init = method.init(jax.random.key(0))
    assert init.shape == (13,) and 0 < np.abs(init).max() <= 0.02


def test_vera_delta_is_diag_lambda_b_B_diag_lambda_d_A_with_shared_matrices():
    params = small_params()
    method = M.VeRA.create(params, r=3, seed=11, targets=TARGETS)
    # Shared A (r, max in) and B (max out, r), Kaiming-uniform from the project's hash (float64 ref).
    a_full = (2 * f64(seeded.uniform(11, seeded.VERA_A, 3 * 6)) - 1).reshape(3, 6) * np.sqrt(6 / 6)
    b_full = (2 * f64(seeded.uniform(11, seeded.VERA_B, 5 * 3)) - 1).reshape(5, 3) * np.sqrt(6 / 3)
    np.testing.assert_allclose(f64(method.A), a_full, rtol=1e-6)
    np.testing.assert_allclose(f64(method.B), b_full, rtol=1e-6)
    rng = np.random.default_rng(6)
    adapter = {p: {"lambda_d": jnp.float32(rng.normal(size=3)),
                   "lambda_b": jnp.float32(rng.normal(size=s[1]))} for p, s in method.target_shapes.items()}
    out = method.apply(adapter, params)
    for p, (n_in, n_out) in method.target_shapes.items():
        a, b = f64(method.A)[:, :n_in], f64(method.B)[:n_out, :]
        dw = np.diag(f64(adapter[p]["lambda_b"])) @ b @ np.diag(f64(adapter[p]["lambda_d"])) @ a
        np.testing.assert_allclose(f64(get(out, p)), f64(get(params, p)) + dw.T, atol=1e-5)
    init = method.init()
    for p, (_, n_out) in method.target_shapes.items():
        np.testing.assert_array_equal(init[p]["lambda_b"], np.zeros(n_out))
        np.testing.assert_allclose(init[p]["lambda_d"], 0.1)
    assert method.num_trainable == 2 * ((3 + 5) + (3 + 4))


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
    np.testing.assert_allclose(f64(jax.jit(M.fwht)(jnp.float32(x))), x @ h, atol=1e-4)
    np.testing.assert_allclose(h @ h, size * np.eye(size))


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
    ff = M.Fastfood.create(params, d=6, seed=2, targets=TARGETS)
    assert (ff.block_size, ff.num_blocks) == (8, -(-2 * (30 + 24) // 8))
    p_ref = fastfood_dense_reference(ff)
    p = f64(jax.jit(jax.jacfwd(ff.project))(jnp.zeros(6, jnp.float32)))
    np.testing.assert_allclose(p, p_ref, atol=1e-6)
    theta = jnp.float32(np.random.default_rng(1).normal(size=6))
    out = jax.jit(ff.apply)(theta, params)
    flat = np.concatenate([(f64(get(out, q)) - f64(get(params, q))).reshape(-1) for q in ff.target_paths])
    np.testing.assert_allclose(flat, p_ref @ f64(theta), atol=1e-5)


def test_fastfood_columns_have_unit_norm_when_L_divides_N():
    params = {"params": {"layer_0": {"query": {"kernel": jnp.zeros((8, 8))}}}}
    for seed in range(5):
        ff = M.Fastfood.create(params, d=5, seed=seed, targets=("query/kernel",))
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
    method = M.build("gpart", params, d=9, targets=TARGETS, scheme="balanced")

    def delta(theta):
        out = method.apply(theta, params)
        return jnp.concatenate([(get(out, p) - get(params, p)).reshape(-1) for p in method.target_paths])

    theta = jnp.float32(np.random.default_rng(0).normal(size=9))
    for sv in singular_values(delta, jnp.zeros(9, jnp.float32), theta, 10 * theta):
        np.testing.assert_allclose(sv, 1.0, atol=1e-5)
    noniso = M.build("gpart-noniso", params, d=9, targets=TARGETS, scheme="balanced")
    (sv,) = singular_values(lambda t: ravel_pytree(noniso.gpart.deltas(t))[0], theta)
    assert sv.max() > 2  # without 1/sqrt(n_j) the map stretches: sqrt(n_j)


def test_lora_jacobian_singular_values_depend_on_the_factors():
    params = {"params": {"layer_0": {"query": {"kernel": jnp.zeros((3, 4))}}}}
    method = M.LoRA.create(params, r=2, targets=("query/kernel",))
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
    method = M.UniLoRA.create(params, d=11, r=2, seed=1, targets=TARGETS)

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


@pytest.mark.parametrize("name", M.METHODS)
def test_every_method_trains_a_tiny_model_under_the_same_loop(name):
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (128, 8))
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    params = model.init(jax.random.key(1), x)
    method = M.build(name, params, targets=("dense_0/kernel", "dense_1/kernel"), seed=0,
                     **TRAIN_OPTIONS[name])
    saved = ("head",) if name == "head-only" else ()
    t0 = trainable.init_trainable(method, params, saved, key=jax.random.key(2))
    opt = optax.adam(2e-2)

    def loss(t):
        return jnp.mean((model.apply(trainable.full_params(method, t, params), x) - y) ** 2)

    @jax.jit
    def run(t):
        def step(carry, _):
            t, state = carry
            value, grad = jax.value_and_grad(loss)(t)
            updates, state = opt.update(grad, state)
            return (optax.apply_updates(t, updates), state), value
        (t, _), values = jax.lax.scan(step, (t, opt.init(t)), None, length=150)
        return t, values

    t1, values = run(t0)
    assert np.all(np.isfinite(values))
    assert values[-1] < 0.8 * values[0], (name, float(values[0]), float(values[-1]))
    moved = [np.abs(f64(a) - f64(b)).max() for a, b in zip(jax.tree_util.tree_leaves(t1),
                                                          jax.tree_util.tree_leaves(t0), strict=True)]
    assert moved and min(moved) > 0  # every trainable leaf moved


# --------------------------------------------------------------------------- budgets and counts

def minilm_qv_shapes(layers=6, hidden=384):
    sds = jax.ShapeDtypeStruct((hidden, hidden), jnp.float32)
    return {"params": {"encoder": {f"layer_{i}": {"attention": {"self": {
        "query": {"kernel": sds}, "key": {"kernel": sds}, "value": {"kernel": sds}}}}
        for i in range(layers)}}}


def test_budget_helpers_on_minilm_qv():
    base = minilm_qv_shapes()
    assert M.lora_params(base, TARGETS, r=1) == 6 * 2 * (384 + 384) == 9_216
    assert M.d_for_lora_rank(base, TARGETS, r=8) == 73_728
    assert M.lora_rank_for_d(base, TARGETS, d=9_216) == 1
    assert M.lora_rank_for_d(base, TARGETS, d=23_040) == 2  # 18,432 and 27,648 tie: the smaller
    assert M.lora_rank_for_d(base, TARGETS, d=23_041) == 3
    assert M.lora_rank_for_d(base, TARGETS, d=1) == 1
    assert M.lora_rank_for_d(base, TARGETS, d=80_000) == 9
    d = M.d_for_lora_rank(base, TARGETS, r=2)
    lora = M.build("lora", base, r=2, targets=TARGETS)
    gpart = M.build("gpart", base, d=d, targets=TARGETS, scheme="balanced")
    uni = M.build("unilora", base, d=d, r=4, targets=TARGETS)
    assert lora.num_trainable == gpart.num_trainable == uni.num_trainable == 18_432
    for r in (1, 4, 8):  # round trip
        assert M.lora_rank_for_d(base, TARGETS, M.d_for_lora_rank(base, TARGETS, r)) == r


def test_counts_quote_trainable_numbers_and_bytes():
    base = minilm_qv_shapes()
    gp = M.count(M.build("gpart", base, d=23_040, targets=TARGETS, scheme="balanced"))
    assert gp["trainable"] == 23_040 and gp["adapted"] == 1_769_472
    assert gp["adapter_bytes"] == 4 * 23_040 and gp["stored_bytes"] == 4 * 23_040 + 8
    lora = M.count(M.build("lora", base, r=8, targets=TARGETS))
    assert lora["trainable"] == 73_728 and lora["stored_bytes"] == 4 * 73_728  # no seed to store
    vera = M.count(M.build("vera", base, r=256, targets=TARGETS))
    assert vera["trainable"] == 12 * (256 + 384)
    params = small_params()
    head = M.count(M.build("head-only", params), params, ("head",))
    assert head["trainable"] == 0 and head["saved"] == 6 * 2 + 2 == head["total_trainable"]
    assert head["stored_bytes"] == 4 * 14
    table = M.format_counts([gp, lora, vera, head])
    lines = table.splitlines()
    assert len(lines) == 6 and lines[0].startswith("| method | trainable")
    assert "| gpart | 23,040 | 0 | 1,769,472 | 92,168 |" in table
    assert "| head-only | 0 | 14 |" in table


def test_method_counts_result_file_is_current_and_matches_the_paper():
    root = pathlib.Path(__file__).parent.parent
    spec = importlib.util.spec_from_file_location("method_counts", root / "experiments" / "method_counts.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    doc = json.loads((root / "experiments" / "results" / "method_counts.json").read_text())
    fresh = script.measure({"MiniLM-L6-H384": script.MODELS["MiniLM-L6-H384"]})
    assert [r for r in doc["rows"] if r["model"] == "MiniLM-L6-H384"] == fresh["rows"]
    rows = {(r["model"], r["method"]): r["trainable"] for r in doc["rows"]}
    # The GPart paper's GLUE counts on RoBERTa q,v: LoRA 294K / 786K, VeRA 43K, GPart 23K.
    base, large = script.encoder_shapes(12, 768), script.encoder_shapes(24, 1024)
    assert rows["RoBERTa-base", "lora"] == M.lora_params(base, TARGETS, r=8) == 294_912
    assert rows["RoBERTa-large", "lora"] == M.lora_params(large, TARGETS, r=8) == 786_432
    assert rows["RoBERTa-base", "vera"] == M.build("vera", base, r=1024, targets=TARGETS).num_trainable
    assert rows["RoBERTa-base", "vera"] == 43_008
    assert rows["RoBERTa-base", "gpart"] == rows["RoBERTa-large", "unilora"] == 23_040


# --------------------------------------------------------------------------- dtypes and errors

def test_adapted_dtype_of_a_bf16_base():
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), small_params())
    for adapted_dtype, expected in (("float32", jnp.float32), ("base", jnp.bfloat16)):
        method = M.build("lora", params, r=2, targets=TARGETS, adapted_dtype=adapted_dtype)
        out = method.apply(method.init(jax.random.key(0)), params)
        assert out["params"]["layer_0"]["query"]["kernel"].dtype == expected
        assert out["params"]["embed"].dtype == jnp.bfloat16


def test_methods_work_on_nnx_state():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.query = nnx.Linear(6, 5, rngs=rngs)
            self.value = nnx.Linear(6, 4, rngs=rngs)

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    linen_like = {"query": {"kernel": state["query"]["kernel"][...]},
                  "value": {"kernel": state["value"]["kernel"][...]}}
    for name in ("lora", "unilora", "vera", "fastfood", "full"):
        opts = {k: v for k, v in SMALL_OPTIONS[name].items() if k != "targets"}
        method = M.build(name, state, targets=("query/kernel", "value/kernel"), seed=1, **opts)
        assert method.target_paths == ("query/kernel", "value/kernel")
        adapter = method.init(jax.random.key(0))
        if name == "lora":
            adapter = jax.tree_util.tree_map(lambda x: x + 0.1, adapter)
        new = nnx.state(nnx.merge(graphdef, jax.jit(method.apply)(adapter, state)))
        ref = M.build(name, linen_like, targets=("query/kernel", "value/kernel"), seed=1, **opts)
        expected = jax.jit(ref.apply)(adapter, linen_like)
        for p in method.target_paths:
            np.testing.assert_allclose(new[p.split("/")[0]]["kernel"][...], get(expected, p), atol=1e-6)


def test_bad_inputs_name_the_argument():
    params = small_params()
    with pytest.raises(ValueError, match="r \\(LoRA rank\\) must be >= 1"):
        M.LoRA.create(params, r=0, targets=TARGETS)
    with pytest.raises(TypeError, match="r \\(LoRA rank\\)"):
        M.LoRA.create(params, r=1.5, targets=TARGETS)
    with pytest.raises(ValueError, match="alpha"):
        M.LoRA.create(params, r=2, alpha=0.0, targets=TARGETS)
    with pytest.raises(ValueError, match="LoRA adapts 2-D matrices.*query/bias \\(5,\\)"):
        M.LoRA.create(params, r=2, targets=("query/kernel", "query/bias"))
    with pytest.raises(ValueError, match="VeRA adapts 2-D"):
        M.VeRA.create(params, r=2, targets=("query/bias",))
    with pytest.raises(ValueError, match="r \\(VeRA rank\\)"):
        M.VeRA.create(params, r=-1, targets=TARGETS)
    with pytest.raises(ValueError, match="d = 1000 exceeds D = 84"):
        M.UniLoRA.create(params, d=1000, r=2, targets=TARGETS)
    with pytest.raises(ValueError, match="d must be >= 1"):
        M.UniLoRA.create(params, d=0, targets=TARGETS)
    with pytest.raises(ValueError, match="init_bound"):
        M.UniLoRA.create(params, d=5, init_bound=0.0, targets=TARGETS)
    with pytest.raises(ValueError, match="d = 200 exceeds N = 108"):
        M.Fastfood.create(params, d=200, targets=TARGETS)
    with pytest.raises(ValueError, match="matched no parameter"):
        M.LoRA.create(params, r=2, targets=("nothing/kernel",))
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        M.build("dora", params)
    with pytest.raises(TypeError, match="'lora' does not take option\\(s\\) \\['d'\\]"):
        M.build("lora", params, d=5, targets=TARGETS)
    with pytest.raises(TypeError, match="fixes \\['isometric'\\]"):
        M.build("gpart-noniso", params, d=5, isometric=True)
    with pytest.raises(ValueError, match="adapted_dtype"):
        M.build("vera", params, r=2, targets=TARGETS, adapted_dtype="half")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        M.LoRA.create(params, r=2, targets=TARGETS).init()
    with pytest.raises(ValueError, match="needs a PRNG key"):
        M.UniLoRA.create(params, d=5, targets=TARGETS).init()
    with pytest.raises(ValueError, match="theta must have shape \\(5,\\)"):
        M.Fastfood.create(params, d=5, targets=TARGETS).project(jnp.zeros(4))
    with pytest.raises(ValueError, match="adapter must be empty"):
        M.HeadOnly().apply({"x": jnp.zeros(2)}, params)
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    with pytest.raises(ValueError, match="Full.init needs the base weights"):
        M.Full.create(shapes, targets=TARGETS).init()
    lora = M.LoRA.create(params, r=2, targets=TARGETS)
    other = small_params()
    other["params"]["layer_1"]["value"]["kernel"] = jnp.zeros((6, 3))
    with pytest.raises(ValueError, match="layer_1/value/kernel: shape \\(6, 3\\), expected \\(6, 4\\)"):
        lora.apply(lora.init(jax.random.key(0)), other)

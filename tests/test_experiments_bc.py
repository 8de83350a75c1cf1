"""Issue 7 (b) cost and (c) geometry: the scripts' core functions on toy sizes, and the committed
result files' structure. No timing is asserted anywhere (the machine is shared)."""

import importlib.util
import json
import math
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpart_jax.layout import flatten_with_paths

ROOT = pathlib.Path(__file__).parent.parent
RESULTS = ROOT / "experiments" / "results"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _script("bench_methods")
geometry = _script("geometry")


# --------------------------------------------------------------------------- geometry (toy)

SIZE, LAYER, D = 16, 1, 32  # 16 x 16 block (N = 256), d = 32; LoRA r = 1 and Uni-LoRA r = 2 match d


@pytest.fixture(scope="module")
def toy_cases():
    rng = np.random.default_rng(0)
    kernels = {(i, m): rng.normal(size=(20, 20)).astype(np.float32)
               for i in range(3) for m in ("query", "value")}
    one, glob = geometry.block_bases(kernels, SIZE, LAYER)
    return geometry.build_cases(one, glob, D, lora_r=1, unilora_r=2)


def toy_train(case, steps=30):
    """Fit the block to a random rank-2 target by least squares (a stand-in for the MiniLM task)."""
    rng = np.random.default_rng(1)
    path = geometry.block_path(LAYER)
    target = jnp.asarray(rng.normal(size=(SIZE, 2)) @ rng.normal(size=(2, SIZE)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(64, SIZE)), jnp.float32)
    method, base = case["method"], case["base"]

    def loss(trainable, batch, key):
        w = dict(flatten_with_paths(method.apply(trainable["adapter"], base))[0])[path]
        return jnp.mean((batch @ w - batch @ target) ** 2)

    def batches():
        while True:
            yield x

    adapter0 = method.init(jax.random.key(0))
    trained, losses = geometry.train(loss, {"adapter": adapter0, "saved": {}}, batches(), steps, 5e-2)
    return adapter0, trained["adapter"], losses


def svals(case, adapter):
    jac = geometry.jacobian(case["method"], adapter, case["base"], geometry.block_path(LAYER))
    assert jac.shape == (SIZE * SIZE, D)
    return geometry.singular_values(jac)


def test_every_case_has_the_same_budget(toy_cases):
    assert set(toy_cases) == {"gpart", "gpart-noniso", "gpart-global", "lora", "unilora"}
    for case in toy_cases.values():
        assert case["method"].num_trainable == D


def test_gpart_singular_values_are_all_one_at_any_theta(toy_cases):
    case = toy_cases["gpart"]
    assert case["method"].gpart.num_empty_groups == 0
    adapter0, trained, losses = toy_train(case)
    assert losses[-1] < losses[0]
    for adapter in (adapter0, trained):
        sv = svals(case, adapter)
        np.testing.assert_allclose(sv, 1.0, atol=1e-5)
        assert geometry.summarize(sv)["ones"] == D


def test_noniso_and_global_gpart_follow_their_closed_forms(toy_cases):
    path = geometry.block_path(LAYER)
    for name in ("gpart-noniso", "gpart-global"):
        case = toy_cases[name]
        adapter = case["method"].init(jax.random.key(0))
        sv = svals(case, adapter)
        expected = geometry.expected_singular_values(name, case["method"], adapter, path)
        np.testing.assert_allclose(sv, expected, atol=1e-5)
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
    assert geometry.summarize(sv1)["zeros"] == 1
    assert np.max(np.abs(sv1 - sv0)) > 1e-2


def test_unilora_jacobian_scales_with_theta(toy_cases):
    case = toy_cases["unilora"]
    theta = case["method"].init(jax.random.key(0))
    sv1, sv2 = svals(case, theta), svals(case, 2 * theta)
    np.testing.assert_allclose(sv2, 2 * sv1, rtol=1e-4, atol=1e-7)
    assert sv1.max() < 0.5  # theta uniform in +-0.02: far from an isometry


def test_summarize_counts_zeros_and_ones():
    s = geometry.summarize(np.array([2.0, 1.0, 1.0 + 1e-7, 0.5, 1e-12]))
    assert (s["n"], s["zeros"], s["ones"], s["max"], s["min_nonzero"]) == (5, 1, 2, 2.0, 0.5)
    assert s["condition"] is None and s["condition_nonzero"] == 4.0


# --------------------------------------------------------------------------- bench (toy)

# three methods, one layer and no dropout keep the test short (XLA takes seconds to compile each
# train step); every method's training is checked in tests/test_methods.py
TOY_CONFIGS = {"lora": {"r": 2}, "gpart": {"d": 64}, "head-only": {}}


@pytest.fixture(scope="module")
def toy_bench():
    from experiments.models.bert import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    model = BertForSequenceClassification(cfg, num_labels=2)
    ids = jax.random.randint(jax.random.key(0), (4, 8), 1, 50)
    base = model.init(jax.random.key(1), ids)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": jnp.zeros_like(ids),
             "label": jnp.array([0, 1, 0, 1])}
    return bench.measure(model, base, batch, TOY_CONFIGS, rounds=2, log=lambda *_: None, dropout=False)


def test_bench_measures_every_method_on_a_toy_bert(toy_bench):
    rows = toy_bench["methods"]
    assert list(rows) == list(TOY_CONFIGS)
    assert len(toy_bench["loadavg_1min_per_round"]) == 2
    n = 2 * 16 * 16  # the query and value kernels (16 x 16) of one layer
    assert rows["lora"]["adapted"] == rows["gpart"]["adapted"] == n
    expected = {"lora": 2 * 2 * 32, "gpart": 64, "head-only": 0}
    for name, row in rows.items():
        assert row["trainable"] == expected[name]
        assert row["saved"] == 16 * 2 + 2
        assert len(row["step"]["seconds_all"]) == 2
        assert (row["map"] is None) == (name == "head-only")
        # orbax's layout of small arrays varies by a few KB from save to save: no order asserted
        assert row["bytes_on_disk"]["with_head"] > 0 and row["bytes_on_disk"]["adapter_only"] > 0
        assert row["xla_step"]["temp_bytes"] > 0
    assert rows["lora"]["step"]["ratio_to_lora"] == 1.0
    # random (trained-like) values do not compress: theta's 64 floats are on disk
    assert rows["gpart"]["bytes_on_disk"]["adapter_only"] > 4 * 64
    table = bench.render({"methods": rows})
    assert len(table.splitlines()) == 2 + len(rows)


def test_interleaved_timing_rotates_the_order():
    order = []
    calls = {n: ((lambda n=n: order.append(n) or jnp.zeros(())), 1) for n in "abc"}
    times, loads = bench.time_interleaved(calls, rounds=3, log=lambda *_: None)
    assert order == list("abc" "bca" "cab")
    assert all(len(t) == 3 for t in times.values()) and len(loads) == 3


def test_summarize_ratios_come_from_medians():
    times = {"lora": [1.0, 2.0, 3.0], "gpart": [2.0, 2.0, 9.0]}
    s = bench.summarize(times, "lora")
    assert s["gpart"]["ratio_to_lora"] == 2.0 / 2.0
    assert s["gpart"]["paired_ratio_median"] == 2.0


# --------------------------------------------------------------------------- committed results

def test_bench_result_file_has_every_method_and_consistent_ratios():
    doc = json.loads((RESULTS / "bench_methods.json").read_text())
    assert doc["command"].startswith("python experiments/bench_methods.py")
    rows = doc["methods"]
    assert list(rows) == list(bench.METHODS)
    assert doc["rounds"] >= 10 and len(doc["loadavg_1min_per_round"]) == doc["rounds"]
    assert len(doc["loadavg_start"]) == 3
    lora = rows["lora"]["step"]["seconds_median"]
    for name, row in rows.items():
        ts = row["step"]["seconds_all"]
        assert len(ts) == doc["rounds"]
        assert row["step"]["seconds_median"] == statistics.median(ts)
        assert math.isclose(row["step"]["ratio_to_lora"], statistics.median(ts) / lora)
        assert row["options"] == bench.METHODS[name]
        assert row["memory"]["peak_steps_bytes"] > 0 and row["xla_step"]["temp_bytes"] > 0
        assert row["bytes_on_disk"]["adapter_only"] > 0
    g = doc["gpart_over_unilora"]
    assert math.isclose(g["step_ratio_of_medians"],
                        rows["gpart"]["step"]["seconds_median"] / rows["unilora"]["step"]["seconds_median"])
    assert math.isclose(g["map_ratio_of_medians"],
                        rows["gpart"]["map"]["seconds_median"] / rows["unilora"]["map"]["seconds_median"])
    assert rows["gpart"]["trainable"] == rows["unilora"]["trainable"] == bench.D
    assert (RESULTS / "cost.png").stat().st_size > 0
    assert len(bench.render(doc).splitlines()) == 2 + len(rows)


def test_geometry_result_file_agrees_with_the_closed_forms():
    doc = json.loads((RESULTS / "geometry.json").read_text())
    assert doc["command"].startswith("python experiments/geometry.py")
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

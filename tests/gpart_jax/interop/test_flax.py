"""The seam between the reference's torch names and flax params: the reference's partition over
flax kernels, numbered as the PyTorch weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from gpart_jax.errors import InteropError
from gpart_jax.interop import GPartConfig, check_reference_layout, plan_flax, plan_modules
from gpart_jax.paths import leaves_with_paths
from tests.gpart_jax.interop.helpers import ADAPTER, QV, bert_sd, minilm_flax, to_flax


@pytest.fixture(scope="module")
def minilm_params(minilm):
    return minilm_flax(minilm)


def test_the_golden_adapter_on_flax_params_gives_the_reference_merge(minilm_params, expected, golden_merge):
    params, name_map = minilm_params
    plan = plan_flax(ADAPTER, params, name_map)
    assert (plan.element_order, plan.layer_pattern) == ("torch", None)
    assert list(plan.order) == [f"params/encoder/layer_{i}/attention/self/{m}/kernel"
                                for i in range(6) for m in ("query", "value")]
    assert list(plan.modules) == ["bert." + m for m in QV]
    gp = plan.create_gpart(params)
    assert gp.scheme == "stateless" and {e.element_order for e in gp.layout} == {"torch"}
    adapted = gj.join(plan.saved, gp.apply(jnp.asarray(plan.theta), params))
    flat = dict(leaves_with_paths(adapted)[0])
    for m, path in zip(QV, plan.order, strict=True):
        kernel = np.asarray(flat[path])
        np.testing.assert_array_equal(kernel.T, golden_merge[m + ".weight"])
        assert np.abs(kernel.T - expected[f"bert.{m}.weight"]).max() < 1e-7
    np.testing.assert_array_equal(np.asarray(flat["params/classifier/kernel"]),
                                  expected["classifier.weight"].T)
    np.testing.assert_array_equal(plan.saved["params/classifier/bias"], expected["classifier.bias"])


def test_seam_errors(minilm_params):
    params, name_map = minilm_params
    broken = dict(name_map) | {"bert.encoder.layer.0.attention.self.query.weight": "params/nowhere/kernel"}
    with pytest.raises(InteropError, match="not a leaf of flax_params"):
        plan_flax(ADAPTER, params, broken)
    no_head = {k: v for k, v in name_map.items() if not k.startswith("classifier")}
    with pytest.raises(InteropError, match="saved tensor classifier.*no flax counterpart"):
        plan_flax(ADAPTER, params, no_head)
    cfg = GPartConfig(d=64, target_modules=("query",), bias="gpart_only")
    no_bias = {k: v for k, v in name_map.items() if not k.endswith("query.bias")}
    with pytest.raises(InteropError, match="name_map has no .*query.bias"):
        plan_flax(cfg, params, no_bias)
    twice = dict(name_map) | {"extra.weight": name_map["classifier.weight"]}
    with pytest.raises(InteropError, match="one-to-one"):
        plan_flax(ADAPTER, params, twice)
    wide = dict(params, params=dict(params["params"], classifier={"kernel": jnp.zeros((384, 3)),
                                                                  "bias": jnp.zeros(3)}))
    with pytest.raises(InteropError, match=r"saved tensor classifier\.bias is \(2,\) in flax layout.*\(3,\)"):
        plan_flax(ADAPTER, wide, name_map)


def test_a_plan_from_a_config_has_no_theta_and_follows_the_reference():
    sd = bert_sd(n_layers=3)
    params, name_map = to_flax(sd)
    cfg = GPartConfig(d=37, target_modules=("query", "value", "intermediate.dense"), proj_seed=7,
                      bias="gpart_only", partition_scope="transformer_block")
    plan = plan_flax(cfg, params, name_map, layer_pattern=r"layer_(\d+)")
    assert plan.theta is None and plan.saved == {} and plan.layer_pattern == r"layer_(\d+)"
    gp = plan.create_gpart(params)
    assert [b.d for b in gp.blocks] == [13, 12, 12] and [b.seed for b in gp.blocks] == [7, 8, 9]
    # its deltas, transposed, are the reference's (torch-named) deltas, block by block
    theta = jax.random.normal(jax.random.key(0), (37,), jnp.float32)
    ref = plan_modules(cfg, {k: v.shape for k, v in sd.items()})
    ref_deltas = dict(zip(ref.param_names(), ref.gpart.deltas(theta), strict=True))
    flax_to_torch = {v: k for k, v in name_map.items()}
    for entry, delta in zip(gp.layout, gp.deltas(theta), strict=True):
        want = np.asarray(ref_deltas[flax_to_torch[entry.path]])
        np.testing.assert_array_equal(np.asarray(delta), want.T if delta.ndim == 2 else want)


def test_check_reference_layout_names_the_difference(minilm_params):
    params, name_map = minilm_params
    cfg = GPartConfig(d=64, target_modules=("query", "value"), proj_seed=3)
    ref = plan_flax(cfg, params, name_map).reference
    qv = ("query/kernel", "value/kernel")
    good = plan_flax(cfg, params, name_map).create_gpart(params)
    check_reference_layout(good, ref, name_map)
    cases = [
        (gj.GPart.from_layout(good.layout, d=64, seed=3, scheme="balanced"), "scheme='balanced'"),
        (gj.GPart.from_layout(good.layout, d=64, seed=4), "seed = 4, the reference's is 3"),
        (gj.GPart.from_layout(good.layout, d=63, seed=3), "d = 63"),
        (gj.GPart.from_layout(good.layout, d=64, seed=3, isometric=False), "isometric = False"),
        (gj.GPart.from_layout([dataclasses.replace(e, element_order="native") for e in good.layout],
                              d=64, seed=3), "element_order 'native'"),
        (gj.GPart.create(params, d=64, seed=3, targets=qv), "element_order 'native'"),
    ]
    for gp, reason in cases:
        with pytest.raises(InteropError, match=reason):
            check_reference_layout(gp, ref, name_map, fix="FIX IT")
    with pytest.raises(InteropError, match="FIX IT"):
        check_reference_layout(cases[0][0], ref, name_map, fix="FIX IT")

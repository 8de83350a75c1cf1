"""The reference's partition of a base: module order, numbering, blocks, and the golden ids."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import gpart_jax as gj
from gpart_jax.errors import InteropError
from gpart_jax.interop import GPartConfig, plan_modules, read_reference_adapter
from tests.gpart_jax.interop.helpers import ADAPTER, GOLDEN, QV, bert_definition_order, bert_sd


def shapes_of(sd):
    return {k: v.shape for k, v in sd.items()}


def test_golden_ids_counts_and_scales(minilm, expected):
    adapter = read_reference_adapter(ADAPTER)
    plan = plan_modules(adapter.config, shapes_of(minilm), prefix="bert.")
    assert list(plan.modules) == QV
    assert plan.param_names() == [m + ".weight" for m in QV]
    assert plan.recorded()[0] == ("bert." + QV[0], (384, 384), None)
    counts = load_file(str(GOLDEN / "reference_minilm_qv_group_counts.safetensors"))
    np.testing.assert_array_equal(plan.gpart.group_sizes, counts["gpart_group_counts"])
    np.testing.assert_array_equal(np.asarray(plan.gpart.scales), counts["gpart_global_scales_ieee"])
    ids = plan.gpart.global_group_ids()
    np.testing.assert_array_equal(ids, gj.group_ids(0, 1_769_472, 4096, 1234))
    # With the reference's own scales, these ids give its merged weights bit for bit.
    table = adapter.theta * expected["gpart_global_scales"]
    offset = 0
    for m in QV:
        w0 = minilm[m + ".weight"]
        mine = w0 + table[ids[offset:offset + w0.size]].reshape(w0.shape)
        np.testing.assert_array_equal(mine, expected[f"bert.{m}.weight"])
        offset += w0.size


def test_bert_order_is_the_definition_order_not_the_key_order():
    sd = bert_sd(n_layers=12)  # keys sorted: layer.10 before layer.2, key before query
    cfg = GPartConfig(d=97, target_modules=("query", "key", "value", "dense"), proj_seed=5)
    plan = plan_modules(cfg, shapes_of(sd))
    assert list(plan.modules) == bert_definition_order(12)[:-1]  # "classifier" is not targeted
    insertion = plan_modules(cfg, shapes_of(sd), module_order="insertion")
    assert list(insertion.modules) == sorted(plan.modules)
    assert insertion.gpart.fingerprint != plan.gpart.fingerprint


def test_llama_and_vit_orders():
    shapes = {}
    for i in (10, 2, 0):
        for m in ("mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                  "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"):
            shapes[f"model.layers.{i}.{m}.weight"] = (4, 4)
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (4,)
    shapes["lm_head.weight"], shapes["model.embed_tokens.weight"] = (50, 4), (50, 4)
    cfg = GPartConfig(d=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj", "lm_head"))
    plan = plan_modules(cfg, shapes)
    layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert list(plan.modules) == [f"model.layers.{i}.{m}" for i in (0, 2, 10) for m in layer] + ["lm_head"]
    with pytest.raises(InteropError, match="embedding tables"):
        plan_modules(GPartConfig(d=8, target_modules=("embed_tokens", "q_proj")), shapes)
    vit = {f"vit.encoder.layer.{i}.{m}.weight": (4, 4) for i in (1, 0) for m in
           ("output.dense", "attention.attention.value", "attention.attention.query")}
    plan = plan_modules(GPartConfig(d=4, target_modules=("query", "value", "dense")), vit)
    assert list(plan.modules) == [f"vit.encoder.layer.{i}.{m}" for i in (0, 1) for m in
                                  ("attention.attention.query", "attention.attention.value", "output.dense")]
    with pytest.raises(InteropError, match="no place in the bert definition order"):
        plan_modules(GPartConfig(d=4, target_modules=("query",)), vit, module_order="bert")


def test_unknown_architecture_needs_an_explicit_order():
    shapes = {"net.b.weight": (3, 3), "net.a.weight": (3, 3)}
    cfg = GPartConfig(d=4, target_modules=("a", "b"))
    with pytest.raises(InteropError, match=r"module_order=.*insertion"):
        plan_modules(cfg, shapes)
    explicit = plan_modules(cfg, shapes, module_order=["net.b", "x", "net.a"])
    assert list(explicit.modules) == ["net.b", "net.a"]
    assert list(plan_modules(cfg, shapes, module_order="insertion").modules) == ["net.b", "net.a"]
    assert list(plan_modules(GPartConfig(d=4, target_modules=("a",)), shapes).modules) == ["net.a"]
    with pytest.raises(InteropError, match="does not list the targeted modules"):
        plan_modules(cfg, shapes, module_order=["net.a"])
    with pytest.raises(InteropError, match="module_order must be"):
        plan_modules(cfg, shapes, module_order="gpt2")
    # an unknown module inside a known architecture is not guessed either
    shapes = shapes_of(bert_sd(1)) | {"bert.encoder.layer.0.extra.proj.weight": (4, 4)}
    with pytest.raises(InteropError, match="no place in the bert definition order"):
        plan_modules(GPartConfig(d=4, target_modules=("query", "proj")), shapes)


def test_transformer_block_scope():
    sd = bert_sd(n_layers=11)
    cfg = GPartConfig(d=50, target_modules=("query", "value"), proj_seed=9, bias="gpart_only",
                      partition_scope="transformer_block")
    plan = plan_modules(cfg, shapes_of(sd))
    assert [b.d for b in plan.gpart.blocks] == [5] * 6 + [4] * 5  # divmod(50, 11)
    assert [b.seed for b in plan.gpart.blocks] == [9 + k for k in range(11)]
    assert plan.gpart.blocks[10].prefix == "bert/encoder/layer/10"  # natural order: 10 is last
    assert [b.num_positions for b in plan.gpart.blocks] == [2 * (16 + 4)] * 11
    with pytest.raises(InteropError, match="in no transformer block"):
        plan_modules(GPartConfig(d=50, target_modules=("query", "pooler.dense"),
                                 partition_scope="transformer_block"), shapes_of(sd))
    with pytest.raises(InteropError, match="smaller than the number of transformer blocks"):
        plan_modules(GPartConfig(d=5, target_modules=("query",), partition_scope="transformer_block"),
                     shapes_of(sd))


def test_bias_modes_number_each_bias_after_its_weight():
    shapes = shapes_of(bert_sd(1))
    for bias, entries in (("none", ["query.weight"]), ("gpart_only", ["query.weight", "query.bias"]),
                          ("all", ["query.weight", "query.bias"])):
        plan = plan_modules(GPartConfig(d=3, target_modules=("query",), bias=bias), shapes)
        assert plan.param_names() == [f"bert.encoder.layer.0.attention.self.{e}" for e in entries]


def test_layers_to_transform():
    shapes = shapes_of(bert_sd(3))

    def pick(**kw):
        return list(plan_modules(GPartConfig(d=3, **kw), shapes).modules)
    assert pick(target_modules=("query",), layers_to_transform=[0, 2]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.2.attention.self.query"]
    assert pick(target_modules=("query",), layers_to_transform=1, layers_pattern="layer") == [
        "bert.encoder.layer.1.attention.self.query"]
    with pytest.raises(InteropError, match=r"lists layers \[5\] that this base does not have"):
        pick(target_modules=("query",), layers_to_transform=[0, 5])
    with pytest.raises(InteropError, match="selects none of the base's layers"):
        pick(target_modules=("query",), layers_to_transform=[7])


def test_refusals_say_what_the_base_has():
    shapes = shapes_of(bert_sd(1))
    with pytest.raises(InteropError, match=r"matched no module of the base \(modules: .*query"):
        plan_modules(GPartConfig(d=3, target_modules=("qkv",)), shapes)
    with pytest.raises(InteropError, match="not 2-D"):
        plan_modules(GPartConfig(d=3, target_modules=("LayerNorm",)), shapes | {"x.LayerNorm.weight": (4,)},
                     module_order=["x.LayerNorm"])
    with pytest.raises(InteropError, match=r"d = 4096 exceeds N = 32"):
        plan_modules(GPartConfig(d=4096, target_modules=("query", "value")), shapes)

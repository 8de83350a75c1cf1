"""Paths: one canonical string per leaf (linen dicts, nnx state and nnx Modules alike), the
natural order that numbers the adapted weights, and transformer-block indices."""

import json
import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from gpart_jax import paths as tree_paths

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"


class Block(nnx.Module):
    def __init__(self, rngs):
        self.query = nnx.Linear(4, 4, rngs=rngs)
        self.value = nnx.Linear(4, 3, rngs=rngs)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([Block(rngs) for _ in range(2)])
        self.count = nnx.BatchStat(jnp.zeros(()))


def as_linen_dict():
    return {"count": jnp.zeros(()),
            "layers": {str(i): {"query": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
                                "value": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
                       for i in range(2)}}


def test_natural_order_golden():
    doc = json.loads((GOLDEN / "natural_order.json").read_text())
    assert tree_paths.natural_sorted(doc["input"]) == doc["expected"]
    exp = doc["expected"]
    assert exp.index("params/encoder/layer_2/attention/key/kernel") < exp.index(
        "params/encoder/layer_10/attention/key/kernel")
    assert exp.index("model/layers/9/self_attn/k_proj/kernel") < exp.index(
        "model/layers/10/self_attn/k_proj/kernel")
    assert exp[:3] == ["a/b", "a/b/c", "a/c"]


def test_natural_key_rules():
    assert tree_paths.natural_sorted(["layer_10", "layer_2", "layer_1"]) == ["layer_1", "layer_2", "layer_10"]
    assert tree_paths.natural_sorted(["01", "1"]) == ["1", "01"]  # equal integers: the shorter first
    assert tree_paths.natural_sorted(["hx", "h1"]) == ["h1", "hx"]  # digits before non-digits
    assert tree_paths.natural_sorted(["a/c", "a/b/c", "a/b"]) == ["a/b", "a/b/c", "a/c"]
    assert tree_paths.natural_key("h2/x") < tree_paths.natural_key("h10/x")
    assert tree_paths.natural_key("h10/x") < tree_paths.natural_key("h10a/x")


def test_key_path_to_str_writes_every_key_kind():
    tree = {"a": [{"b": jnp.ones(1)}, (jnp.ones(1),)]}
    flat, _ = tree_paths.leaves_with_paths(tree)
    assert [p for p, _ in flat] == ["a/0/b", "a/1/0"]
    keys = (jax.tree_util.DictKey("x"), jax.tree_util.GetAttrKey("y"),
            jax.tree_util.SequenceKey(3), jax.tree_util.FlattenedIndexKey(7))
    assert tree_paths.key_path_to_str(keys) == "x/y/3/7"
    # Only an attribute named value (the nnx Variable's) is dropped, never a dict key "value".
    attn = jax.tree_util.DictKey("attn")
    assert tree_paths.key_path_to_str((attn, jax.tree_util.GetAttrKey("value"))) == "attn"
    assert tree_paths.key_path_to_str((attn, jax.tree_util.DictKey("value"))) == "attn/value"


def test_linen_dict_nnx_state_and_module_give_the_same_paths():
    model = Net(nnx.Rngs(0))
    expected = [p for p, _ in tree_paths.leaves_with_paths(as_linen_dict())[0]]
    assert "layers/1/value/kernel" in expected
    for tree in (model, nnx.state(model)):
        assert [p for p, _ in tree_paths.leaves_with_paths(tree)[0]] == expected
    params_only = [p for p, _ in tree_paths.leaves_with_paths(nnx.state(model, nnx.Param))[0]]
    assert params_only == [p for p in expected if p != "count"]


def test_leaves_with_paths_round_trips_through_the_treedef():
    model = Net(nnx.Rngs(0))
    flat, treedef = tree_paths.leaves_with_paths(nnx.state(model))
    rebuilt = jax.tree_util.tree_unflatten(treedef, [leaf + 1 for _, leaf in flat])
    assert float(rebuilt["count"][...]) == 1.0
    assert all(hasattr(leaf, "shape") and not isinstance(leaf, nnx.Variable) for _, leaf in flat)


def test_holders_expose_the_nnx_variable():
    model = Net(nnx.Rngs(0))
    for tree in (model, nnx.state(model)):
        held = tree_paths.holders(tree)
        assert isinstance(held["layers/0/query/kernel"], nnx.Param)
        assert isinstance(held["count"], nnx.BatchStat)
        assert held["layers/0/value/kernel"].shape == (4, 3)
    plain = tree_paths.holders(as_linen_dict())
    assert isinstance(plain["layers/0/query/kernel"], jax.Array)


def test_module_of_and_leaf_name():
    assert tree_paths.module_of("params/layer_0/query/kernel") == "params/layer_0/query"
    assert tree_paths.leaf_name("params/layer_0/query/kernel") == "kernel"
    assert (tree_paths.module_of("bias"), tree_paths.leaf_name("bias")) == ("", "bias")


@pytest.mark.parametrize("path,expected", [
    ("model/layers/12/mlp/kernel", (12, "model/layers/12")),
    ("transformer/h3/attn/kernel", (3, "transformer/h3")),
    ("blocks_7/x", (7, "blocks_7")),
    ("params/encoder/layer_0/query/kernel", (0, "params/encoder/layer_0")),
    ("params/hx3/kernel", None),
    ("params/layer_2x/kernel", None),  # the match must end at a component boundary
    ("params/xlayer_2/kernel", None),  # ... and start at one
])
def test_layer_index(path, expected):
    assert tree_paths.layer_index(path) == expected


def test_layer_index_custom_pattern():
    assert tree_paths.layer_index("encoder/stage2/kernel", r"stage(\d+)") == (2, "encoder/stage2")
    with pytest.raises(ValueError, match="capture the layer index"):
        tree_paths.layer_index("encoder/stage/kernel", r"(stage)")

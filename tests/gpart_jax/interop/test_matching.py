"""Which modules a reference adapter targets: PEFT's matcher, in the library's filters."""

import pytest

from gpart_jax.filters import select, to_predicate
from gpart_jax.interop import GPartConfig, is_targeted, target_filter
from gpart_jax.interop.matching import peft_layer_index, targeted
from tests.gpart_jax.interop.helpers import bert_sd, to_flax

NAMES = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(3) for m in ("query", "key", "value")]


def config(**kw):
    return GPartConfig(d=3, **kw)


def test_a_list_matches_whole_names_or_dotted_suffixes():
    c = config(target_modules=("query", "self.value"))
    assert targeted(c, NAMES) == [n for n in NAMES if n.endswith(("query", "value"))]
    assert is_targeted(c, "query")  # equal to an entry
    assert not is_targeted(config(target_modules=("query",)), "x.myquery")  # not a suffix component
    assert not is_targeted(config(target_modules=("query",)), "x.query.inner")


def test_a_regex_must_match_the_whole_name():
    c = config(target_modules=r".*\.layer\.[01]\..*\.(query|value)")
    assert targeted(c, NAMES) == [n for n in NAMES if ".layer.2." not in n and not n.endswith("key")]
    assert targeted(config(target_modules="query"), NAMES) == []  # no search, a full match


def test_layers_to_transform_applies_to_suffix_matches_only():
    c = config(target_modules=("query", "bert.encoder.layer.1.attention.self.value"),
               layers_to_transform=[0])
    assert targeted(c, NAMES) == ["bert.encoder.layer.0.attention.self.query",
                                  "bert.encoder.layer.1.attention.self.value"]
    assert targeted(config(target_modules=("key",), layers_to_transform=2, layers_pattern="layer"),
                    NAMES) == ["bert.encoder.layer.2.attention.self.key"]
    assert targeted(config(target_modules=("key",), layers_to_transform=[1], layers_pattern="blocks"),
                    NAMES) == []


def test_layer_index():
    assert peft_layer_index("bert.encoder.layer.3.attention.self.query") == 3
    assert peft_layer_index("model.layers.12.mlp.up_proj", "layers") == 12
    assert peft_layer_index("model.layers.12.mlp.up_proj", ["blocks", "layers"]) == 12
    assert peft_layer_index("a.h.1.b.layer.4.c") == 4  # the last indexed component
    assert peft_layer_index("classifier") is None
    assert peft_layer_index("layers.3") is None  # a component must precede and follow


def test_the_filter_works_on_flax_params():
    params, _ = to_flax(bert_sd(2), prefix="")
    chosen = select(params, target_filter(config(target_modules=("query",))), modules="weights")
    assert chosen == [f"params/bert/encoder/layer_{i}/attention/self/query/kernel" for i in range(2)]
    predicate = to_predicate(target_filter(config(target_modules=("query",))))
    assert predicate("bert/encoder/layer/0/attention/self/query", None)


@pytest.mark.parametrize("targets", [("dense",), r".*dense"])
def test_targets_with_many_matches(targets):
    names = ["a.dense", "a.b.dense", "a.densex", "dense"]
    assert targeted(config(target_modules=targets), names) == ["a.dense", "a.b.dense", "dense"]

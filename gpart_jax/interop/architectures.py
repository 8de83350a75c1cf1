"""Module definition order of the architectures the project knows, written as data.

The reference numbers the adapted weights in torch's ``named_modules()`` order, which is the
order in which a model's ``__init__`` defines its submodules, not the alphabetical order of the
names (and not a safetensors file's key order, which is sorted). A state dict loaded from
safetensors therefore does not carry the order; for these architectures it is written here once:

- BERT / RoBERTa (``BertModel``, ``RobertaModel`` and their task heads): embeddings, then
  ``encoder.layer.<i>`` for i = 0, 1, 2, ... each defining ``attention.self.query``, ``key``,
  ``value``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``; then the
  pooler and the classification head.
- Llama (``LlamaModel``, ``LlamaForCausalLM``, ...): ``embed_tokens``, then ``layers.<i>`` with
  ``self_attn.q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``mlp.gate_proj``, ``up_proj``,
  ``down_proj``; then ``lm_head`` or ``score``.
- ViT (Hugging Face ``ViTModel`` names): embeddings, then ``encoder.layer.<i>`` with
  ``attention.attention.query``, ``key``, ``value``, ``attention.output.dense``,
  ``intermediate.dense``, ``output.dense``; then the pooler and the classifier.

Only Linear modules (a 2-D ``weight``) matter; embeddings, norms and convolutions hold no
position in the reference's index space (embedding tables are listed so that targeting one is
refused rather than numbered).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Definition order of one architecture family.

    Attributes:
      name: the family's name (``"bert"``, ``"llama"``, ``"vit"``).
      signature: a module-name fragment found only in this family (used to detect it).
      stack: the name of the ``ModuleList`` of transformer blocks (``layer`` or ``layers``).
      layer_modules: the Linear modules of one block, as names relative to the block, in order.
      before: Linear modules defined before the block stack (matched as name suffixes).
      after: Linear modules defined after it, in order (pooler, heads).
      embeddings: 2-D weights that belong to embedding tables, not Linear modules.
    """

    name: str
    signature: str
    stack: str
    layer_modules: tuple[str, ...]
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    embeddings: tuple[str, ...] = ()


BERT = Architecture(
    name="bert",
    signature="attention.self.query",
    stack="layer",
    layer_modules=("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense"),
    after=("pooler.dense", "classifier", "classifier.dense", "classifier.out_proj"),
    embeddings=("word_embeddings", "position_embeddings", "token_type_embeddings"),
)

LLAMA = Architecture(
    name="llama",
    signature="self_attn.q_proj",
    stack="layers",
    layer_modules=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    after=("lm_head", "score"),
    embeddings=("embed_tokens",),
)

VIT = Architecture(
    name="vit",
    signature="attention.attention.query",
    stack="layer",
    layer_modules=("attention.attention.query", "attention.attention.key",
                   "attention.attention.value", "attention.output.dense", "intermediate.dense",
                   "output.dense"),
    after=("pooler.dense", "classifier"),
)

ARCHITECTURES: dict[str, Architecture] = {"bert": BERT, "roberta": BERT, "llama": LLAMA, "vit": VIT}


def _has_fragment(name: str, fragment: str) -> bool:
    """True when ``fragment`` occurs in ``name`` as whole dot-separated components."""
    return f".{fragment}." in f".{name}."


def detect_architecture(module_names: Iterable[str]) -> Architecture | None:
    """The known family whose signature occurs among ``module_names``, or ``None``.

    ``ViT``'s ``attention.attention.query`` is tested before BERT's ``attention.self.query``;
    the signatures are disjoint, so the result does not depend on the order of the names.
    """
    names = list(module_names)
    for arch in (VIT, BERT, LLAMA):
        if any(_has_fragment(n, arch.signature) for n in names):
            return arch
    return None


def _suffix_of(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def is_embedding(arch: Architecture, module: str) -> bool:
    """True when ``module`` is one of the architecture's embedding tables (not a Linear)."""
    return any(_suffix_of(module, e) for e in arch.embeddings)


def definition_key(arch: Architecture, module: str) -> tuple[int, int, int] | None:
    """Sort key of ``module`` in the architecture's definition order, or ``None`` if unplaced.

    ``(0, j, 0)`` for the j-th module defined before the block stack, ``(1, i, j)`` for the j-th
    module of block i, ``(2, j, 0)`` after the stack. A module inside the stack that is not one
    of ``layer_modules`` (or any other unknown module) has no key: the caller must then be told
    the order explicitly.
    """
    parts = module.split(".")
    for k in range(len(parts) - 2):
        if parts[k] == arch.stack and parts[k + 1].isdigit():
            rest = ".".join(parts[k + 2:])
            if rest in arch.layer_modules:
                return (1, int(parts[k + 1]), arch.layer_modules.index(rest))
            return None
    for group, names in ((0, arch.before), (2, arch.after)):
        for j, suffix in enumerate(names):
            if _suffix_of(module, suffix):
                return (group, j, 0)
    return None

"""Parameter counts per method, and budgets matched across methods.

The paper's tables compare methods at matched budgets (trainable numbers): GPart and Uni-LoRA
take any ``d``, LoRA's count moves in steps of ``sum_l (in_l + out_l)`` per unit of rank.

    lora_params(base, targets, r) = r * sum_l (in_l + out_l)
    d_for_lora_rank(base, targets, r) = lora_params(base, targets, r)      # GPart / Uni-LoRA d
    lora_rank_for_d(base, targets, d) = the r >= 1 whose count is nearest d (ties: the smaller r)

(MiniLM's query and value kernels, 6 layers of 384 x 384: ``lora_params(..., r=1) = 9,216``.)

``count(method, saved)`` gives what a table quotes: trainable numbers in the method and in the
saved modules, the trainable tensors' bytes, and the bytes stored per adapter (tensors plus an
8-byte seed for methods that regenerate a random structure from one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpart_jax import _validate
from gpart_jax.filters import Filter
from gpart_jax.method import Method, adapted_shapes, tree_nbytes, tree_size

SEED_BYTES = 8


def lora_params(base_params, targets: Filter = ("query/kernel", "value/kernel"), r: int = 1) -> int:
    """Trainable numbers of LoRA of rank ``r``: ``r * sum_l (in_l + out_l)`` over the 2-D targets."""
    r = _validate.positive_int(r, "r (LoRA rank)")
    shapes = adapted_shapes(base_params, targets, matrices="LoRA")
    return r * sum(n_in + n_out for _, (n_in, n_out) in shapes)


def d_for_lora_rank(base_params, targets: Filter = ("query/kernel", "value/kernel"),
                    r: int = 1) -> int:
    """The ``d`` (GPart, Uni-LoRA, Fastfood) with exactly LoRA rank ``r``'s trainable numbers."""
    return lora_params(base_params, targets, r)


def lora_rank_for_d(base_params, targets: Filter = ("query/kernel", "value/kernel"),
                    d: int = 1) -> int:
    """The LoRA rank ``r >= 1`` whose trainable count is nearest ``d`` (ties go to the smaller r)."""
    d = _validate.positive_int(d, "d")
    per_rank = lora_params(base_params, targets, 1)
    low = max(d // per_rank, 1)
    high = low + 1
    return low if abs(low * per_rank - d) <= abs(high * per_rank - d) else high


def count(method: Method, saved: Mapping[str, Any] | None = None) -> dict:
    """What a table quotes for ``method`` and its ``saved`` modules (``{path: leaf}``).

    Returns ``{"method", "trainable", "saved", "total_trainable", "adapted", "trainable_bytes",
    "stored_bytes"}``: numbers in the trainable pytree, in the saved modules, their sum, weights
    the method changes (N), the trainable tensors' bytes, and bytes stored per adapter (tensors,
    plus an 8-byte seed where the method regenerates a structure from a seed).
    """
    trainable_bytes = method.trainable_bytes()
    saved = dict(saved or {})
    n_saved = tree_size(saved)
    return {
        "method": method.name,
        "trainable": method.num_trainable,
        "saved": n_saved,
        "total_trainable": method.num_trainable + n_saved,
        "adapted": method.num_adapted,
        "trainable_bytes": trainable_bytes,
        "stored_bytes": trainable_bytes + tree_nbytes(saved)
        + (SEED_BYTES if "seed" in method.spec() else 0),
    }

"""Parameter counts per method, and budgets matched across methods.

The paper's tables compare methods at matched budgets (trainable numbers): GPart and Uni-LoRA
take any ``d``, LoRA's count moves in steps of ``sum_l (in_l + out_l)`` per unit of rank.

    lora_params(base, targets, r) = r * sum_l (in_l + out_l)
    d_for_lora_rank(base, targets, r) = lora_params(base, targets, r)      # GPart / Uni-LoRA d
    lora_rank_for_d(base, targets, d) = the r >= 1 whose count is nearest d (ties: the smaller r)

(MiniLM's query and value kernels, 6 layers of 384 x 384: ``lora_params(..., r=1) = 9,216``.)

``count(method)`` gives what a table quotes: trainable numbers in the adapter and in the saved
modules, the adapter's tensor bytes, and the bytes stored per adapter (tensors plus an 8-byte
seed for methods that regenerate a random structure from one).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpart_jax.layout import DEFAULT_EXCLUDE, Targets
from gpart_jax.methods.base import Method, check_positive_int, targeted_leaves, tree_nbytes, tree_size
from gpart_jax.trainable import Selector, split

SEED_BYTES = 8


def lora_params(base_params, targets: Targets = ("query/kernel", "value/kernel"), r: int = 1, *,
                exclude: Sequence[str] = DEFAULT_EXCLUDE) -> int:
    """Trainable numbers of LoRA of rank ``r``: ``r * sum_l (in_l + out_l)`` over the 2-D targets."""
    r = check_positive_int(r, "r (LoRA rank)")
    shapes = targeted_leaves(base_params, targets, exclude=exclude, matrices="LoRA")
    return r * sum(n_in + n_out for n_in, n_out in shapes.values())


def d_for_lora_rank(base_params, targets: Targets = ("query/kernel", "value/kernel"), r: int = 1,
                    *, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> int:
    """The ``d`` (GPart, Uni-LoRA, Fastfood) with exactly LoRA rank ``r``'s trainable numbers."""
    return lora_params(base_params, targets, r, exclude=exclude)


def lora_rank_for_d(base_params, targets: Targets = ("query/kernel", "value/kernel"), d: int = 1,
                    *, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> int:
    """The LoRA rank ``r >= 1`` whose trainable count is nearest ``d`` (ties go to the smaller r)."""
    d = check_positive_int(d, "d")
    per_rank = lora_params(base_params, targets, 1, exclude=exclude)
    low = max(d // per_rank, 1)
    high = low + 1
    return low if abs(low * per_rank - d) <= abs(high * per_rank - d) else high


def count(method: Method, params=None, modules_to_save: Selector = ()) -> dict:
    """What a table quotes for ``method`` (plus the saved modules of ``params``, if given).

    Returns ``{"method", "trainable", "saved", "total_trainable", "adapted", "adapter_bytes",
    "stored_bytes"}``: adapter numbers, saved-module numbers, their sum, weights the method
    changes (N), the adapter's tensor bytes, and bytes stored per adapter (tensors, plus an
    8-byte seed where the method regenerates a structure from a seed).
    """
    meta = method.metadata()
    adapter_bytes = method.adapter_bytes()
    saved = split(params, modules_to_save)[0] if params is not None and modules_to_save else {}
    n_saved = tree_size(saved)
    return {
        "method": meta.get("method", method.name),
        "trainable": method.num_trainable,
        "saved": n_saved,
        "total_trainable": method.num_trainable + n_saved,
        "adapted": method.num_adapted,
        "adapter_bytes": adapter_bytes,
        "stored_bytes": adapter_bytes + tree_nbytes(saved) + (SEED_BYTES if "seed" in meta else 0),
    }


def format_counts(rows: Sequence[dict]) -> str:
    """A markdown table of ``count`` results (numbers with thousands separators)."""
    cols = [("method", "method"), ("trainable", "trainable"), ("saved", "saved modules"),
            ("adapted", "weights adapted (N)"), ("stored_bytes", "bytes stored")]
    lines = ["| " + " | ".join(title for _, title in cols) + " |",
             "|" + "---|" * len(cols)]
    for row in rows:
        cells = [row[k] if isinstance(row[k], str) else f"{row[k]:,}" for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""Layout: the adapted leaves of a parameter pytree, in the global order that numbers their weights.

The layout is data: the ordered tuple of ``LayoutEntry(path, shape, element_order, is_bias)``.
Concatenating the adapted leaves in that order, each enumerated in its element order, defines
the global positions ``0 .. N-1`` that a partition assigns to groups. Its fingerprint (sha256 of
its canonical JSON with ``d``, scheme and scope) identifies a partition's structure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import jax

from gpart_jax import _validate
from gpart_jax.errors import LayoutMismatchError, TargetError
from gpart_jax.filters import Filter, is_float, select
from gpart_jax.paths import leaf_name, leaves_with_paths, natural_sorted

ELEMENT_ORDERS = ("native", "torch")
MAX_LEAF_SIZE = 2**32 - 1  # local indices are uint32


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    """One adapted leaf: its path, shape, element order and whether it is a kernel's bias.

    ``element_order="native"`` enumerates the array in its own row-major order. ``"torch"``
    applies to 2-D leaves named ``kernel``, stored ``(in, out)`` (flax's convention): they are
    enumerated as the PyTorch weight ``(out, in)`` row-major, so element ``(a, b)`` has local
    index ``b * in + a``. Every other leaf (biases, embeddings, kernels of other ranks) is native.
    """

    path: str
    shape: tuple[int, ...]
    element_order: str = "native"
    is_bias: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> list:
        return [self.path, list(self.shape), self.element_order, self.is_bias]

    @classmethod
    def from_json(cls, item) -> LayoutEntry:
        path, shape, order, is_bias = item
        return cls(str(path), tuple(int(s) for s in shape), str(order), bool(is_bias))


Layout = tuple[LayoutEntry, ...]


def _bias_path(kernel_path: str) -> str | None:
    parent, _, name = kernel_path.rpartition("/")
    if name != "kernel":
        return None
    return f"{parent}/bias" if parent else "bias"


def build(params, targets: Filter, *, order: Sequence[str] | None = None,
          element_order: str = "native", bias: bool = False) -> Layout:
    """The layout of the leaves of ``params`` that ``targets`` selects (``gpart_jax.filters``).

    ``order``: the explicit global order of the selected paths (default: natural order).
    ``element_order``: ``"torch"`` enumerates 2-D ``kernel`` leaves as PyTorch weights
    ``(out, in)`` row-major, as the reference implementation numbers them.
    ``bias``: each selected kernel's own ``bias`` follows it (the reference's ``gpart_only``).
    Raises ``TargetError`` for a selection that is empty, holds non-floating-point leaves or
    leaves too large to index, or disagrees with ``order``.
    """
    return from_paths(leaves_with_paths(params)[0], select(params, targets), order=order,
                      element_order=element_order, bias=bias)


def from_paths(flat: Sequence[tuple[str, Any]], chosen: Sequence[str], *,
               order: Sequence[str] | None = None, element_order: str = "native",
               bias: bool = False) -> Layout:
    """``build`` from ``(path, leaf)`` pairs and the chosen paths (the selection already made)."""
    _validate.choice(element_order, "element_order", ELEMENT_ORDERS)
    leaves = dict(flat)
    bad = [f"{p} ({getattr(leaves[p], 'dtype', type(leaves[p]).__name__)})" for p in chosen
           if not is_float(leaves[p])]
    if bad:
        raise TargetError("only floating-point leaves can be adapted; the selection holds "
                          + ", ".join(bad[:5]) + "; narrow the targets")
    shapes = {p: tuple(int(s) for s in getattr(leaf, "shape", ())) for p, leaf in flat}
    if order is None:
        ordered = natural_sorted(chosen)
    else:
        ordered = [str(p) for p in order]
        missing = [p for p in chosen if p not in set(ordered)]
        extra = [p for p in ordered if p not in set(chosen)]
        dup = sorted({p for p in ordered if ordered.count(p) > 1})
        if missing or extra or dup:
            raise TargetError(
                "order must list every targeted path exactly once; "
                + (f"missing {missing[:5]}; " if missing else "")
                + (f"not targeted {extra[:5]}; " if extra else "")
                + (f"repeated {dup[:5]}" if dup else ""))
    entries = []
    for path in ordered:
        shape = shapes[path]
        is_kernel = leaf_name(path) == "kernel" and len(shape) == 2
        leaf_order = "torch" if element_order == "torch" and is_kernel else "native"
        entries.append(LayoutEntry(path, shape, leaf_order, False))
        if bias:
            bpath = _bias_path(path)
            if bpath is not None and bpath in shapes and bpath not in chosen:
                entries.append(LayoutEntry(bpath, shapes[bpath], "native", True))
    for e in entries:
        if e.size > MAX_LEAF_SIZE:
            raise TargetError(f"leaf {e.path} has {e.size} elements; leaves of 2**32 or more "
                              f"elements cannot be adapted")
    return tuple(entries)


def fingerprint(layout: Sequence[LayoutEntry], d: int, scheme: str, scope: str) -> str:
    """sha256 of the canonical JSON of (layout, d, scheme, scope); dtypes are not part of it."""
    doc = {"d": int(d), "layout": [e.to_json() for e in layout], "scheme": scheme, "scope": scope}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(expected: Sequence[LayoutEntry], flat: Sequence[tuple[str, Any]],
                limit: int = 5) -> list[str]:
    """The first ``limit`` ways in which ``flat`` (``(path, leaf)`` pairs) misses the layout:
    missing paths, other shapes, leaves that are not floating-point arrays."""
    leaves = dict(flat)
    problems = []
    for e in expected:
        leaf = leaves.get(e.path)
        shape = tuple(getattr(leaf, "shape", ())) if leaf is not None else None
        if leaf is None:
            problems.append(f"{e.path}: missing (expected shape {e.shape})")
        elif shape != e.shape:
            problems.append(f"{e.path}: shape {shape}, expected {e.shape}")
        elif not is_float(leaf):
            problems.append(f"{e.path}: dtype {getattr(leaf, 'dtype', type(leaf).__name__)}, "
                            f"expected a floating-point array")
        if len(problems) >= limit:
            break
    return problems


def _inside_shard_map_hint() -> str:
    """Why shapes differ when the caller is inside ``shard_map``: each device sees its block."""
    manual = jax.sharding.get_abstract_mesh().manual_axes
    if not manual:
        return ""
    return (f" (inside shard_map over {', '.join(manual)}, a base split by in_specs is each "
            f"device's local block, not the model's shape: pass the base replicated, in_specs "
            f"P(), or apply the method outside shard_map under jit with the base sharded by "
            f"NamedSharding, which keeps each delta sharded like its leaf)")


def check_params(expected: Sequence[LayoutEntry], flat: Sequence[tuple[str, Any]],
                 what: str, *, arrays: bool = False) -> None:
    """Raise ``LayoutMismatchError`` unless ``flat`` holds every entry's path with its shape, of a
    floating-point dtype (``what`` names the method or adapter in the message); with ``arrays``
    also as arrays, not ``jax.ShapeDtypeStruct`` (applying a method needs the weights)."""
    problems = differences(expected, flat)
    if problems:
        raise LayoutMismatchError(f"base_params does not match {what}: " + "; ".join(problems)
                                  + _inside_shard_map_hint())
    paths = {e.path for e in expected}
    abstract = [p for p, leaf in flat if p in paths and isinstance(leaf, jax.ShapeDtypeStruct)]
    if arrays and abstract:
        raise LayoutMismatchError(f"base_params holds jax.ShapeDtypeStruct at {abstract[0]}: shapes "
                                  f"are enough to build a method, but applying it needs the arrays")

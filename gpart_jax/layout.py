"""Layout: which leaves of a parameter pytree are adapted, and in which global order.

A *path* is one canonical string per leaf: its keys joined by ``/``
(``"params/encoder/layer_0/query/kernel"``). Dict keys, attribute names and sequence indices
are written as they are (integers as digits); the ``value`` attribute through which a flax nnx
``Variable`` holds its array is dropped, so linen dicts and nnx state give the same paths.

The layout is data: the ordered tuple of ``LayoutEntry(path, shape, element_order, is_bias)``.
Concatenating the adapted leaves in that order, each enumerated in its element order, defines
the global positions ``0 .. N-1`` that the partition assigns to groups.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

ELEMENT_ORDERS = ("native", "torch")
DEFAULT_EXCLUDE = ("classifier", "lm_head", "head")
DEFAULT_LAYER_PATTERN = r"(layers|layer|h|block|blocks)[_/]?(\d+)"

Targets = str | Sequence[str] | Callable[[str, Any], bool]


# --------------------------------------------------------------------------- paths

def _key_str(key) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def key_path_to_str(key_path: Sequence[Any]) -> str:
    """Canonical path of a JAX key path (nnx ``Variable.value`` attribute dropped)."""
    keys = list(key_path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name in (
            "value", "raw_value"):
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


def flatten_with_paths(tree) -> tuple[list[tuple[str, Any]], Any]:
    """``([(path, leaf), ...], treedef)`` in the pytree's own flattening order."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(key_path_to_str(kp), leaf) for kp, leaf in leaves], treedef


# --------------------------------------------------------------------------- natural order

_RUNS = re.compile(r"\d+|\D+")


def natural_key(path: str) -> tuple:
    """Sort key of the default global order.

    The path is split into components at ``/``, each component into runs of digits and
    non-digits. A digit run compares as the integer it spells (ties broken by its length, so
    ``"1"`` < ``"01"``), a non-digit run as a string, and a digit run sorts before a non-digit
    run at the same place. Components, then paths, compare lexicographically, so
    ``layer_2`` < ``layer_10`` and ``a/b`` < ``a/b/c`` < ``a/c``.
    """
    key = []
    for component in path.split("/"):
        runs = []
        for run in _RUNS.findall(component):
            if run.isdigit():
                runs.append((0, int(run), len(run), ""))
            else:
                runs.append((1, 0, 0, run))
        key.append(tuple(runs))
    return tuple(key)


def natural_sorted(paths: Iterable[str]) -> list[str]:
    return sorted(paths, key=natural_key)


# --------------------------------------------------------------------------- targets

def _is_float_leaf(leaf) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _components(path: str) -> list[str]:
    return path.split("/") if path else []


def _suffix_match(path: str, suffix: str) -> bool:
    want = _components(suffix)
    have = _components(path)
    return len(want) <= len(have) and have[len(have) - len(want):] == want


def _under(path: str, names: Sequence[str]) -> bool:
    """True when some ``name`` (one or more components) occurs among the path's parents."""
    parents = _components(path)[:-1]
    for name in names:
        want = _components(name.strip("/"))
        if any(parents[i:i + len(want)] == want for i in range(len(parents) - len(want) + 1)):
            return True
    return False


def layer_index(path: str, pattern: str = DEFAULT_LAYER_PATTERN) -> tuple[int, str] | None:
    """``(layer index, block prefix)`` of the first path component matching ``pattern``.

    The match must start at a component boundary and end at one (``layers/3``, ``layer_3``,
    ``h3`` and ``blocks_3`` all give 3). ``None`` when no component matches.
    """
    rx = re.compile(r"(?:^|/)(?:" + pattern + r")(?=/|$)")
    m = rx.search(path)
    if m is None:
        return None
    digits = [g for g in m.groups() if g is not None and g.isdigit()]
    if not digits:
        raise ValueError(f"layer_pattern {pattern!r} must capture the layer index as digits")
    return int(digits[-1]), path[: m.end()]


def select_targets(
    flat: list[tuple[str, Any]],
    targets: Targets,
    *,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    layers: Sequence[int] | None = None,
    layer_pattern: str | None = None,
) -> list[str]:
    """Paths selected by ``targets`` (see ``GPart.create``), in pytree order."""
    if isinstance(targets, str) and targets == "all-linear":
        def pick(path, leaf):
            return (path.rsplit("/", 1)[-1] == "kernel" and len(getattr(leaf, "shape", ())) == 2
                    and _is_float_leaf(leaf) and not _under(path, exclude))
    elif isinstance(targets, str):
        try:
            rx = re.compile(targets)
        except re.error as e:
            raise ValueError(f"targets: invalid regular expression {targets!r}: {e}") from None

        def pick(path, leaf):
            return rx.fullmatch(path) is not None
    elif isinstance(targets, (list, tuple)):
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise TypeError(f"targets: a list or tuple of targets must hold non-empty path "
                            f"suffixes (strings), got {targets!r}")
        suffixes = [t.strip("/") for t in targets]

        def pick(path, leaf):
            return any(_suffix_match(path, s) for s in suffixes)
    elif callable(targets):
        pick = targets
    else:
        raise TypeError(f"targets must be a regex string, 'all-linear', a list/tuple of path "
                        f"suffixes or a callable(path, leaf) -> bool, got {type(targets).__name__}")

    chosen = [path for path, leaf in flat if pick(path, leaf)]
    if layers is not None:
        wanted = {int(i) for i in layers}
        pattern = layer_pattern or DEFAULT_LAYER_PATTERN
        chosen = [p for p in chosen if (li := layer_index(p, pattern)) is not None and li[0] in wanted]
    if not chosen:
        available = [f"{p} {tuple(getattr(leaf, 'shape', ()))}" for p, leaf in flat]
        shown = "\n  ".join(available[:200])
        more = f"\n  ... and {len(available) - 200} more" if len(available) > 200 else ""
        extra = f" in layers {sorted(layers)}" if layers is not None else ""
        raise ValueError(f"targets {targets!r} matched no parameter{extra}. Available paths:\n  "
                         f"{shown}{more}")
    by_path = dict(flat)
    bad = [p for p in chosen if not _is_float_leaf(by_path[p])]
    if bad:
        raise ValueError(
            "targets must select floating-point leaves only; these are not: "
            + ", ".join(f"{p} ({getattr(by_path[p], 'dtype', type(by_path[p]).__name__)})"
                        for p in bad[:10]))
    return chosen


# --------------------------------------------------------------------------- the layout

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


def _bias_path(kernel_path: str) -> str | None:
    parent, _, name = kernel_path.rpartition("/")
    if name != "kernel":
        return None
    return f"{parent}/bias" if parent else "bias"


def build_layout(
    flat: list[tuple[str, Any]],
    chosen: Sequence[str],
    *,
    order: Sequence[str] | None = None,
    element_order: str = "native",
    bias: bool = False,
) -> tuple[LayoutEntry, ...]:
    """Order the chosen paths (natural order, or ``order``) and attach biases if asked."""
    if element_order not in ELEMENT_ORDERS:
        raise ValueError(f"element_order must be one of {ELEMENT_ORDERS}, got {element_order!r}")
    shapes = {p: tuple(int(s) for s in getattr(leaf, "shape", ())) for p, leaf in flat}
    if order is None:
        ordered = natural_sorted(chosen)
    else:
        ordered = [str(p) for p in order]
        missing = [p for p in chosen if p not in set(ordered)]
        extra = [p for p in ordered if p not in set(chosen)]
        dup = sorted({p for p in ordered if ordered.count(p) > 1})
        if missing or extra or dup:
            raise ValueError(
                "order must list every targeted path exactly once; "
                + (f"missing {missing[:5]}; " if missing else "")
                + (f"not targeted {extra[:5]}; " if extra else "")
                + (f"repeated {dup[:5]}" if dup else ""))
    entries = []
    for path in ordered:
        shape = shapes[path]
        is_kernel = path.rsplit("/", 1)[-1] == "kernel" and len(shape) == 2
        leaf_order = "torch" if element_order == "torch" and is_kernel else "native"
        entries.append(LayoutEntry(path, shape, leaf_order, False))
        if bias:
            bpath = _bias_path(path)
            if bpath is not None and bpath in shapes and bpath not in chosen:
                entries.append(LayoutEntry(bpath, shapes[bpath], "native", True))
    for e in entries:
        if e.size >= 2**32:
            raise ValueError(f"leaf {e.path} has {e.size} elements; leaves of 2**32 or more "
                             f"elements are not supported")
    return tuple(entries)


def fingerprint(layout: Sequence[LayoutEntry], d: int, scheme: str, scope: str) -> str:
    """sha256 of the canonical JSON of (layout, d, scheme, scope); dtypes are not part of it."""
    doc = {"d": int(d), "layout": [e.to_json() for e in layout], "scheme": scheme, "scope": scope}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def describe_mismatch(expected: Sequence[LayoutEntry], flat: list[tuple[str, Any]],
                      limit: int = 5) -> list[str]:
    """Differences between a layout and ``flat`` (``flatten_with_paths``'s leaves), first ``limit``."""
    shapes = {p: tuple(getattr(leaf, "shape", ())) for p, leaf in flat}
    problems = []
    for e in expected:
        if e.path not in shapes:
            problems.append(f"{e.path}: missing (expected shape {e.shape})")
        elif shapes[e.path] != e.shape:
            problems.append(f"{e.path}: shape {shapes[e.path]}, expected {e.shape}")
        if len(problems) >= limit:
            break
    return problems

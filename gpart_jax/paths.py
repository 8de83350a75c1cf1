"""Paths: one canonical string per leaf of a parameter pytree, and the natural order of paths.

A path is the leaf's keys joined by ``/`` (``"params/encoder/layer_0/query/kernel"``). Dict keys,
attribute names and sequence indices are written as they are (integers as digits). The
``value`` attribute through which a flax nnx ``Variable`` holds its array is dropped, so a
linen dict, an nnx ``State`` and an nnx ``Module`` with the same structure give the same paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax

try:  # flax is a dependency; nnx Variables are recognised when it imports
    from flax import nnx as _nnx

    _VARIABLE: tuple[type, ...] = (_nnx.Variable,)
except ImportError:  # pragma: no cover
    _VARIABLE = ()


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
    """Canonical path of a JAX key path (an nnx ``Variable``'s ``value`` attribute dropped)."""
    keys = list(key_path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name in (
            "value", "raw_value"):
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


def leaves_with_paths(tree) -> tuple[list[tuple[str, Any]], Any]:
    """``([(path, array), ...], treedef)`` in the pytree's own flattening order."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(key_path_to_str(kp), leaf) for kp, leaf in leaves], treedef


def holders(tree) -> dict[str, Any]:
    """``{path: what holds the leaf}``: the nnx ``Variable`` (``nnx.Param``, ...) where there is
    one, else the array itself. Filters see these, so a callable can test ``isinstance(leaf,
    nnx.Param)``; a Variable answers ``.shape`` and ``.dtype`` like its array."""
    if not _VARIABLE:
        return dict(leaves_with_paths(tree)[0])
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, _VARIABLE))
    return {key_path_to_str(kp): leaf for kp, leaf in flat}


def module_of(path: str) -> str:
    """The module path of a leaf path: everything before its last component."""
    return path.rpartition("/")[0]


def leaf_name(path: str) -> str:
    """The last component of a path (``"kernel"``, ``"bias"``)."""
    return path.rpartition("/")[2]


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
    """``paths`` in natural order (see ``natural_key``)."""
    return sorted(paths, key=natural_key)


DEFAULT_LAYER_PATTERN = r"(layers|layer|h|block|blocks)[_/]?(\d+)"


def layer_index(path: str, pattern: str = DEFAULT_LAYER_PATTERN) -> tuple[int, str] | None:
    """``(layer index, block prefix)`` of the first path component matching ``pattern``.

    The match must start at a component boundary and end at one (``layers/3``, ``layer_3``,
    ``h3`` and ``blocks_3`` all give 3); the last group of digits it captures is the index.
    ``None`` when no component matches.
    """
    rx = re.compile(r"(?:^|/)(?:" + pattern + r")(?=/|$)")
    m = rx.search(path)
    if m is None:
        return None
    digits = [g for g in m.groups() if g is not None and g.isdigit()]
    if not digits:
        raise ValueError(f"layer_pattern {pattern!r} must capture the layer index as digits")
    return int(digits[-1]), path[: m.end()]

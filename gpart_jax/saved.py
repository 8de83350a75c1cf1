"""Saved modules: leaves trained in full next to a method (PEFT's ``modules_to_save``).

A new classifier head trains in full whatever the method. It travels as ``saved``, a flat
mapping ``{path: leaf}``, the same way in every entry point: ``save_adapter(..., saved=)``,
``load_adapter(...).saved``, ``merge(..., saved=)``, ``unmerge(..., saved=)``, and the
optimizer of ``make_optimizer``, which trains the pair ``(trainable, saved)``. The params a model
is applied with are

    params = join(saved, method.apply(trainable, base_params))

Works on flax linen dicts, nnx state and nnx Modules alike (paths as in ``gpart_jax.paths``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from gpart_jax.errors import LayoutMismatchError, TargetError
from gpart_jax.filters import Filter, select
from gpart_jax.paths import leaves_with_paths


def saved_modules(params, modules: Filter) -> dict[str, Any]:
    """``{path: leaf}`` of every leaf under ``modules`` (a filter, ``gpart_jax.filters``).

    A module name selects every leaf under the module (``"classifier"``: its kernel and bias);
    an empty tuple selects nothing.
    """
    if isinstance(modules, (list, tuple)) and not modules:
        return {}
    flat = dict(leaves_with_paths(params)[0])
    return {p: flat[p] for p in select(params, modules, modules="all", what="saved modules")}


def join(saved: Mapping[str, Any], params) -> Any:
    """``params`` with the leaves named in ``saved`` replaced (structure and other leaves kept).

    Every saved leaf must exist in ``params`` with the same shape (a 3-class head on a 5-class
    base is a ``LayoutMismatchError`` naming the leaf), else nothing is replaced.
    """
    if not saved:
        return params
    flat, treedef = leaves_with_paths(params)
    shapes = {p: tuple(np.shape(leaf)) for p, leaf in flat}
    problems = []
    for p, leaf in saved.items():
        if p not in shapes:
            problems.append(f"{p}: not in the params")
        elif tuple(np.shape(leaf)) != shapes[p]:
            problems.append(f"{p}: shape {tuple(np.shape(leaf))}, the params have {shapes[p]}")
    if problems:
        raise LayoutMismatchError("the saved modules do not fit these params: "
                                  + "; ".join(problems[:5]) + " (trained for another model or "
                                  "another number of classes?)")
    return jax.tree_util.tree_unflatten(treedef, [saved.get(p, leaf) for p, leaf in flat])


def check_disjoint(method, saved: Mapping[str, Any]) -> None:
    """Refuse saved leaves the method also adapts: a leaf is either adapted or trained in full."""
    overlap = sorted(set(method.target_paths) & set(saved))
    if overlap:
        raise TargetError(f"the saved modules overlap the adapted leaves: {overlap[:5]}; a leaf is "
                          f"either adapted or trained in full")


def full_params(method, trainable, base_params, saved: Mapping[str, Any] | None = None):
    """The params a model is applied with: ``join(saved, method.apply(trainable, base_params))``."""
    return join(saved or {}, method.apply(trainable, base_params))

"""Trainable vs frozen: the adapter plus fully trained ("saved") modules, and the frozen base.

Every method trains the same structure,

    trainable = {"adapter": method.init(key), "saved": {path: leaf, ...}}

where ``saved`` holds the leaves of the modules trained in full (e.g. a freshly initialised
classifier head, PEFT's ``modules_to_save``), keyed by canonical path. The frozen base is the
original params pytree; ``join`` puts the saved leaves back into a params pytree and
``full_params`` maps (trainable, frozen) to the params a model is applied with:

    params = join(saved, method.apply(adapter, frozen))

Works on flax linen dicts and flax nnx state alike (paths as in ``gpart_jax.layout``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from gpart_jax.layout import flatten_with_paths

Selector = str | Sequence[str] | Callable[[str, Any], bool]


def _contains_run(path: str, name: str) -> bool:
    have, want = path.split("/"), name.strip("/").split("/")
    return any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))


def select_paths(params, modules: Selector) -> list[str]:
    """Paths of the leaves under ``modules``, in pytree order.

    ``modules``: a list/tuple of module names, each matched as whole path components anywhere
    in the path (``"classifier"`` selects ``params/classifier/kernel`` and ``.../bias``;
    ``"pooler/dense"`` the pooler's dense layer), a regex (full match on the leaf path) or a
    callable ``(path, leaf) -> bool``. An empty tuple selects nothing.
    """
    flat, _ = flatten_with_paths(params)
    if isinstance(modules, str):
        try:
            rx = re.compile(modules)
        except re.error as e:
            raise ValueError(f"modules_to_save: invalid regular expression {modules!r}: {e}") from None
        chosen = [p for p, _ in flat if rx.fullmatch(p)]
    elif isinstance(modules, (list, tuple)):
        if not all(isinstance(m, str) and m.strip("/") for m in modules):
            raise TypeError(f"modules_to_save must hold non-empty module names, got {modules!r}")
        chosen = [p for p, _ in flat if any(_contains_run(p, m) for m in modules)]
        unmatched = [m for m in modules if not any(_contains_run(p, m) for p, _ in flat)]
        if unmatched:
            raise ValueError(f"modules_to_save {unmatched} matched no parameter; available "
                             f"paths: {[p for p, _ in flat][:50]}")
        return chosen
    elif callable(modules):
        chosen = [p for p, leaf in flat if modules(p, leaf)]
    else:
        raise TypeError("modules_to_save must be a list/tuple of module names, a regex or a "
                        f"callable(path, leaf) -> bool, got {type(modules).__name__}")
    if not chosen:
        raise ValueError(f"modules_to_save {modules!r} matched no parameter")
    return chosen


def split(params, modules_to_save: Selector = ()) -> tuple[dict[str, Any], Any]:
    """``(saved, frozen)``: the leaves under ``modules_to_save`` by path, and the params as given.

    The frozen tree keeps its full structure (the saved leaves' initial values stay in it and are
    replaced by ``join``), so ``reparam`` and every method see the layout they were built for.
    """
    paths = set(select_paths(params, modules_to_save)) if modules_to_save else set()
    flat, _ = flatten_with_paths(params)
    return {p: leaf for p, leaf in flat if p in paths}, params


def join(saved: dict[str, Any], params) -> Any:
    """``params`` with the leaves named in ``saved`` replaced (structure and other leaves kept)."""
    if not saved:
        return params
    flat, treedef = flatten_with_paths(params)
    known = {p for p, _ in flat}
    missing = [p for p in saved if p not in known]
    if missing:
        raise ValueError(f"saved modules {missing[:5]} are not in params")
    leaves = [saved.get(p, leaf) for p, leaf in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def init_trainable(method, params, modules_to_save: Selector = (), key=None) -> dict:
    """``{"adapter": method.init(key), "saved": <leaves under modules_to_save>}``."""
    saved, _ = split(params, modules_to_save)
    targeted = set(method.target_paths)
    overlap = sorted(targeted & set(saved))
    if overlap:
        raise ValueError(f"modules_to_save overlaps the adapted targets: {overlap[:5]}; a leaf is "
                         f"either adapted or trained in full")
    return {"adapter": method.init(key), "saved": saved}


def full_params(method, trainable: dict, frozen) -> Any:
    """The params a model is applied with: ``join(saved, method.apply(adapter, frozen))``."""
    return join(trainable["saved"], method.apply(trainable["adapter"], frozen))

"""Fold an adapter into plain params (no overhead at inference), and take it out again.

``merge``: ``w = w0 + delta`` materialized once, saved modules put in place; the result is an
ordinary params pytree for ``model.apply``. Its outputs equal the adapted model's up to float32
rounding (the merged weight is rounded once more, by the cast back to the base dtype with
``dtype="base"``; about 1e-6 relative on MiniLM). ``unmerge``: ``w0 = w - delta`` on the adapted
leaves, recomputed from the same trainable (exact up to float32 rounding of the two additions),
and, given the base's own ``saved`` leaves (the untrained head), those put back, so that the
whole base is recovered. ``unmerge`` needs an additive method (``apply(t, base) = base +
delta(t)``, as GPart, LoRA, Uni-LoRA, VeRA and Fastfood are); full fine-tuning substitutes the
weights and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gpart_jax import _validate
from gpart_jax.method import Method
from gpart_jax.paths import leaves_with_paths
from gpart_jax.saved import check_disjoint, full_params, join


def _check_method(method) -> Method:
    if not isinstance(method, Method):
        raise TypeError(f"method must be a gpart_jax method (GPart, LoRA, ...), got "
                        f"{type(method).__name__}")
    return method


def merge(method: Method, trainable, base_params, *, saved: Mapping[str, Any] | None = None,
          dtype: str = "base"):
    """Plain params with ``trainable`` folded in and the ``saved`` modules in place.

    ``dtype="base"`` casts each leaf back to the base leaf's dtype (what a deployed model
    loads); ``"float32"`` keeps the adapted leaves in float32.
    """
    _check_method(method)
    _validate.choice(dtype, "dtype", ("base", "float32"))
    saved = dict(saved or {})
    check_disjoint(method, saved)
    merged = jax.jit(lambda t, s, base: full_params(method, t, base, s))(trainable, saved,
                                                                         base_params)
    if dtype == "float32":
        return merged
    return jax.tree_util.tree_map(lambda m, b: m.astype(b.dtype), merged, base_params)


def unmerge(method: Method, trainable, merged_params, *,
            saved: Mapping[str, Any] | None = None):
    """Base params back from merged ones: ``w0 = w - delta`` on every adapted leaf.

    ``saved``: the base's own leaves of the saved modules (the head before training, e.g.
    ``saved_modules(base_params, "classifier")``); they replace the trained ones, so the whole
    base comes back. Without it the saved modules are returned as trained (``merge`` replaced
    the base's, which only the caller still has).
    """
    _check_method(method)
    if not method.additive:
        raise ValueError(f"unmerge: method {method.name!r} replaces the weights instead of adding a "
                         f"delta, so the base cannot be recovered from merged params; keep the base")
    targets = set(method.target_paths)

    def undo(t, merged):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, merged)
        deltas = dict(leaves_with_paths(method.apply(t, zeros))[0])
        flat, treedef = leaves_with_paths(merged)
        leaves = [(x.astype(jnp.float32) - deltas[p].astype(jnp.float32)).astype(x.dtype)
                  if p in targets else x for p, x in flat]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return join(dict(saved or {}), jax.jit(undo)(trainable, merged_params))

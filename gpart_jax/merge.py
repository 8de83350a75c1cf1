"""Fold an adapter into plain params (zero inference overhead), and take it out again.

``merge``: ``w = w0 + delta`` materialized once, saved modules put in place; the result is an
ordinary params pytree for ``model.apply``. ``unmerge``: ``w0 = w - delta`` on the adapted
leaves, recomputed from the same adapter (exact up to float32 rounding of the two additions).
``unmerge`` needs an additive method (``apply(adapter, base) = base + delta``, as GPart, LoRA,
Uni-LoRA, VeRA and Fastfood are); full fine-tuning substitutes the weights and is refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gpart_jax.layout import flatten_with_paths
from gpart_jax.trainable import full_params


def _as_method(method):
    from gpart_jax.core import GPart
    from gpart_jax.methods import GPartMethod

    return GPartMethod(method) if isinstance(method, GPart) else method


def merge(method, trainable: dict, base_params, *, dtype: str = "base"):
    """Plain params with the adapter folded in and the saved modules in place.

    ``dtype="base"`` casts each leaf back to the base leaf's dtype (what a deployed model
    loads); ``"float32"`` keeps the adapted leaves in float32.
    """
    if dtype not in ("base", "float32"):
        raise ValueError(f"dtype must be 'base' or 'float32', got {dtype!r}")
    method = _as_method(method)
    merged = jax.jit(lambda tr, base: full_params(method, tr, base))(trainable, base_params)
    if dtype == "float32":
        return merged
    return jax.tree_util.tree_map(lambda m, b: m.astype(b.dtype), merged, base_params)


def unmerge(method, trainable: dict, merged_params):
    """Base params back from merged ones: ``w0 = w - delta`` on every adapted leaf.

    Saved modules were replaced by ``merge`` and are returned as they are in ``merged_params``
    (keep the original head if you need it back).
    """
    method = _as_method(method)
    if not method.additive:
        raise ValueError(f"unmerge: method {method.name!r} replaces the weights instead of adding a "
                         f"delta, so the base cannot be recovered from merged params; keep the base")
    targets = set(method.target_paths)

    def undo(tr, merged):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, merged)
        deltas = dict(flatten_with_paths(method.apply(tr["adapter"], zeros))[0])
        flat, treedef = flatten_with_paths(merged)
        leaves = [(x.astype(jnp.float32) - deltas[p].astype(jnp.float32)).astype(x.dtype)
                  if p in targets else x for p, x in flat]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return jax.jit(undo)(trainable, merged_params)

"""Full fine-tuning of the target leaves, and head-only (nothing adapted).

**Full.** The adapter is the target weights themselves, ``{path: W}`` (float32 master copies,
initialised to ``W0``), and ``apply`` puts them in place of the base leaves: ``W = adapter[path]``.
Trainable numbers: ``N``, the sizes of the targets. Weight decay in the optimizer therefore acts
on ``W`` (as in ordinary full fine-tuning), not on ``W - W0``. Targets use ``GPart.create``'s
syntax, default ``"all-linear"``; leaves of any rank may be targeted.

**Head-only.** The adapter is empty, ``{}``, and ``apply`` returns the base params unchanged: only
the saved modules (``modules_to_save`` in ``gpart_jax.trainable``, e.g. a new classifier head)
train. Trainable numbers in the adapter: 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from gpart_jax.layout import DEFAULT_EXCLUDE, Targets, flatten_with_paths
from gpart_jax.methods.base import Method, add_deltas, check_adapted_dtype, targeted_leaves


class Full(Method):
    """Train the targeted weights themselves: ``adapter = {path: W}``, ``apply`` substitutes them."""

    name = "full"
    additive = False  # apply substitutes the weights: the base cannot be recovered from them

    def __init__(self, target_shapes: dict[str, tuple[int, ...]], initial: dict,
                 adapted_dtype: str = "float32"):
        self.target_shapes = dict(target_shapes)
        self.target_paths = tuple(self.target_shapes)
        self._initial = initial  # the base leaves (or ShapeDtypeStructs), by path
        self.adapted_dtype = adapted_dtype

    @classmethod
    def create(
        cls,
        base_params,
        *,
        targets: Targets = "all-linear",
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        layers: Sequence[int] | None = None,
        layer_pattern: str | None = None,
        adapted_dtype: str = "float32",
    ) -> Full:
        """Full fine-tuning of the leaves ``targets`` selects (their initial values are ``base_params``'s)."""
        check_adapted_dtype(adapted_dtype)
        shapes = targeted_leaves(base_params, targets, exclude=exclude, layers=layers,
                                 layer_pattern=layer_pattern)
        flat = dict(flatten_with_paths(base_params)[0])
        return cls(shapes, {p: flat[p] for p in shapes}, adapted_dtype)

    def __repr__(self) -> str:
        return f"Full(leaves={len(self.target_paths)}, N={self.num_adapted})"

    def adapter_shapes(self):
        return {p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in self.target_shapes.items()}

    def init(self, key=None):
        """float32 copies of the base target leaves (``key`` is unused)."""
        out = {}
        for p, leaf in self._initial.items():
            if isinstance(leaf, jax.ShapeDtypeStruct):
                raise ValueError("Full.init needs the base weights: this method was built from "
                                 "shapes (jax.ShapeDtypeStruct); build it from arrays")
            out[p] = jnp.array(leaf, dtype=jnp.float32, copy=True)
        return out

    def apply(self, adapter, base_params):
        return add_deltas(base_params, {p: adapter[p] for p in self.target_paths},
                          self.adapted_dtype, replace=True)

    def metadata(self) -> dict:
        return {"method": self.name, "targets": list(self.target_paths)}


class HeadOnly(Method):
    """No adapted weights: the adapter is ``{}`` and only the saved modules train."""

    name = "head-only"

    @classmethod
    def create(cls, base_params=None) -> HeadOnly:
        return cls()

    def __repr__(self) -> str:
        return "HeadOnly()"

    def init(self, key=None):
        return {}

    def apply(self, adapter, base_params):
        if jax.tree_util.tree_leaves(adapter):
            raise ValueError("head-only: the adapter must be empty ({}); train the head through "
                             "modules_to_save")
        return base_params

"""Full fine-tuning of the target leaves, and head-only (nothing adapted).

**Full.** The trainable pytree is the target weights themselves, ``{path: W}`` (float32 master
copies, initialised to ``W0``), and ``apply`` puts them in place of the base leaves:
``W = trainable[path]``. Trainable numbers: ``N``, the sizes of the targets. Weight decay in the
optimizer therefore acts on ``W`` (as in ordinary full fine-tuning), not on ``W - W0``. Targets
are a filter (``gpart_jax.filters``), default ``"all-linear"``; leaves of any rank may be
targeted. ``Full`` holds the initial weights (a pytree leaf of the method), so that ``init`` needs
no other argument.

**Head-only.** The trainable pytree is empty, ``{}``, and ``apply`` returns the base params
unchanged: only the saved modules (a new classifier head, ``gpart_jax.saved``) train.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from gpart_jax.filters import Filter
from gpart_jax.method import Method, Shapes, adapted_shapes, add_deltas, check_adapted_dtype
from gpart_jax.paths import leaves_with_paths


class Full(Method):
    """Train the targeted weights themselves: ``trainable = {path: W}``, ``apply`` substitutes them."""

    name: ClassVar[str] = "full"
    additive: ClassVar[bool] = False  # apply substitutes the weights
    initial: dict[str, Any]  # the base leaves (or ShapeDtypeStructs), by path
    shapes: Shapes = struct.field(pytree_node=False)
    adapted_dtype: str = struct.field(pytree_node=False, default="float32")

    @classmethod
    def create(cls, base_params, *, targets: Filter = "all-linear",
               adapted_dtype: str = "float32") -> Full:
        """Full fine-tuning of the leaves ``targets`` selects (initial values: ``base_params``'s)."""
        check_adapted_dtype(adapted_dtype)
        shapes = adapted_shapes(base_params, targets)
        flat = dict(leaves_with_paths(base_params)[0])
        return cls({p: flat[p] for p, _ in shapes}, shapes, adapted_dtype)

    @property
    def adapted(self) -> Shapes:
        return self.shapes

    def __repr__(self) -> str:
        return f"Full(leaves={len(self.shapes)}, N={self.num_adapted})"

    def trainable_shapes(self):
        return {p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in self.shapes}

    def init(self, key=None):
        """float32 copies of the base target leaves (``key`` is unused)."""
        out = {}
        for p, leaf in self.initial.items():
            if isinstance(leaf, jax.ShapeDtypeStruct):
                raise ValueError("Full.init needs the base weights: this method was built from "
                                 "shapes (jax.ShapeDtypeStruct); build it from arrays")
            out[p] = jnp.array(leaf, dtype=jnp.float32, copy=True)
        return out

    def apply(self, trainable, base_params):
        return add_deltas(base_params, {p: trainable[p] for p, _ in self.shapes},
                          self.adapted_dtype, replace=True, what="this full fine-tuning")

    def spec(self) -> dict:
        return {"method": self.name, "adapted_dtype": self.adapted_dtype,
                "adapted": [[p, list(s)] for p, s in self.shapes]}


class HeadOnly(Method):
    """No adapted weights: the trainable pytree is ``{}`` and only the saved modules train."""

    name: ClassVar[str] = "head-only"

    @classmethod
    def create(cls, base_params=None) -> HeadOnly:
        return cls()

    @property
    def adapted(self) -> Shapes:
        return ()

    def __repr__(self) -> str:
        return "HeadOnly()"

    def init(self, key=None):
        return {}

    def apply(self, trainable, base_params):
        if jax.tree_util.tree_leaves(trainable):
            raise ValueError("head-only: the trainable pytree must be empty ({}); the head trains "
                             "as a saved module (saved=...)")
        return base_params

    def spec(self) -> dict:
        return {"method": self.name}

"""Uni-LoRA (Li et al., 2025, arXiv:2506.00799): one vector projected into all LoRA factors.

All LoRA factors of all target matrices, flattened and concatenated, form ``theta_D`` of length
``D = r sum_l (in_l + out_l)``. Uni-LoRA trains ``theta_d`` (length ``d``) and sets

    theta_D = P theta_d,     (P theta_d)_i = theta_{d, g(i)} / sqrt(n_{g(i)})

a random partition of the ``D`` factor entries into ``d`` groups, so ``P^T P = I_d`` (the first
hop is isometric). ``theta_D`` is reshaped into ``A_l (r, in_l)`` and ``B_l (out_l, r)`` per
matrix and the update is LoRA's, with the flax kernel ``(in, out)`` getting the transpose:

    Delta W_l = s B_l A_l,    Delta kernel_l = s (B_l A_l)^T

The second hop is bilinear, so the whole map ``theta_d -> Delta W`` is not an isometry: its
Jacobian scales with ``theta_d`` (measured in ``tests/test_methods.py``).

This implementation reuses GPart for the first hop: a ``GPart`` with ``scheme="balanced"`` and
``isometric=True`` over a pytree of ``jax.ShapeDtypeStruct``s, one per factor, keyed
``<kernel path>/A`` and ``<kernel path>/B`` (natural order of those paths, row-major within a
factor). Group sizes are therefore exactly ``floor(D/d)`` or ``ceil(D/d)``, the ids come from the
project's hash (``gpart_jax.hashing``), and ``theta_d`` plus the seed is the whole adapter.

Facts checked against the authors' code (github.com/KaiyangLi1992/Uni-LoRA: ``NLU/unilora`` and
its PEFT tuner; github.com/zh37908/Uni-LoRA: the tuner's ``config.py``): the update is ``B A``
with no ``alpha / r`` factor (our ``scale`` defaults to 1.0); each factor entry reads
``theta_d[idx] / sqrt(count(idx))``; ``theta_d`` is initialised uniform in ``[-0.02, 0.02]``
(``init_theta_d_bound``; zero would give zero gradients, since ``B A`` is bilinear); the default
rank is ``r = 4``. Not checked: the paper's own text on scaling (not available here). Differences:
the authors draw ``idx`` with ``torch.randint`` (multinomial group sizes, possibly empty groups),
here the partition is exactly balanced; and their stream is torch's, ours the project's hash.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from gpart_jax.core import GPart
from gpart_jax.layout import DEFAULT_EXCLUDE, Targets
from gpart_jax.methods.base import (
    Method,
    add_deltas,
    check_adapted_dtype,
    check_positive_int,
    targeted_leaves,
)
from gpart_jax.methods.lora import lora_delta


def lora_factor_shapes(target_shapes: dict[str, tuple[int, int]], r: int) -> dict:
    """``{path: {"A": SDS(r, in), "B": SDS(out, r)}}``: the LoRA factor space, as shapes."""
    return {p: {"A": jax.ShapeDtypeStruct((r, n_in), jnp.float32),
                "B": jax.ShapeDtypeStruct((n_out, r), jnp.float32)}
            for p, (n_in, n_out) in target_shapes.items()}


class UniLoRA(Method):
    """``theta_d -> (A_l, B_l) = reshape(P theta_d) -> Delta kernel_l = s (B_l A_l)^T``."""

    name = "unilora"
    tree_fields = ("gpart",)

    def __init__(self, gpart: GPart, target_shapes: dict[str, tuple[int, int]], r: int,
                 scale: float, init_bound: float, adapted_dtype: str = "float32"):
        self.gpart = gpart
        self.target_shapes = dict(target_shapes)
        self.target_paths = tuple(self.target_shapes)
        self.r = r
        self.scale = float(scale)
        self.init_bound = float(init_bound)
        self.adapted_dtype = adapted_dtype
        index = {e.path: i for i, e in enumerate(gpart.layout)}
        self._factor_index = {p: (index[f"{p}/A"], index[f"{p}/B"]) for p in self.target_paths}

    @classmethod
    def create(
        cls,
        base_params,
        *,
        d: int,
        r: int = 4,
        seed: int = 42,
        scale: float = 1.0,
        init_bound: float = 0.02,
        targets: Targets = ("query/kernel", "value/kernel"),
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        layers: Sequence[int] | None = None,
        layer_pattern: str | None = None,
        adapted_dtype: str = "float32",
    ) -> UniLoRA:
        """Uni-LoRA with ``d`` trainable numbers over rank-``r`` factors of the targeted kernels.

        ``d`` must not exceed ``D = r sum (in + out)``. ``scale`` multiplies ``B A`` (1.0 as in
        the authors' code). ``init_bound``: ``theta_d`` uniform in ``[-b, b]`` at init (must be
        > 0, since ``B A`` has zero gradient at zero).
        """
        r = check_positive_int(r, "r (Uni-LoRA rank)")
        d = check_positive_int(d, "d")
        if not init_bound > 0:
            raise ValueError(f"init_bound must be > 0 for Uni-LoRA (B A has zero gradient at "
                             f"theta_d = 0), got {init_bound!r}")
        check_adapted_dtype(adapted_dtype)
        shapes = targeted_leaves(base_params, targets, exclude=exclude, layers=layers,
                                 layer_pattern=layer_pattern, matrices="Uni-LoRA")
        big_d = r * sum(n_in + n_out for n_in, n_out in shapes.values())
        if d > big_d:
            raise ValueError(f"d = {d} exceeds D = {big_d}, the number of rank-{r} LoRA factor "
                             f"entries of the targets; choose d <= {big_d} or a larger r")
        gp = GPart.create(lora_factor_shapes(shapes, r), d=d, seed=seed,
                          targets=lambda path, leaf: True, exclude=(), scheme="balanced",
                          isometric=True)
        return cls(gp, shapes, r, scale, init_bound, adapted_dtype)

    def __repr__(self) -> str:
        return (f"UniLoRA(d={self.gpart.d}, D={self.gpart.num_adapted}, r={self.r}, "
                f"seed={self.gpart.seed}, matrices={len(self.target_paths)})")

    @property
    def d(self) -> int:
        return self.gpart.d

    def init(self, key=None):
        """``theta_d`` uniform in ``[-init_bound, init_bound]`` (float32, length d)."""
        if key is None:
            raise ValueError("UniLoRA.init needs a PRNG key (theta_d starts uniform in "
                             f"[-{self.init_bound}, {self.init_bound}])")
        return self.gpart.init_theta(key, self.init_bound)

    def factors(self, theta) -> dict:
        """``{path: {"A": (r, in), "B": (out, r)}}``: the LoRA factors ``reshape(P theta_d)``."""
        flat = self.gpart.deltas(theta)
        return {p: {"A": flat[ia], "B": flat[ib]} for p, (ia, ib) in self._factor_index.items()}

    def deltas(self, theta) -> dict:
        """``{path: s (B A)^T}`` in each kernel's ``(in, out)`` shape (float32)."""
        return {p: lora_delta(f["A"], f["B"], self.scale) for p, f in self.factors(theta).items()}

    def apply(self, adapter, base_params):
        return add_deltas(base_params, self.deltas(adapter), self.adapted_dtype)

    def metadata(self) -> dict:
        gp = self.gpart
        return {"method": self.name, "d": gp.d, "r": self.r, "seed": gp.seed, "scale": self.scale,
                "init_bound": self.init_bound, "fingerprint": gp.fingerprint,
                "targets": list(self.target_paths)}

"""Uni-LoRA (Li et al., 2025, arXiv:2506.00799): one vector projected into all LoRA factors.

All LoRA factors of all target matrices, flattened and concatenated, form ``theta_D`` of length
``D = r sum_l (in_l + out_l)``. Uni-LoRA trains ``theta_d`` (length ``d``) and sets

    theta_D = P theta_d,     (P theta_d)_i = theta_{d, g(i)} / sqrt(n_{g(i)})

a random partition of the ``D`` factor entries into ``d`` groups, so ``P^T P = I_d`` (the first
hop is isometric). ``theta_D`` is reshaped into ``A_l (r, in_l)`` and ``B_l (out_l, r)`` per
matrix and the update is LoRA's, with the flax kernel ``(in, out)`` getting the transpose:

    Delta W_l = s B_l A_l,    Delta kernel_l = s (B_l A_l)^T

The second hop is bilinear, so the whole map ``theta_d -> Delta W`` is not an isometry: its
Jacobian scales with ``theta_d`` (measured in the tests).

This implementation reuses GPart for the first hop: a ``GPart`` with ``scheme="balanced"`` and
``isometric=True`` over a pytree of ``jax.ShapeDtypeStruct``s, one per factor, keyed
``<kernel path>/A`` and ``<kernel path>/B`` (natural order of those paths, row-major within a
factor). Group sizes are therefore exactly ``floor(D/d)`` or ``ceil(D/d)``, the ids come from the
project's hash (``gpart_jax.hashing``), and ``theta_d`` plus the seed is the whole adapter.

Facts checked against the authors' code (github.com/KaiyangLi1992/Uni-LoRA: ``NLU/unilora`` and
its PEFT tuner; github.com/zh37908/Uni-LoRA: the tuner's ``config.py``): the update is ``B A``
with no ``alpha / r`` factor (our ``scale`` defaults to 1.0); each factor entry reads
``theta_d[idx] / sqrt(count(idx))``; ``theta_d`` is initialised uniform in ``[-0.02, 0.02]``
(``init_bound``; zero would give zero gradients, since ``B A`` is bilinear); the default
rank is ``r = 4``. Not checked: the paper's own text on scaling (not available here). Differences:
the authors draw ``idx`` with ``torch.randint`` (multinomial group sizes, possibly empty groups),
here the partition is exactly balanced; and their stream is torch's, ours the project's hash.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from gpart_jax import _validate
from gpart_jax.core import GPart
from gpart_jax.filters import Filter
from gpart_jax.method import Method, Shapes, adapted_shapes, add_deltas, check_adapted_dtype
from gpart_jax.methods.lora import lora_delta


def lora_factor_shapes(shapes: Shapes, r: int) -> dict:
    """``{path: {"A": SDS(r, in), "B": SDS(out, r)}}``: the LoRA factor space, as shapes."""
    return {p: {"A": jax.ShapeDtypeStruct((r, n_in), jnp.float32),
                "B": jax.ShapeDtypeStruct((n_out, r), jnp.float32)}
            for p, (n_in, n_out) in shapes}


class UniLoRA(Method):
    """``theta_d -> (A_l, B_l) = reshape(P theta_d) -> Delta kernel_l = s (B_l A_l)^T``."""

    name: ClassVar[str] = "unilora"
    gpart: GPart
    shapes: Shapes = struct.field(pytree_node=False)
    r: int = struct.field(pytree_node=False)
    scale: float = struct.field(pytree_node=False)
    adapted_dtype: str = struct.field(pytree_node=False, default="float32")

    @classmethod
    def create(cls, base_params, *, d: int, r: int = 4, seed: int = 42, scale: float = 1.0,
               init_bound: float = 0.02, targets: Filter = ("query/kernel", "value/kernel"),
               adapted_dtype: str = "float32") -> UniLoRA:
        """Uni-LoRA with ``d`` trainable numbers over rank-``r`` factors of the targeted kernels.

        ``d`` must not exceed ``D = r sum (in + out)``. ``scale`` multiplies ``B A`` (1.0 as in
        the authors' code). ``init_bound``: ``theta_d`` uniform in ``[-b, b]`` at init (must be
        > 0, since ``B A`` has zero gradient at zero).
        """
        r = _validate.positive_int(r, "r (Uni-LoRA rank)")
        d = _validate.positive_int(d, "d")
        scale = _validate.real(scale, "scale")
        init_bound = _validate.real(init_bound, "init_bound", low=0.0)
        if init_bound == 0:
            raise ValueError("init_bound must be > 0 for Uni-LoRA (B A has zero gradient at "
                             "theta_d = 0)")
        check_adapted_dtype(adapted_dtype)
        shapes = adapted_shapes(base_params, targets, matrices="Uni-LoRA")
        big_d = r * sum(n_in + n_out for _, (n_in, n_out) in shapes)
        if d > big_d:
            raise ValueError(f"d = {d} exceeds D = {big_d}, the number of rank-{r} LoRA factor "
                             f"entries of the targets; choose d <= {big_d} or a larger r")
        gp = GPart.create(lora_factor_shapes(shapes, r), d=d, seed=seed, targets=True,
                          scheme="balanced", isometric=True, init_bound=init_bound)
        return cls(gp, shapes, r, scale, adapted_dtype)

    @property
    def adapted(self) -> Shapes:
        return self.shapes

    @property
    def d(self) -> int:
        return self.gpart.d

    def __repr__(self) -> str:
        return (f"UniLoRA(d={self.gpart.d}, D={self.gpart.num_adapted}, r={self.r}, "
                f"seed={self.gpart.seed}, matrices={len(self.shapes)})")

    def init(self, key=None):
        """``theta_d`` uniform in ``[-init_bound, init_bound]`` (float32, length d)."""
        if key is None:
            bound = self.gpart.plan.init_bound
            raise ValueError(f"UniLoRA.init needs a PRNG key (theta_d starts uniform in "
                             f"[-{bound}, {bound}]); pass key=jax.random.key(0)")
        return self.gpart.init(key)

    def factors(self, theta) -> dict:
        """``{path: {"A": (r, in), "B": (out, r)}}``: the LoRA factors ``reshape(P theta_d)``."""
        flat = dict(zip((e.path for e in self.gpart.layout), self.gpart.deltas(theta), strict=True))
        return {p: {"A": flat[f"{p}/A"], "B": flat[f"{p}/B"]} for p, _ in self.shapes}

    def deltas(self, theta) -> dict:
        """``{path: s (B A)^T}`` in each kernel's ``(in, out)`` shape (float32)."""
        return {p: lora_delta(f["A"], f["B"], self.scale) for p, f in self.factors(theta).items()}

    def apply(self, trainable, base_params):
        return add_deltas(base_params, self.deltas(trainable), self.adapted_dtype,
                          what="this Uni-LoRA")

    def details(self) -> dict:
        return {"d": self.d, "r": self.r, "D": self.gpart.num_adapted, "seed": self.gpart.seed}

    def spec(self) -> dict:
        gp = self.gpart
        return {"method": self.name, "d": gp.d, "r": self.r, "seed": str(gp.seed),
                "scale": self.scale, "init_bound": gp.plan.init_bound,
                "adapted_dtype": self.adapted_dtype, "fingerprint": gp.fingerprint,
                "adapted": [[p, list(s)] for p, s in self.shapes]}

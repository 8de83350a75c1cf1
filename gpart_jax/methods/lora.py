"""LoRA (Hu et al., 2021, arXiv:2106.09685): a trainable low-rank update per target matrix.

For each target matrix, with the PyTorch weight ``W in R^{m x n}`` (``m = out``, ``n = in``),

    W = W0 + (alpha / r) B A,    A in R^{r x n},  B in R^{m x r}

``A`` random and ``B = 0`` at init, so training starts from the base model exactly. The flax
kernel is stored ``(in, out)``, so its update is the transpose,
``Delta kernel = (alpha / r) (B A)^T = (alpha / r) A^T B^T``. The trainable pytree is
``{path: {"A": (r, in), "B": (out, r)}}`` keyed by the kernel's path; trainable numbers per
matrix: ``r (in + out)``.

``A`` is initialised Kaiming-uniform with bound ``1 / sqrt(in)`` (``kaiming_uniform(a=sqrt(5))``,
what the reference ``loralib`` and PEFT use; Hu et al. state "random Gaussian"); it is stored in
the adapter, so drawing it with ``jax.random`` from an explicit key is reproducible enough.
``alpha`` defaults to ``r`` (scale 1).

The map ``(A, B) -> B A`` is bilinear: its Jacobian, ``d vec(BA) / d vec(A) = I_n (x) B`` and
``d vec(BA) / d vec(B) = A^T (x) I_m``, depends on the current ``(A, B)``, so equal steps in the
factors need not give equal steps in the weights (the GPart paper's argument, measured in the
tests).
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from gpart_jax import _validate
from gpart_jax.filters import Filter
from gpart_jax.method import Method, Shapes, adapted_shapes, add_deltas, check_adapted_dtype


def lora_delta(A, B, scale: float):
    """``scale * (B A)^T``: the flax ``(in, out)`` kernel update of factors ``A (r, in)``, ``B (out, r)``."""
    return scale * (A.T @ B.T)


class LoRA(Method):
    """Per-matrix factors ``A (r, in)``, ``B (out, r)``; ``Delta kernel = (alpha / r) (B A)^T``."""

    name: ClassVar[str] = "lora"
    shapes: Shapes = struct.field(pytree_node=False)
    r: int = struct.field(pytree_node=False)
    alpha: float = struct.field(pytree_node=False)
    adapted_dtype: str = struct.field(pytree_node=False, default="float32")

    @classmethod
    def create(cls, base_params, *, r: int = 8, alpha: float | None = None,
               targets: Filter = ("query/kernel", "value/kernel"),
               adapted_dtype: str = "float32") -> LoRA:
        """LoRA of rank ``r`` on the 2-D kernels ``targets`` selects (``gpart_jax.filters``).

        ``alpha``: the update is scaled by ``alpha / r``; ``None`` means ``alpha = r``.
        ``base_params`` may be arrays or ``jax.ShapeDtypeStruct``s (only shapes are read).
        """
        r = _validate.positive_int(r, "r (LoRA rank)")
        alpha = float(r) if alpha is None else _validate.real(alpha, "alpha", low=0.0, low_open=True)
        check_adapted_dtype(adapted_dtype)
        return cls(adapted_shapes(base_params, targets, matrices="LoRA"), r, alpha, adapted_dtype)

    @property
    def adapted(self) -> Shapes:
        return self.shapes

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def __repr__(self) -> str:
        return (f"LoRA(r={self.r}, alpha={self.alpha}, matrices={len(self.shapes)}, "
                f"trainable={self.num_trainable})")

    def init(self, key=None):
        """``A`` uniform in ``[-1/sqrt(in), 1/sqrt(in)]``, ``B = 0``."""
        if key is None:
            raise ValueError("LoRA.init needs a PRNG key (A is drawn at random); pass "
                             "key=jax.random.key(0)")
        trainable = {}
        for i, (path, (n_in, n_out)) in enumerate(self.shapes):
            bound = 1.0 / float(n_in) ** 0.5
            a = jax.random.uniform(jax.random.fold_in(key, i), (self.r, n_in), jnp.float32,
                                   -bound, bound)
            trainable[path] = {"A": a, "B": jnp.zeros((n_out, self.r), jnp.float32)}
        return trainable

    def deltas(self, trainable) -> dict:
        """``{path: (alpha / r) (B A)^T}`` in each kernel's ``(in, out)`` shape (float32)."""
        return {p: lora_delta(trainable[p]["A"], trainable[p]["B"], self.scale)
                for p, _ in self.shapes}

    def apply(self, trainable, base_params):
        return add_deltas(base_params, self.deltas(trainable), self.adapted_dtype, what="this LoRA")

    def details(self) -> dict:
        return {"r": self.r, "alpha": self.alpha}

    def spec(self) -> dict:
        return {"method": self.name, "r": self.r, "alpha": self.alpha,
                "adapted_dtype": self.adapted_dtype, "adapted": [[p, list(s)] for p, s in self.shapes]}

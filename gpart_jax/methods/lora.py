"""LoRA (Hu et al., 2021, arXiv:2106.09685): a trainable low-rank update per target matrix.

For each target matrix, with the PyTorch weight ``W in R^{m x n}`` (``m = out``, ``n = in``),

    W = W0 + (alpha / r) B A,    A in R^{r x n},  B in R^{m x r}

``A`` random and ``B = 0`` at init, so training starts from the base model exactly. The flax
kernel is stored ``(in, out)``, so its update is the transpose,
``Delta kernel = (alpha / r) (B A)^T = (alpha / r) A^T B^T``. The adapter is
``{path: {"A": (r, in), "B": (out, r)}}`` keyed by the kernel's path; trainable numbers per
matrix: ``r (in + out)``.

``A`` is initialised Kaiming-uniform with bound ``1 / sqrt(in)`` (``kaiming_uniform(a=sqrt(5))``,
what the reference ``loralib`` and PEFT use; Hu et al. state "random Gaussian"); it is stored in
the adapter, so drawing it with ``jax.random`` from an explicit key is reproducible enough.
``alpha`` defaults to ``r`` (scale 1).

The map ``(A, B) -> B A`` is bilinear: its Jacobian, ``d vec(BA) / d vec(A) = I_n (x) B`` and
``d vec(BA) / d vec(B) = A^T (x) I_m``, depends on the current ``(A, B)``, so equal steps in the
factors need not give equal steps in the weights (the GPart paper's argument, measured in
``tests/test_methods.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from gpart_jax.layout import DEFAULT_EXCLUDE, Targets
from gpart_jax.methods.base import (
    Method,
    add_deltas,
    check_adapted_dtype,
    check_positive_int,
    targeted_leaves,
)


def lora_delta(A, B, scale: float):
    """``scale * (B A)^T``: the flax ``(in, out)`` kernel update of factors ``A (r, in)``, ``B (out, r)``."""
    return scale * (A.T @ B.T)


class LoRA(Method):
    """Per-matrix factors ``A (r, in)``, ``B (out, r)``; ``Delta kernel = (alpha / r) (B A)^T``."""

    name = "lora"

    def __init__(self, target_shapes: dict[str, tuple[int, int]], r: int, alpha: float,
                 adapted_dtype: str = "float32"):
        self.target_shapes = dict(target_shapes)
        self.target_paths = tuple(self.target_shapes)
        self.r = r
        self.alpha = float(alpha)
        self.scale = self.alpha / r
        self.adapted_dtype = adapted_dtype

    @classmethod
    def create(
        cls,
        base_params,
        *,
        r: int = 8,
        alpha: float | None = None,
        targets: Targets = ("query/kernel", "value/kernel"),
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        layers: Sequence[int] | None = None,
        layer_pattern: str | None = None,
        adapted_dtype: str = "float32",
    ) -> LoRA:
        """LoRA of rank ``r`` on the 2-D kernels ``targets`` selects (``GPart.create``'s syntax).

        ``alpha``: the update is scaled by ``alpha / r``; ``None`` means ``alpha = r``.
        ``base_params`` may be arrays or ``jax.ShapeDtypeStruct``s (only shapes are read).
        """
        r = check_positive_int(r, "r (LoRA rank)")
        if alpha is None:
            alpha = float(r)
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        check_adapted_dtype(adapted_dtype)
        shapes = targeted_leaves(base_params, targets, exclude=exclude, layers=layers,
                                 layer_pattern=layer_pattern, matrices="LoRA")
        return cls(shapes, r, alpha, adapted_dtype)

    def __repr__(self) -> str:
        return (f"LoRA(r={self.r}, alpha={self.alpha}, matrices={len(self.target_paths)}, "
                f"trainable={self.num_trainable})")

    def init(self, key=None):
        """``A`` uniform in ``[-1/sqrt(in), 1/sqrt(in)]``, ``B = 0``."""
        if key is None:
            raise ValueError("LoRA.init needs a PRNG key (A is drawn at random)")
        adapter = {}
        for i, (path, (n_in, n_out)) in enumerate(self.target_shapes.items()):
            bound = 1.0 / float(n_in) ** 0.5
            a = jax.random.uniform(jax.random.fold_in(key, i), (self.r, n_in), jnp.float32,
                                   -bound, bound)
            adapter[path] = {"A": a, "B": jnp.zeros((n_out, self.r), jnp.float32)}
        return adapter

    def deltas(self, adapter) -> dict:
        """``{path: (alpha / r) (B A)^T}`` in each kernel's ``(in, out)`` shape (float32)."""
        return {p: lora_delta(adapter[p]["A"], adapter[p]["B"], self.scale) for p in self.target_paths}

    def apply(self, adapter, base_params):
        return add_deltas(base_params, self.deltas(adapter), self.adapted_dtype)

    def metadata(self) -> dict:
        return {"method": self.name, "r": self.r, "alpha": self.alpha,
                "targets": list(self.target_paths)}

"""VeRA (Kopiczko et al., 2024, arXiv:2310.11454): frozen shared random factors, trainable scalings.

One pair of frozen random matrices ``A in R^{r x n_max}`` and ``B in R^{m_max x r}`` is shared by
every target matrix (``n_max``, ``m_max`` the largest ``in`` and ``out`` among them); matrix
``l`` uses the slices ``A_l = A[:, :in_l]`` and ``B_l = B[:out_l, :]`` and trains two vectors,
``lambda_d in R^r`` and ``lambda_b in R^{out_l}``:

    Delta W_l = Lambda_b B_l Lambda_d A_l,   Lambda = diag(lambda)
    Delta kernel_l = (Lambda_b B_l Lambda_d A_l)^T = A_l^T Lambda_d B_l^T Lambda_b   (in, out)

``lambda_b = 0`` at init (the base model exactly) and ``lambda_d = d_initial`` (0.1). The adapter
is ``{path: {"lambda_d": (r,), "lambda_b": (out,)}}``; trainable numbers per matrix:
``r + out``. ``A`` and ``B`` are regenerated from the seed with the project's hash
(``gpart_jax.methods.seeded``, streams ``VERA_A`` and ``VERA_B``), Kaiming-uniform with bound
``sqrt(6 / fan_in)`` (``fan_in = n_max`` for ``A``, ``r`` for ``B``, row-major), the bound of
PEFT's VeRA (``_kaiming_init``); PEFT's defaults ``r = 256`` and ``d_initial = 0.1`` are ours.
Stored per adapter: the lambdas plus the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from gpart_jax.hashing import check_uint64
from gpart_jax.layout import DEFAULT_EXCLUDE, Targets
from gpart_jax.methods import seeded
from gpart_jax.methods.base import (
    Method,
    add_deltas,
    check_adapted_dtype,
    check_positive_int,
    targeted_leaves,
)


def vera_matrices(seed: int, r: int, n_max: int, m_max: int):
    """The shared frozen ``A (r, n_max)`` and ``B (m_max, r)`` of a seed (numpy float32)."""
    a = seeded.kaiming_uniform(seed, seeded.VERA_A, (r, n_max), fan_in=n_max)
    b = seeded.kaiming_uniform(seed, seeded.VERA_B, (m_max, r), fan_in=r)
    return a, b


def vera_delta(A_l, B_l, lambda_d, lambda_b):
    """``(Lambda_b B_l Lambda_d A_l)^T``, the ``(in, out)`` kernel update."""
    return (A_l.T * lambda_d) @ (B_l.T * lambda_b)


class VeRA(Method):
    """Shared frozen ``A``, ``B``; per matrix ``Delta W = diag(lambda_b) B diag(lambda_d) A``."""

    name = "vera"
    tree_fields = ("A", "B")

    def __init__(self, target_shapes: dict[str, tuple[int, int]], r: int, seed: int,
                 d_initial: float, adapted_dtype: str = "float32"):
        self.target_shapes = dict(target_shapes)
        self.target_paths = tuple(self.target_shapes)
        self.r = r
        self.seed = seed
        self.d_initial = float(d_initial)
        self.adapted_dtype = adapted_dtype
        n_max = max(s[0] for s in self.target_shapes.values())
        m_max = max(s[1] for s in self.target_shapes.values())
        a, b = vera_matrices(seed, r, n_max, m_max)
        self.A, self.B = jnp.asarray(a), jnp.asarray(b)

    @classmethod
    def create(
        cls,
        base_params,
        *,
        r: int = 256,
        seed: int = 0,
        d_initial: float = 0.1,
        targets: Targets = ("query/kernel", "value/kernel"),
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        layers: Sequence[int] | None = None,
        layer_pattern: str | None = None,
        adapted_dtype: str = "float32",
    ) -> VeRA:
        """VeRA of rank ``r`` on the 2-D kernels ``targets`` selects; ``A``, ``B`` from ``seed``."""
        r = check_positive_int(r, "r (VeRA rank)")
        seed = check_uint64(seed, "seed")
        check_adapted_dtype(adapted_dtype)
        shapes = targeted_leaves(base_params, targets, exclude=exclude, layers=layers,
                                 layer_pattern=layer_pattern, matrices="VeRA")
        return cls(shapes, r, seed, d_initial, adapted_dtype)

    def __repr__(self) -> str:
        return (f"VeRA(r={self.r}, seed={self.seed}, matrices={len(self.target_paths)}, "
                f"shared A {tuple(self.A.shape)}, B {tuple(self.B.shape)})")

    def init(self, key=None):
        """``lambda_d = d_initial``, ``lambda_b = 0`` (no randomness: ``key`` is unused)."""
        return {p: {"lambda_d": jnp.full((self.r,), self.d_initial, jnp.float32),
                    "lambda_b": jnp.zeros((n_out,), jnp.float32)}
                for p, (_, n_out) in self.target_shapes.items()}

    def deltas(self, adapter) -> dict:
        """``{path: (Lambda_b B_l Lambda_d A_l)^T}`` in each kernel's ``(in, out)`` shape."""
        out = {}
        for p, (n_in, n_out) in self.target_shapes.items():
            lam = adapter[p]
            out[p] = vera_delta(self.A[:, :n_in], self.B[:n_out, :], lam["lambda_d"], lam["lambda_b"])
        return out

    def apply(self, adapter, base_params):
        return add_deltas(base_params, self.deltas(adapter), self.adapted_dtype)

    def metadata(self) -> dict:
        return {"method": self.name, "r": self.r, "seed": self.seed, "d_initial": self.d_initial,
                "targets": list(self.target_paths)}

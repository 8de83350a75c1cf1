"""VeRA (Kopiczko et al., 2024, arXiv:2310.11454): frozen shared random factors, trainable scalings.

One pair of frozen random matrices ``A in R^{r x n_max}`` and ``B in R^{m_max x r}`` is shared by
every target matrix (``n_max``, ``m_max`` the largest ``in`` and ``out`` among them); matrix
``l`` uses the slices ``A_l = A[:, :in_l]`` and ``B_l = B[:out_l, :]`` and trains two vectors,
``lambda_d in R^r`` and ``lambda_b in R^{out_l}``:

    Delta W_l = Lambda_b B_l Lambda_d A_l,   Lambda = diag(lambda)
    Delta kernel_l = (Lambda_b B_l Lambda_d A_l)^T = A_l^T Lambda_d B_l^T Lambda_b   (in, out)

``lambda_b = 0`` at init (the base model exactly) and ``lambda_d = d_initial`` (0.1). The trainable
pytree is ``{path: {"lambda_d": (r,), "lambda_b": (out,)}}``; trainable numbers per matrix:
``r + out``. ``A`` and ``B`` are regenerated from the seed with the project's hash
(``gpart_jax.methods.seeded``, streams ``VERA_A`` and ``VERA_B``), Kaiming-uniform with bound
``sqrt(6 / fan_in)`` (``fan_in = n_max`` for ``A``, ``r`` for ``B``, row-major), the bound of
PEFT's VeRA (``_kaiming_init``); PEFT's defaults ``r = 256`` and ``d_initial = 0.1`` are ours.
Stored per adapter: the lambdas plus the seed.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from gpart_jax import _validate
from gpart_jax.filters import Filter
from gpart_jax.hashing import check_uint64
from gpart_jax.method import Method, Shapes, adapted_shapes, add_deltas, check_adapted_dtype
from gpart_jax.methods import seeded


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

    name: ClassVar[str] = "vera"
    A: jax.Array
    B: jax.Array
    shapes: Shapes = struct.field(pytree_node=False)
    r: int = struct.field(pytree_node=False)
    seed: int = struct.field(pytree_node=False)
    d_initial: float = struct.field(pytree_node=False)
    adapted_dtype: str = struct.field(pytree_node=False, default="float32")

    @classmethod
    def create(cls, base_params, *, r: int = 256, seed: int = 0, d_initial: float = 0.1,
               targets: Filter = ("query/kernel", "value/kernel"),
               adapted_dtype: str = "float32") -> VeRA:
        """VeRA of rank ``r`` on the 2-D kernels ``targets`` selects; ``A``, ``B`` from ``seed``."""
        r = _validate.positive_int(r, "r (VeRA rank)")
        seed = check_uint64(seed, "seed")
        d_initial = _validate.real(d_initial, "d_initial")
        check_adapted_dtype(adapted_dtype)
        shapes = adapted_shapes(base_params, targets, matrices="VeRA")
        n_max = max(s[0] for _, s in shapes)
        m_max = max(s[1] for _, s in shapes)
        a, b = vera_matrices(seed, r, n_max, m_max)
        return cls(jnp.asarray(a), jnp.asarray(b), shapes, r, seed, d_initial, adapted_dtype)

    @property
    def adapted(self) -> Shapes:
        return self.shapes

    def __repr__(self) -> str:
        return (f"VeRA(r={self.r}, seed={self.seed}, matrices={len(self.shapes)}, "
                f"shared A {tuple(self.A.shape)}, B {tuple(self.B.shape)})")

    def init(self, key=None):
        """``lambda_d = d_initial``, ``lambda_b = 0`` (no randomness: ``key`` is unused)."""
        return {p: {"lambda_d": jnp.full((self.r,), self.d_initial, jnp.float32),
                    "lambda_b": jnp.zeros((n_out,), jnp.float32)}
                for p, (_, n_out) in self.shapes}

    def deltas(self, trainable) -> dict:
        """``{path: (Lambda_b B_l Lambda_d A_l)^T}`` in each kernel's ``(in, out)`` shape."""
        out = {}
        for p, (n_in, n_out) in self.shapes:
            lam = trainable[p]
            out[p] = vera_delta(self.A[:, :n_in], self.B[:n_out, :], lam["lambda_d"], lam["lambda_b"])
        return out

    def apply(self, trainable, base_params):
        return add_deltas(base_params, self.deltas(trainable), self.adapted_dtype, what="this VeRA")

    def details(self) -> dict:
        return {"r": self.r, "seed": self.seed}

    def spec(self) -> dict:
        return {"method": self.name, "r": self.r, "seed": str(self.seed), "d_initial": self.d_initial,
                "adapted_dtype": self.adapted_dtype, "adapted": [[p, list(s)] for p, s in self.shapes]}

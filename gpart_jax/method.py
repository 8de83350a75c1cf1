"""The protocol every fine-tuning method follows: two pure functions over pytrees.

A method is built once from the base params and its options (targets, budget, seed). Then

    trainable = method.init(key)                    # theta for GPart; LoRA's factors; ...
    params    = method.apply(trainable, base_params)  # full params, a pure function of both

so training loops, adapter files and experiments treat all methods alike: differentiate
``apply`` with respect to ``trainable`` and feed the gradient to optax. Modules trained in full
(a new classifier head, PEFT's ``modules_to_save``) are not part of a method: they travel as the
``saved`` mapping ``{path: leaf}`` (``gpart_jax.saved``), the same way in every entry point.

Every method is a ``flax.struct`` dataclass: its arrays (GPart's scales, VeRA's shared matrices)
are pytree leaves and everything else is static, compared by value, so a method can be passed
as an argument of a jitted function instead of being compiled in as constants.

Matrices are flax kernels stored ``(in, out)`` (``y = x W``). The low-rank methods keep the
paper's (PyTorch) factor shapes, ``A: (r, in)`` and ``B: (out, r)``, so that the PyTorch weight
update is ``Delta W = B A`` of shape ``(out, in)`` and the flax kernel update is its transpose,
``Delta kernel = (B A)^T = A^T B^T`` of shape ``(in, out)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gpart_jax import _validate, layout
from gpart_jax.errors import TargetError
from gpart_jax.filters import Filter
from gpart_jax.paths import leaves_with_paths

ADAPTED_DTYPES = ("float32", "base")
Shapes = tuple[tuple[str, tuple[int, ...]], ...]  # ((path, shape), ...) of the adapted leaves


def tree_size(tree) -> int:
    """Number of scalar entries in a pytree of arrays."""
    return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree_util.tree_leaves(tree))


def tree_nbytes(tree) -> int:
    """Bytes of a pytree of arrays (what its tensors take on disk, before metadata)."""
    return sum(math.prod(getattr(x, "shape", ())) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree))


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a method adapts and trains; ``str()`` renders it for people.

    ``adapted``: ``(path, shape)`` of every adapted leaf, in order. ``trainable``: numbers in the
    trainable pytree; ``saved``: numbers in the saved modules; ``adapted_count``: weights the
    method changes (N); ``total``: numbers in the base params when given (else ``None``);
    ``details``: method-specific facts (GPart: d, N, scheme, seed, empty groups).
    """

    method: str
    adapted: Shapes
    trainable: int
    saved: int
    adapted_count: int
    total: int | None
    details: Mapping[str, Any]

    def __str__(self) -> str:
        extra = ", ".join(f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool)
                          else f"{k} {v}" for k, v in self.details.items())
        lines = [f"{self.method}" + (f" ({extra})" if extra else "")]
        trained = self.trainable + self.saved
        line = (f"trainable: {trained:,} ({self.trainable:,} in the method"
                + (f", {self.saved:,} in saved modules" if self.saved else "") + ")"
                + f" || adapted weights: {self.adapted_count:,}")
        if self.total:
            line += f" || all params: {self.total:,} || trainable%: {100 * trained / self.total:.4f}"
        lines.append(line)
        lines.append(f"adapted leaves ({len(self.adapted)}):")
        lines += [f"  {path}  {tuple(shape)}" for path, shape in self.adapted]
        return "\n".join(lines)


class Method(struct.PyTreeNode):
    """A fine-tuning method: ``init(key) -> trainable`` and ``apply(trainable, base) -> params``.

    Subclasses set ``name`` and implement ``init``, ``apply``, ``spec`` (the JSON that rebuilds
    them, with ``from_spec``) and ``adapted`` (``(path, shape)`` of the leaves they change).
    """

    name: ClassVar[str] = "method"
    additive: ClassVar[bool] = True  # apply(t, base) = base + delta(t), delta independent of base

    def init(self, key: jax.Array | None = None) -> Any:
        """The initial trainable pytree (for most methods the base model exactly)."""
        raise NotImplementedError

    def apply(self, trainable: Any, base_params: Any) -> Any:
        """Full parameters: ``base_params`` with the update of ``trainable`` applied. Pure."""
        raise NotImplementedError

    @property
    def adapted(self) -> Shapes:
        """``(path, shape)`` of the leaves this method changes, in order."""
        raise NotImplementedError

    def spec(self) -> dict:
        """JSON-able description from which ``gpart_jax.methods.from_spec`` rebuilds the method
        on a base (with ``"method"``: its name)."""
        raise NotImplementedError

    @property
    def target_paths(self) -> tuple[str, ...]:
        """Paths of the adapted leaves."""
        return tuple(p for p, _ in self.adapted)

    def trainable_shapes(self) -> Any:
        """Shapes of the trainable pytree, without allocating it."""
        return jax.eval_shape(self.init, jax.random.key(0))

    @property
    def num_trainable(self) -> int:
        """Numbers in the trainable pytree (saved modules are counted separately)."""
        return tree_size(self.trainable_shapes())

    @property
    def num_adapted(self) -> int:
        """Weights the method changes (N)."""
        return sum(math.prod(s) for _, s in self.adapted)

    def trainable_bytes(self) -> int:
        """Bytes of the trainable pytree's tensors."""
        return tree_nbytes(self.trainable_shapes())

    def details(self) -> dict:
        """Method-specific facts for ``summary`` (overridden by methods that have some)."""
        return {}

    def summary(self, base_params=None, saved: Mapping[str, Any] | None = None) -> Summary:
        """What is adapted and trained (PEFT's ``print_trainable_parameters``, with the paths):
        ``print(method.summary(base_params, saved))``."""
        return Summary(self.name, self.adapted, self.num_trainable, tree_size(dict(saved or {})),
                       self.num_adapted, None if base_params is None else tree_size(base_params),
                       self.details())


# --------------------------------------------------------------------------- shared helpers

def adapted_shapes(base_params, targets: Filter, *, matrices: str | None = None) -> Shapes:
    """``((path, shape), ...)`` of the leaves ``targets`` selects, in natural order.

    ``matrices``: when set (the method's name), every selected leaf must be a 2-D kernel
    ``(in, out)``; a DenseGeneral kernel (rank 3) or any other rank is a ``TargetError`` that
    names the leaf.
    """
    entries = layout.build(base_params, targets)
    if matrices is not None:
        bad = [f"{e.path} {e.shape}" for e in entries if len(e.shape) != 2]
        if bad:
            raise TargetError(
                f"{matrices} adapts 2-D kernels (in, out); targets {targets!r} selected "
                f"{', '.join(bad[:5])}. A DenseGeneral kernel (rank 3, as in flax attention) has "
                f"no single (inputs x outputs) split: GPart adapts it as it is; for {matrices} "
                f"target 2-D Dense kernels")
    return tuple((e.path, e.shape) for e in entries)


def add_deltas(base_params, deltas: Mapping[str, Any], adapted_dtype: str = "float32",
               replace: bool = False, what: str = "this method"):
    """``base_params`` with ``w = w0 + delta`` (``w = delta`` if ``replace``) on the leaves in ``deltas``.

    The sum is taken in float32; adapted leaves stay float32 (``adapted_dtype="float32"``, exact)
    or are cast back to each base leaf's dtype (``"base"``, lean). Every other leaf is returned as
    it is. A missing path, another shape or a non-floating-point base leaf is a
    ``LayoutMismatchError`` naming it.
    """
    flat, treedef = leaves_with_paths(base_params)
    expected = [layout.LayoutEntry(p, tuple(np.shape(d))) for p, d in deltas.items()]
    layout.check_params(expected, flat, what, arrays=True)
    index = {path: j for j, (path, _) in enumerate(flat)}
    leaves = [leaf for _, leaf in flat]
    for path, delta in deltas.items():
        j = index[path]
        w0 = leaves[j]
        delta = jnp.asarray(delta, jnp.float32)
        w = delta if replace else jnp.asarray(w0).astype(jnp.float32) + delta
        leaves[j] = w.astype(w0.dtype) if adapted_dtype == "base" else w
    return jax.tree_util.tree_unflatten(treedef, leaves)


def check_adapted_dtype(adapted_dtype: str) -> str:
    return _validate.choice(adapted_dtype, "adapted_dtype", ADAPTED_DTYPES)

"""The protocol every fine-tuning method follows: two pure functions over pytrees.

A method is built once from the base params and its options (targets, budget, seed). Then

    adapter = method.init(key)                    # the trainable pytree (theta, LoRA factors, ...)
    params  = method.apply(adapter, base_params)  # full params, a pure function of both

so the training loop, checkpoints and experiments treat all methods alike: differentiate
``apply`` with respect to ``adapter`` and feed the gradient to optax. Fully trained modules (a new
classifier head) are not part of a method; ``gpart_jax.trainable`` splits them off for every
method the same way.

Every ``Method`` subclass is a JAX pytree: the attributes named in ``tree_fields`` (a built
``GPart``, VeRA's shared matrices, Fastfood's diagonals) are its leaves and everything else is
static, so a method can be passed as an argument of a jitted function instead of being compiled
in as constants. Methods are immutable once built.

Matrices are flax kernels stored ``(in, out)`` (``y = x W``). The low-rank methods keep the
paper's (PyTorch) factor shapes, ``A: (r, in)`` and ``B: (out, r)``, so that the PyTorch weight
update is ``Delta W = B A`` of shape ``(out, in)`` and the flax kernel update is its transpose,
``Delta kernel = (B A)^T = A^T B^T`` of shape ``(in, out)``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpart_jax.layout import (
    DEFAULT_EXCLUDE,
    Targets,
    build_layout,
    flatten_with_paths,
    select_targets,
)

ADAPTED_DTYPES = ("float32", "base")


def tree_size(tree) -> int:
    """Number of scalar entries in a pytree of arrays."""
    return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree_util.tree_leaves(tree))


def tree_nbytes(tree) -> int:
    """Bytes of a pytree of arrays (what an adapter's tensors take on disk, before metadata)."""
    return sum(math.prod(getattr(x, "shape", ())) * x.dtype.itemsize
               for x in jax.tree_util.tree_leaves(tree))


class _Static:
    """Identity-hashed holder of a method's non-array attributes (its pytree aux data)."""

    def __init__(self, attrs: dict):
        self.attrs = attrs


def _flatten(method):
    static = method.__dict__.get("_static")
    if static is None:
        attrs = {k: v for k, v in method.__dict__.items() if k not in method.tree_fields}
        static = _Static(attrs)
        method.__dict__["_static"] = static
    return tuple(getattr(method, f) for f in method.tree_fields), static


def _unflatten(cls, static, children):
    method = object.__new__(cls)
    method.__dict__.update(static.attrs)
    method.__dict__["_static"] = static
    for name, child in zip(cls.tree_fields, children, strict=True):
        method.__dict__[name] = child
    return method


class Method(abc.ABC):
    """A fine-tuning method: ``init(key) -> adapter`` and ``apply(adapter, base) -> params``."""

    name: str = "method"
    target_paths: tuple[str, ...] = ()  # paths of the leaves the method adapts
    additive: bool = True  # apply(adapter, base) = base + delta(adapter), delta independent of base
    tree_fields: tuple[str, ...] = ()  # attributes holding arrays: the pytree's children

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten, lambda s, c: _unflatten(cls, s, c))

    @abc.abstractmethod
    def init(self, key: jax.Array | None = None) -> Any:
        """The initial adapter pytree (for most methods the base model exactly)."""

    @abc.abstractmethod
    def apply(self, adapter: Any, base_params: Any) -> Any:
        """Full parameters: ``base_params`` with the adapter's update applied. Pure."""

    def adapter_shapes(self) -> Any:
        """Shapes of the adapter pytree, without allocating it."""
        return jax.eval_shape(self.init, jax.random.key(0))

    @property
    def num_trainable(self) -> int:
        """Trainable numbers in the adapter (saved modules are counted separately)."""
        return tree_size(self.adapter_shapes())

    @property
    def num_adapted(self) -> int:
        """Weights the method changes (N): the sizes of the leaves in ``target_paths``."""
        shapes = getattr(self, "target_shapes", {})
        return sum(math.prod(s) for s in shapes.values())

    def adapter_bytes(self) -> int:
        """Bytes of the adapter's tensors as stored (float32 unless the method says otherwise)."""
        return tree_nbytes(self.adapter_shapes())

    def metadata(self) -> dict:
        """JSON-able description: what must be known, besides the adapter, to rebuild the method."""
        return {"method": self.name}


# --------------------------------------------------------------------------- shared helpers

def check_positive_int(value, name: str) -> int:
    """``value`` as a Python int >= 1, or an error naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_adapted_dtype(adapted_dtype: str) -> str:
    if adapted_dtype not in ADAPTED_DTYPES:
        raise ValueError(f"adapted_dtype must be one of {ADAPTED_DTYPES}, got {adapted_dtype!r}")
    return adapted_dtype


def targeted_leaves(
    base_params,
    targets: Targets,
    *,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    layers: Sequence[int] | None = None,
    layer_pattern: str | None = None,
    matrices: str | None = None,
) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of the leaves ``targets`` selects, in the layout's (natural) order.

    Same target syntax as ``GPart.create`` (suffix tuple, regex, callable, ``"all-linear"``).
    ``matrices``: when set (the method's name), every selected leaf must be 2-D (a flax kernel
    ``(in, out)``), or a ``ValueError`` names the offending leaves.
    """
    flat, _ = flatten_with_paths(base_params)
    chosen = select_targets(flat, targets, exclude=exclude, layers=layers, layer_pattern=layer_pattern)
    layout = build_layout(flat, chosen)
    shapes = {e.path: e.shape for e in layout}
    if matrices is not None:
        bad = [f"{p} {s}" for p, s in shapes.items() if len(s) != 2]
        if bad:
            raise ValueError(f"{matrices} adapts 2-D matrices (flax kernels (in, out)) only; targets "
                             f"{targets!r} selected leaves of other ranks: {', '.join(bad[:10])}")
    return shapes


def add_deltas(base_params, deltas: dict[str, Any], adapted_dtype: str = "float32",
               replace: bool = False):
    """``base_params`` with ``w = w0 + delta`` (``w = delta`` if ``replace``) on the leaves in ``deltas``.

    The sum is taken in float32; adapted leaves stay float32 (``adapted_dtype="float32"``, exact)
    or are cast back to each base leaf's dtype (``"base"``, lean). Every other leaf is returned as
    it is. Paths missing from ``base_params`` or with another shape are an error.
    """
    flat, treedef = flatten_with_paths(base_params)
    index = {path: j for j, (path, _) in enumerate(flat)}
    problems = []
    for path, delta in deltas.items():
        if path not in index:
            problems.append(f"{path}: missing")
        elif tuple(getattr(flat[index[path]][1], "shape", ())) != tuple(delta.shape):
            problems.append(f"{path}: shape {tuple(flat[index[path]][1].shape)}, expected "
                            f"{tuple(delta.shape)}")
    if problems:
        raise ValueError("base_params does not match the targets this method was built for: "
                         + "; ".join(problems[:5]))
    leaves = [leaf for _, leaf in flat]
    for path, delta in deltas.items():
        j = index[path]
        w0 = leaves[j]
        delta = jnp.asarray(delta, jnp.float32)
        w = delta if replace else jnp.asarray(w0).astype(jnp.float32) + delta
        leaves[j] = w.astype(w0.dtype) if adapted_dtype == "base" else w
    return jax.tree_util.tree_unflatten(treedef, leaves)

"""The protocol every fine-tuning method follows: two pure functions over pytrees.

A method is built once from the base params and its options (targets, budget, seed). Then

    adapter = method.init(key)                    # the trainable pytree (theta, LoRA factors, ...)
    params  = method.apply(adapter, base_params)  # full params, a pure function of both

so the training loop, checkpoints and experiments treat all methods alike: differentiate
``apply`` with respect to ``adapter`` and feed the gradient to optax. Fully trained modules (a new
classifier head) are not part of a method; ``gpart_jax.trainable`` splits them off for every
method the same way.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import jax


def tree_size(tree) -> int:
    """Number of scalar entries in a pytree of arrays."""
    return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree_util.tree_leaves(tree))


def tree_nbytes(tree) -> int:
    """Bytes of a pytree of arrays (what an adapter's tensors take on disk, before metadata)."""
    return sum(math.prod(getattr(x, "shape", ())) * x.dtype.itemsize
               for x in jax.tree_util.tree_leaves(tree))


class Method(abc.ABC):
    """A fine-tuning method: ``init(key) -> adapter`` and ``apply(adapter, base) -> params``."""

    name: str = "method"
    target_paths: tuple[str, ...] = ()  # paths of the leaves the method adapts

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

    def adapter_bytes(self) -> int:
        """Bytes of the adapter's tensors as stored (float32 unless the method says otherwise)."""
        return tree_nbytes(self.adapter_shapes())

    def metadata(self) -> dict:
        """JSON-able description: what must be known, besides the adapter, to rebuild the method."""
        return {"method": self.name}

"""Data parallelism that exchanges only theta's gradient: 4 d bytes a step, not 4 N.

Written as a plain ``jax.jit`` over a sharded batch, a data-parallel step makes XLA all-reduce the
gradient of every adapted weight (4 N bytes) before GPart's grouped sum: nothing tells it the sum
is linear. Under ``shard_map`` each device can instead sum its own weight cotangent into a
partial d-vector and reduce that, provided the trainable pytree is marked as varying over the
batch axes (``lax.pcast``): left replicated ("invariant"), the transpose of its implicit broadcast
would sum every weight's cotangent over the devices, and a ``pmean`` on top would count each
device's contribution once per device. ``data_parallel_value_and_grad`` packages that recipe; it
works for any method and any loss, and touches nothing of the map itself.

Use one ``jax.jit`` around the whole step with no ``jit`` nested inside: on many host CPU devices
an inner ``jit(shard_map(...))`` was seen to abort in XLA's rendezvous (a device arriving late at
the collective; README, "Several devices").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


def data_parallel_value_and_grad(loss: Callable, *, mesh: Mesh,
                                 batch_axes: Sequence[str] = ("data",),
                                 batch_argnums: Sequence[int] = (1,), argnums: int = 0) -> Callable:
    """``(value, grad)`` of ``loss`` averaged over the batch's shards, exchanging only ``grad``.

    ``loss(*args)`` must be the mean over the rows it is given (equal-size shards). The arguments
    in ``batch_argnums`` are split on their leading axis over ``batch_axes`` of ``mesh``; every
    other argument is replicated. The gradient is taken with respect to ``args[argnums]`` (theta,
    or a pytree of everything that trains) and comes back replicated, as does the value. Call it
    inside one ``jax.jit`` with the update.
    """
    axes = tuple(batch_axes)
    batch_argnums = tuple(batch_argnums)

    def local(*args):
        def mean_loss(trainable):
            trainable = jax.tree_util.tree_map(lambda a: lax.pcast(a, axes, to="varying"), trainable)
            full = list(args)
            full[argnums] = trainable
            return lax.pmean(loss(*full), axes)

        return jax.value_and_grad(mean_loss)(args[argnums])

    def value_and_grad(*args):
        in_specs = tuple(P(axes) if i in batch_argnums else P() for i in range(len(args)))
        return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()))(*args)

    return value_and_grad

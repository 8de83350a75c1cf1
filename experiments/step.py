"""One training step for every method, task and device layout: ``make_train_step``.

    step = make_train_step(task, optimizer, mesh=mesh, grad_accum=2, dropout_key=key)
    state, out = step(state, method, base, batch)      # one optimizer step; out: loss, weight

``state`` is ``{"trainable", "saved", "opt", "step"}``: the method's trainable pytree, the saved
modules (``{path: leaf}``), the optimizer state of the pair ``(trainable, saved)`` and the step
number. ``batch`` holds ``grad_accum`` micro-batches, ``(grad_accum, B / grad_accum, ...)``; their
gradients of the summed, weighted losses are added up and divided by the total weight once, so
accumulation equals one big batch.

**Data parallel, communicating the trainable size.** The batch rows are sharded over the mesh
axis ``"data"`` (all the devices of every process); ``method``, ``base`` and ``state`` are
replicated. On several devices the step runs under ``shard_map``: each device computes the loss
sums and their gradient on its own rows, then one ``psum`` adds up the gradient of
``(trainable, saved)``, the loss and the weight. What crosses devices is therefore the trainable
size, 4 (d + head) bytes for GPart, not the 4 N bytes of the adapted weights' gradient that XLA
reduces when the same step is written as a plain ``jit`` over a sharded batch (it reduces the
weight gradient before the grouped sum, because nothing tells it otherwise;
``experiments/analyses/communication.py`` measures both). On one device the step is the same
function under plain ``jit``, without ``shard_map`` (whose body XLA fuses differently: results
would move in the last bits). Several processes (``jax.distributed``) run the same step: the
mesh spans their devices and each process feeds its own rows (``put_batch``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gpart_jax import full_params

AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ``("data",)`` mesh over every process's devices (``num_devices`` > 0: the first
    ones, single-process only)."""
    devices = jax.devices()
    if num_devices and jax.process_count() > 1:
        raise ValueError("devices must be 0 (all) in a multi-process run")
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(f"devices={num_devices} but {len(devices)} devices exist; set "
                         f"--config.devices=0 (all) or a number up to {len(devices)}")
    return Mesh(np.asarray(devices[:num_devices or len(devices)]), (AXIS,))


def gradients(task, trainable, saved, method, base, batch, rng, grad_accum: int,
              axis: str | None = None):
    """``(gradient sums, loss sum, weight sum)`` of ``(trainable, saved)`` over the micro-batches
    of ``batch`` (not yet divided: the caller adds them up across devices first).

    Inside ``shard_map`` over ``axis``, the pair is first marked as varying over the axis
    (``lax.pcast``): its gradient is then this device's own. Left replicated ("invariant"), its
    cotangent would be summed over the devices by the transpose of the implicit broadcast, at
    the size of every weight built from it (the 4 N bytes this step avoids), and a sum on top
    would count each device's contribution once per device.
    """
    def loss(pair, mb, key):
        t, s = pair
        return task.loss_terms(full_params(method, t, base, s), mb, key)

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    pair = (trainable, saved)
    if axis is not None:
        pair = jax.lax.pcast(pair, axis, to="varying")

    def micro(carry, xs):
        mb, i = xs
        (value, weight), grads = grad_fn(pair, mb, jax.random.fold_in(rng, i))
        g_sum, l_sum, w_sum = carry
        return (jax.tree_util.tree_map(jnp.add, g_sum, grads), l_sum + value, w_sum + weight), None

    carry = (jax.tree_util.tree_map(jnp.zeros_like, pair), jnp.float32(0), jnp.float32(0))
    if grad_accum == 1:
        return micro(carry, (jax.tree_util.tree_map(lambda x: x[0], batch), 0))[0]
    return jax.lax.scan(micro, carry, (batch, jnp.arange(grad_accum)))[0]


def make_train_step(task, optimizer: optax.GradientTransformation, *, mesh: Mesh,
                    grad_accum: int = 1, dropout_key: jax.Array | None = None) -> Callable:
    """The jitted step ``(state, method, base, batch) -> (state, {"loss", "weight"})``.

    ``task`` needs ``loss_terms(params, batch, rng) -> (sum, weight)``. Dropout at step ``s`` uses
    ``fold_in(dropout_key, s)`` and micro-batch ``i`` folds in ``i``; every device folds in its own
    index too when the mesh has more than one (so rows on different devices draw different
    masks).
    """
    key = jax.random.key(0) if dropout_key is None else dropout_key
    parallel = mesh.size > 1

    def local(state, method, base, batch):
        rng = jax.random.fold_in(key, state["step"])
        if parallel:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
        sums = gradients(task, state["trainable"], state["saved"], method, base, batch, rng,
                         grad_accum, AXIS if parallel else None)
        g_sum, l_sum, w_sum = jax.lax.psum(sums, AXIS) if parallel else sums
        scale = 1.0 / jnp.maximum(w_sum, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g * scale, g_sum)
        pair = (state["trainable"], state["saved"])
        updates, opt = optimizer.update(grads, state["opt"], pair)
        trainable, saved = optax.apply_updates(pair, updates)
        new = {"trainable": trainable, "saved": saved, "opt": opt, "step": state["step"] + 1}
        return new, {"loss": l_sum * scale, "weight": w_sum}

    if not parallel:  # one device: the plain step (XLA fuses a shard_map body differently)
        return jax.jit(local)
    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(None, AXIS)),
                           out_specs=(P(), P()))
    return jax.jit(mapped)


def make_eval_step(task, mesh: Mesh) -> Callable:
    """The jitted ``(params, batch) -> per-row outputs``, rows sharded, outputs replicated."""
    return jax.jit(task.eval_outputs, out_shardings=NamedSharding(mesh, P()))


def replicate(tree, mesh: Mesh):
    """``tree`` (host or device arrays, the same on every process) replicated over ``mesh``."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, keys: tuple[str, ...],
              grad_accum: int | None = None) -> dict[str, Any]:
    """A host batch (the same global batch on every process) as device arrays, rows sharded.

    With ``grad_accum`` the rows are first split into ``(grad_accum, B / grad_accum, ...)``
    micro-batches (rows of each sharded). Each process transfers only the rows of its own
    devices.
    """
    arrays = {k: np.asarray(batch[k]) for k in keys}
    if grad_accum is not None:
        arrays = {k: v.reshape(grad_accum, -1, *v.shape[1:]) for k, v in arrays.items()}
    spec = P(None, AXIS) if grad_accum is not None else P(AXIS)
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
        return jax.device_put(arrays, sharding)
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in arrays.items()}


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_SHAPE = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")


def collective_bytes(hlo_text: str) -> list[dict]:
    """The collectives of a compiled HLO module (``compiled.as_text()``): one dict per op with its
    ``op`` (all-reduce, all-gather, ...), ``shapes`` and ``bytes`` (of its results)."""
    out = []
    for line in hlo_text.splitlines():
        if "=" not in line:
            continue
        lhs, _, rhs = line.partition("=")
        rhs = rhs.strip()
        for op in _COLLECTIVES:
            m = re.match(rf"(.*?)\s({op})(-start)?\(", rhs)
            if m is None:
                continue
            shapes = _SHAPE.findall(m.group(1))
            size = sum(math.prod(int(x) for x in dims.split(",") if x) * _itemsize(dtype)
                       for dtype, dims in shapes)
            out.append({"op": op, "shapes": [f"{d}[{s}]" for d, s in shapes], "bytes": size})
            break
    return out


def _itemsize(dtype: str) -> int:
    """Bytes of an HLO element type (``f32``, ``bf16``, ``s32``, ``u8``, ``pred``, ...)."""
    if dtype == "pred":
        return 1
    bits = re.search(r"\d+", dtype)
    return int(bits.group()) // 8 if bits else 4

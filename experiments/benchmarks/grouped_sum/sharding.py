"""Collectives around the FFI kernels when the base weights are sharded (CPU host devices).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m \\
        experiments.benchmarks.grouped_sum.sharding --out experiments/results/grouped_sum/sharding.json

On a 2 x 4 mesh ``("data", "model")`` the base kernels (and the weights' cotangent) are sharded
over ``"model"`` by columns and theta is replicated; the adapted weights are asked for in the
bases' sharding. For today's code (``current``) and for the fused kernels (``ffi_fused``) this
counts the collectives in the compiled HLO of the jitted reparam (forward) and of the forward +
backward step, and compares the results with today's code on one device. Both kinds of mesh
axes are measured: ``Auto`` (``jax.sharding.Mesh``'s default, as in the library's tests: the
SPMD partitioner decides) and ``Explicit`` (``jax.make_mesh``'s default).

An XLA custom call has no partitioning rule: the partitioner gives it replicated operands, so
each sharded operand is all-gathered first (one leaf-sized all-gather per leaf and operand),
unless the call is wrapped in ``jax.experimental.custom_partitioning``.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import gpart_jax as gj
from experiments.benchmarks.grouped_sum import bench, kernels
from gpart_jax import files

MESH_SHAPE = (2, 4)
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def collectives(hlo_text: str) -> dict:
    """Counts of each collective in compiled HLO, and of the all-gathers' result shapes."""
    counts = {}
    for op in COLLECTIVES:
        counts[op] = len(re.findall(rf"= [^=]*? {op}(?:-start)?\(", hlo_text))
    shapes = re.findall(r"= (\w+\[[\d,]*\])\S* all-gather(?:-start)?\(", hlo_text)
    counts["all_gather_shapes"] = dict(collections.Counter(sorted(shapes)))
    return counts


def measure(axis_types: str = "auto", leaves: int = 10, leaf_shape: tuple[int, int] = (512, 256),
            d: int = 2304) -> dict:
    """Collectives of ``current`` and ``ffi_fused``, forward and forward + backward.

    ``axis_types``: ``"auto"`` (``Mesh``'s default: the SPMD partitioner decides, as in the
    library's tests) or ``"explicit"`` (``jax.make_mesh``'s default: shardings are part of the
    types, and a value whose sharding a transpose cannot match is resharded).
    """
    if jax.device_count() < np.prod(MESH_SHAPE):
        raise SystemExit(f"needs {np.prod(MESH_SHAPE)} devices, found {jax.device_count()}: run "
                         f"with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    devices = np.asarray(jax.devices()[:int(np.prod(MESH_SHAPE))]).reshape(MESH_SHAPE)
    axis_type = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[axis_types]
    mesh = Mesh(devices, ("data", "model"), axis_types=(axis_type, axis_type))
    by_columns = NamedSharding(mesh, P(None, "model"))
    replicated = NamedSharding(mesh, P())
    key = jax.random.key(0)
    params = {f"layer_{i:02d}": {"kernel": jax.random.normal(jax.random.fold_in(key, i), leaf_shape)}
              for i in range(leaves)}
    gp = gj.GPart.create(params, d=d, targets=("kernel",))
    bases = tuple(params[f"layer_{i:02d}"]["kernel"] for i in range(leaves))
    cotangents = tuple(jax.random.normal(jax.random.fold_in(key, 100 + i), leaf_shape)
                       for i in range(leaves))
    theta = jax.random.normal(jax.random.key(1), (d,))
    # the reference: today's code on one device
    one_device = bench.forward_backward(bench.REPARAMS["current"])(gp, theta, bases, cotangents)
    bases = tuple(jax.device_put(b, by_columns) for b in bases)
    cotangents = tuple(jax.device_put(g, by_columns) for g in cotangents)
    theta = jax.device_put(theta, replicated)
    weights_sharding = tuple(by_columns for _ in range(leaves))

    result = {"mesh": {"shape": list(MESH_SHAPE), "axes": ["data", "model"],
                       "axis_types": axis_types},
              "base_sharding": "PartitionSpec(None, 'model')", "leaves": leaves,
              "leaf_shape": list(leaf_shape), "d": d, "variants": {}}
    for name in ("current", "ffi_fused"):
        reparam = bench.REPARAMS[name]
        forward = jax.jit(lambda gp, t, b, reparam=reparam: reparam(gp, t, b),
                          out_shardings=weights_sharding)
        step = bench.forward_backward(reparam, out_shardings=(weights_sharding, replicated))
        weights, grad = step(gp, theta, bases, cotangents)
        result["variants"][name] = {
            "forward": collectives(forward.lower(gp, theta, bases).compile().as_text()),
            "forward_backward": collectives(
                step.lower(gp, theta, bases, cotangents).compile().as_text()),
            "weights_sharding": str(weights[0].sharding.spec),
            "weights_bit_identical_to_current_on_one_device": bool(all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(weights, one_device[0], strict=True))),
            "weights_max_abs_diff_vs_current_on_one_device": max(
                float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(weights, one_device[0], strict=True)),
            "grad_max_abs_diff_vs_current_on_one_device":
                float(np.abs(np.asarray(grad) - np.asarray(one_device[1])).max()),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    kernels.register()
    result = {"command": "XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m "
                         "experiments.benchmarks.grouped_sum.sharding " + " ".join(argv or sys.argv[1:]),
              "jax": jax.__version__,
              "meshes": [measure("auto"), measure("explicit")]}
    print(json.dumps(result, indent=1))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

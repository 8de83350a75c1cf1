"""Bytes on disk of a GPart adapter with d = 23,040 (MiniLM query/value shapes).

    python -m experiments.analyses.adapter_size            # writes experiments/results/adapter_size.json
    python -m experiments.analyses.adapter_size --render   # prints the README table from it

theta is random (trained values do not compress either); with and without a 2-class head
(384 x 2 + 2 floats) as a saved module. The metadata is the manifest, ``adapter.json``.
"""

from __future__ import annotations

import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import gpart_jax as gj
from experiments.analyses import run_analysis
from gpart_jax.adapters import MANIFEST, directory_size

D = 23040


def measure(args) -> dict:
    shapes = {"encoder": {"layer": {str(i): {"attention": {"self": {
        m: {"kernel": jax.ShapeDtypeStruct((384, 384), jnp.float32)} for m in ("query", "value")}}}
        for i in range(6)}}}
    entries = gj.layout.build(shapes, ("query/kernel", "value/kernel"), element_order="torch")
    method = gj.GPart.from_layout(entries, d=D, seed=0)
    rng = np.random.default_rng(0)
    theta = jnp.asarray(rng.normal(size=D), jnp.float32)
    head = {"classifier/kernel": jnp.asarray(rng.normal(size=(384, 2)), jnp.float32),
            "classifier/bias": jnp.zeros(2, jnp.float32)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, saved in (("theta only", {}), ("theta + 2-class head", head)):
            path = pathlib.Path(tmp) / name.replace(" ", "_")
            gj.save_adapter(path, method, theta, saved=saved)
            tensor_bytes = 4 * D + sum(4 * int(np.prod(v.shape)) for v in saved.values())
            rows.append({"adapter": name, "bytes_on_disk": directory_size(path),
                         "tensor_bytes": tensor_bytes,
                         "metadata_bytes": (path / MANIFEST).stat().st_size})
    return {"command": args.command, "d": D, "rows": rows}


def render(doc: dict) -> str:
    lines = ["| adapter (d = 23,040) | bytes on disk | tensor bytes | manifest (adapter.json) |",
             "|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['adapter']} | {r['bytes_on_disk']:,} | {r['tensor_bytes']:,} | "
                     f"{r['metadata_bytes']:,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_analysis("adapter_size", measure, render, description=__doc__, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

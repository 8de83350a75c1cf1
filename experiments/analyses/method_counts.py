"""Trainable numbers and stored bytes of every method on the query/value kernels of three encoders.

    python -m experiments.analyses.method_counts            # writes experiments/results/method_counts.json
    python -m experiments.analyses.method_counts --render   # prints the table from it
    python -m experiments.analyses.method_counts --render --models RoBERTa-base   # that model's rows (README)

Shapes only (``jax.ShapeDtypeStruct``, nothing downloaded): MiniLM-L6-H384 (6 layers of
384 x 384), RoBERTa-base (12 x 768 x 768) and RoBERTa-large (24 x 1024 x 1024), targets
``("query/kernel", "value/kernel")``, no classifier (the paper's counts leave it out). Budgets are
the paper's: d = 23,040 for GPart and Uni-LoRA (r = 4), LoRA r = 8, VeRA r = 1024 on base and
r = 256 elsewhere. "bytes stored" is the adapter's float32 tensors plus an 8-byte seed for the
methods that regenerate a random structure from one (``gpart_jax.methods.count``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import gpart_jax as gj
from experiments.analyses import run_analysis

TARGETS = ("query/kernel", "value/kernel")
MODELS = {"MiniLM-L6-H384": (6, 384), "RoBERTa-base": (12, 768), "RoBERTa-large": (24, 1024)}


def encoder_shapes(layers: int, hidden: int) -> dict:
    sds = jax.ShapeDtypeStruct((hidden, hidden), jnp.float32)
    return {"params": {"encoder": {f"layer_{i}": {"attention": {"self": {
        name: {"kernel": sds} for name in ("query", "key", "value")}}} for i in range(layers)}}}


def configs(model: str) -> list[tuple[str, dict]]:
    vera_r = 1024 if model == "RoBERTa-base" else 256
    return [("gpart", {"d": 23_040}), ("gpart-noniso", {"d": 23_040}),
            ("unilora", {"d": 23_040, "r": 4}), ("fastfood", {"d": 23_040}),
            ("lora", {"r": 8}), ("vera", {"r": vera_r}), ("full", {}), ("head-only", {})]


def measure(models: dict[str, tuple[int, int]] = MODELS) -> dict:
    rows = []
    for model, (layers, hidden) in models.items():
        base = encoder_shapes(layers, hidden)
        for name, options in configs(model):
            c = gj.methods.count(gj.methods.build(name, base, targets=TARGETS, **options))
            rows.append({"model": model, "method": name, "options": options,
                         "trainable": c["trainable"], "adapted": c["adapted"],
                         "stored_bytes": c["stored_bytes"]})
    return {"targets": list(TARGETS), "rows": rows}


def render(doc: dict, models: tuple[str, ...] | None = None) -> str:
    """Markdown table of the rows of ``doc`` (only ``models``' rows when given)."""
    lines = ["| model | method | options | trainable | weights adapted (N) | bytes stored |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if models is not None and r["model"] not in models:
            continue
        opts = ", ".join(f"{k}={v:,}" for k, v in r["options"].items()) or "-"
        lines.append(f"| {r['model']} | {r['method']} | {opts} | {r['trainable']:,} | "
                     f"{r['adapted']:,} | {r['stored_bytes']:,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_analysis(
        "method_counts", lambda args: measure(), render, description=__doc__, argv=argv,
        arguments=lambda p: p.add_argument("--models", nargs="+", choices=list(MODELS),
                                           help="print only these models' rows"),
        render_args=lambda args: (tuple(args.models) if args.models else None,))


if __name__ == "__main__":
    raise SystemExit(main())

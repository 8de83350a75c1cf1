"""Rewrite the README's result tables from the committed result files, or check that they agree.

    python -m experiments.analyses.render_readme           # rewrites the blocks of README.md
    python -m experiments.analyses.render_readme --check   # exit 1 naming the blocks that differ

Each table sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and is produced by the
``render`` (or ``compact``) function of the module that wrote its JSON. Run from the repository
root: paths are relative to it.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import re
import sys

from experiments.analyses import RESULTS, read_doc
from experiments.benchmarks.grouped_sum.report import RUNS as GROUPED_SUM_RUNS
from gpart_jax import files

README = pathlib.Path("README.md")
BLOCKS = {  # README block -> (module, result file(s), extra arguments of render[, function if not render])
    "bench": ("experiments.analyses.reparam_speed", "reparam_speed.json", ()),
    "grouped-sum": ("experiments.benchmarks.grouped_sum.report",
                    tuple(f"grouped_sum/{name}" for name in GROUPED_SUM_RUNS), ()),
    "bf16": ("experiments.analyses.bf16_delta", "bf16_delta.json", ()),
    "size": ("experiments.analyses.adapter_size", "adapter_size.json", ()),
    "peft": ("experiments.analyses.peft_golden", "peft_golden.json", ()),
    "counts": ("experiments.analyses.method_counts", "method_counts.json", (("RoBERTa-base",),)),
    "main-job": ("experiments.analyses.main_job", "main_job/minilm_rt_gpart.json", ()),
    "cost": ("experiments.analyses.cost", "cost.json", ()),
    "communication": ("experiments.analyses.communication", "communication.json", ()),
    "geometry": ("experiments.analyses.geometry", "geometry.json", ()),
    "suite-text-methods-default-rates": ("experiments.report", "suite_text_methods_default_rates.json",
                                         (), "compact"),
    "suite-text-methods-rates-to-2x": ("experiments.report", "suite_text_methods_rates_to_2x.json",
                                       (), "compact"),
    "suite-text-methods-rates-to-4x": ("experiments.report", "suite_text_methods_rates_to_4x.json",
                                       (True,), "compact"),
    "suite-text-methods-tuned-rates": ("experiments.report", "suite_text_methods_tuned_rates.json",
                                       (True,), "compact"),
    "suite-text-more-tasks-and-variants": ("experiments.report", "suite_text_more_tasks_and_variants.json",
                                           (True,), "compact"),
    "suite-vision-methods-default-rates": ("experiments.report", "suite_vision_methods_default_rates.json",
                                           (), "compact"),
    "suite-vision-methods-tuned-rates": ("experiments.report", "suite_vision_methods_tuned_rates.json",
                                         (True,), "compact"),
    "gsm": ("experiments.analyses.gsm", "gsm.json", ()),
    "ablation": ("experiments.analyses.ablation", "ablation.json", ()),
    "landscape": ("experiments.analyses.landscape", "landscape.json", ()),
}


def rendered(block: str) -> str:
    """The markdown of README block ``block``, rendered from its result file."""
    module, result, args, *function = BLOCKS[block]
    doc = ([read_doc(RESULTS / r) for r in result] if isinstance(result, tuple)
           else read_doc(RESULTS / result))
    return getattr(importlib.import_module(module), function[0] if function else "render")(doc, *args)


def _pattern(block: str) -> re.Pattern:
    return re.compile(rf"(<!-- {re.escape(block)}:start -->\n)(.*?)(\n<!-- {re.escape(block)}:end -->)",
                      re.S)


def differing(text: str) -> list[str]:
    """The blocks whose text in ``text`` (the README) is not what their result files render;
    ``SystemExit`` naming a block the README does not have."""
    out = []
    for block in BLOCKS:
        match = _pattern(block).search(text)
        if match is None:
            raise SystemExit(f"{README} has no {block} block")
        if match.group(2) != rendered(block):
            out.append(block)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.analyses.render_readme",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and name the blocks that differ")
    args = parser.parse_args(argv)
    text = README.read_text()
    if args.check:
        stale = differing(text)
        for block in stale:
            module, result, *_ = BLOCKS[block]
            print(f"{block}: README differs from {module} of {RESULTS / result}", file=sys.stderr)
        print(f"{len(BLOCKS) - len(stale)} of {len(BLOCKS)} README blocks agree with their result files")
        return 1 if stale else 0
    for block in differing(text):
        text = _pattern(block).sub(lambda m, b=block: m.group(1) + rendered(b) + m.group(3), text)
    files.write_atomic(README, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Rewrite the README's result tables from the committed result files.

    python experiments/render_readme.py

Each table sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and is produced by the
``render`` function of the script that wrote its JSON; ``tests/test_readme.py`` checks that the
README and the files agree.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).parent.parent
BLOCKS = {  # README block -> (script, result file, extra arguments of render[, function if not render])
    "bench": ("bench_reparam", "bench_reparam.json", ()),
    "bf16": ("bf16_delta", "bf16_delta.json", ()),
    "size": ("adapter_size", "adapter_size.json", ()),
    "peft": ("peft_golden", "peft_golden.json", ()),
    "counts": ("method_counts", "method_counts.json", (("RoBERTa-base",),)),
    "main-job": ("main_job", "main_job/minilm_rt_gpart.json", ()),
    "cost": ("bench_methods", "bench_methods.json", ()),
    "geometry": ("geometry", "geometry.json", ()),
    "suite-stage-a": ("report", "suite_stage_a.json", (), "compact"),
    "suite-stage-a-tuned": ("report", "suite_stage_a_tuned.json", (), "compact"),
    "suite-stage-a-round2": ("report", "suite_stage_a_round2.json", (True,), "compact"),
    "suite-stage-a-round3": ("report", "suite_stage_a_round3.json", (True,), "compact"),
    "suite-stage-h": ("report", "suite_stage_h.json", (True,), "compact"),
    "suite-vision": ("report", "suite_vision.json", (), "compact"),
    "suite-vision-tuned": ("report", "suite_vision_tuned.json", (True,), "compact"),
    "gsm": ("gsm", "gsm_cpu.json", ()),
    "ablation": ("ablation", "ablation.json", ()),
    "landscape": ("landscape", "landscape.json", ()),
}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(block: str) -> str:
    script, result, args, *function = BLOCKS[block]
    doc = json.loads((ROOT / "experiments" / "results" / result).read_text())
    return getattr(load_script(script), function[0] if function else "render")(doc, *args)


def main():
    path = ROOT / "README.md"
    text = path.read_text()
    for block in BLOCKS:
        pattern = re.compile(rf"(<!-- {block}:start -->\n).*?(\n<!-- {block}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no {block} block")
        text = pattern.sub(lambda m, b=block: m.group(1) + rendered(b) + m.group(2), text)
    path.write_text(text)


if __name__ == "__main__":
    main()

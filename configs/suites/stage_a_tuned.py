"""Issue 7, stage (a) on Rotten Tomatoes at the learning rates the sweep selected, three seeds.

``configs/suites/lr_sweep.py`` first trained each adapted method at 0.4x, 1x and 2x its default
rate (seed 0) and ``SELECTED`` below is the rate with the best validation accuracy of that first
round in ``experiments/results/suite_lr_sweep.json`` (checked by ``tests/test_suite.py``): GPart
1e-2, Uni-LoRA its default 5e-3, LoRA 1e-3, full fine-tuning 1e-4. Three of the four sat at the
top of that range; the sweep's second round (4x) moved GPart to 2e-2 and full fine-tuning to
2e-4, again the top, and left LoRA and Uni-LoRA where they were: these three seeds are not yet
rerun at the new rates. Not swept: the head-only run (the
head's rate, 4e-3, is the same for every method) and GPart non-isometric (kept at GPart's default
rate, its pair in the ablation). Runs at a default rate are stage (a)'s own (same workdirs);
seed 0 at a selected rate is the sweep's own run, so 6 runs are new.

    python -m experiments.suite configs/suites/stage_a_tuned.py
    python -m experiments.report configs/suites/stage_a_tuned.py
"""

from __future__ import annotations

from configs import common

SELECTED = {"gpart": 1e-2, "unilora": 5e-3, "lora": 1e-3, "full": 1e-4}


def get_suite() -> list[tuple[str, list[str]]]:
    return common.stage_a_suite({("rt", m): rate for m, rate in SELECTED.items()}, tasks=("rt",))

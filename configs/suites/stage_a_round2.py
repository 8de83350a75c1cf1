"""Issue 7, stage (a) on both text tasks at the rates the sweep's second round selected, three seeds.

``configs/suites/lr_sweep.py`` (both rounds: Rotten Tomatoes at 0.4x, 1x, 2x and 4x each default,
R8 at 1x, 2x and 4x; seed 0); ``SELECTED`` below is, per (task, method), the rate with the best
validation score in ``experiments/results/suite_lr_sweep.json`` (ties go to the lower rate;
``tests/test_suite.py`` checks it). Rotten Tomatoes: GPart 2e-2, Uni-LoRA 5e-3, LoRA 1e-3, full
2e-4; R8: GPart 1e-2, Uni-LoRA 1e-2, LoRA 2e-3, full 2e-4. Four of the eight sit at the top of the
swept range. GPart non-isometric and head-only are not swept (stage (a)'s runs). A run at a
default rate, or seed 0 at a selected one, is an earlier suite's own workdir: 12 runs are new.

    python -m experiments.suite configs/suites/stage_a_round2.py
    python -m experiments.report configs/suites/stage_a_round2.py
"""

from __future__ import annotations

from configs import common

SELECTED = {
    ("rt", "gpart"): 2e-2, ("rt", "unilora"): 5e-3, ("rt", "lora"): 1e-3, ("rt", "full"): 2e-4,
    ("r8", "gpart"): 1e-2, ("r8", "unilora"): 1e-2, ("r8", "lora"): 2e-3, ("r8", "full"): 2e-4,
}


def get_suite() -> list[tuple[str, list[str]]]:
    return common.stage_a_suite(SELECTED)

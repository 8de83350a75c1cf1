"""Issue 7, stage (a) on both text tasks at the rates the whole sweep selected, three seeds.

``configs/suites/lr_sweep.py`` in all four rounds (Rotten Tomatoes at 0.4x, 1x, 2x and 4x each
default, R8 at 1x, 2x and 4x; 8x for the four pairs whose pick was 4x; 16x and 32x for the three
whose pick was then 8x; seed 0). ``SELECTED`` below is, per (task, method), the rate with the
best validation score in ``experiments/results/suite_lr_sweep.json`` (ties go to the lower rate;
``tests/test_suite.py`` checks it); every pick is now inside the swept range. It differs from
``stage_a_round2.py`` in three picks: full fine-tuning on Rotten Tomatoes (2e-4 to 4e-4, 8x)
and on R8 (2e-4 to 8e-4, 16x; its validation MCC at 8x is 0.0001 lower, a tie in all but the
rule), LoRA on R8 (2e-3 to 4e-3, 8x). GPart non-isometric and head-only are not swept (stage (a)'s
runs). A run at a default rate, or at a pick some earlier suite ran, is that suite's own workdir:
6 runs are new (seeds 1 and 2 of each changed pick).

    python -m experiments.suite configs/suites/stage_a_round3.py
    python -m experiments.report configs/suites/stage_a_round3.py
"""

from __future__ import annotations

from configs import common

SELECTED = {
    ("rt", "gpart"): 2e-2, ("rt", "unilora"): 5e-3, ("rt", "lora"): 1e-3, ("rt", "full"): 4e-4,
    ("r8", "gpart"): 1e-2, ("r8", "unilora"): 1e-2, ("r8", "lora"): 4e-3, ("r8", "full"): 8e-4,
}


def get_suite() -> list[tuple[str, list[str]]]:
    return common.stage_a_suite(SELECTED)

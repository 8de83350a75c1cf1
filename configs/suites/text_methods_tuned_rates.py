"""Every method on both text tasks at the rates the whole sweep selected, three seeds.

``SELECTED`` is, per (task, method), the rate with the best validation score among all runs of
``configs/suites/lr_sweep_text.py`` (ties to the lower rate; ``tests/experiments/test_suite.py``
checks it against ``experiments/results/suite_lr_sweep_text.json``); every pick is inside the swept
range. It differs from ``text_methods_rates_to_4x.py`` in three picks: full fine-tuning on Rotten
Tomatoes (4e-4, 8x) and on R8 (8e-4, 16x; its validation MCC at 8x is 0.0001 lower, a tie in all
but the rule), LoRA on R8 (4e-3, 8x). GPart non-isometric and head-only are not swept.

    python -m experiments suite configs/suites/text_methods_tuned_rates.py
    python -m experiments report configs/suites/text_methods_tuned_rates.py
"""

from __future__ import annotations

from configs.suites.text_grid import text_methods

SELECTED = {
    ("rt", "gpart"): 2e-2, ("rt", "unilora"): 5e-3, ("rt", "lora"): 1e-3, ("rt", "full"): 4e-4,
    ("r8", "gpart"): 1e-2, ("r8", "unilora"): 1e-2, ("r8", "lora"): 4e-3, ("r8", "full"): 8e-4,
}


def get_suite() -> list[tuple[str, list[str]]]:
    return text_methods(SELECTED)

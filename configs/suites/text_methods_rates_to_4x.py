"""Every method on both text tasks at the rates selected from a sweep up to 4x, three seeds.

``SELECTED`` is, per (task, method), the rate with the best validation score among the runs of
``configs/suites/lr_sweep_text.py`` up to 4x (Rotten Tomatoes 0.4x-4x, R8 1x-4x; ties to the lower
rate; ``tests/experiments/test_suite.py`` checks it). Rotten Tomatoes: GPart 2e-2, Uni-LoRA 5e-3,
LoRA 1e-3, full 2e-4; R8: GPart 1e-2, Uni-LoRA 1e-2, LoRA 2e-3, full 2e-4. Four of the eight sit
at the top of that grid (the whole sweep: ``text_methods_tuned_rates.py``). GPart non-isometric
and head-only are not swept (the default-rate suite's runs).

    python -m experiments suite configs/suites/text_methods_rates_to_4x.py
    python -m experiments report configs/suites/text_methods_rates_to_4x.py
"""

from __future__ import annotations

from configs.suites.text_grid import text_methods

SELECTED = {
    ("rt", "gpart"): 2e-2, ("rt", "unilora"): 5e-3, ("rt", "lora"): 1e-3, ("rt", "full"): 2e-4,
    ("r8", "gpart"): 1e-2, ("r8", "unilora"): 1e-2, ("r8", "lora"): 2e-3, ("r8", "full"): 2e-4,
}


def get_suite() -> list[tuple[str, list[str]]]:
    return text_methods(SELECTED)

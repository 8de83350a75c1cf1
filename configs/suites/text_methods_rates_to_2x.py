"""Every method on Rotten Tomatoes at the rates selected from a sweep of 0.4x to 2x, three seeds.

``SELECTED`` is, per method, the rate with the best validation accuracy among the 0.4x, 1x and 2x
runs of ``configs/suites/lr_sweep_text.py`` (``tests/experiments/test_suite.py`` checks it against
``experiments/results/suite_lr_sweep_text.json``): GPart 1e-2, Uni-LoRA its default 5e-3, LoRA
1e-3, full fine-tuning 1e-4, three of them at the top of that grid (the wider grids:
``text_methods_rates_to_4x.py``, ``text_methods_tuned_rates.py``). Not swept: the head-only run
and GPart non-isometric (kept at GPart's default rate, its pair in the ablation). A run at a
default rate is the default-rate suite's own; seed 0 at a selected rate is the sweep's own run.

    python -m experiments suite configs/suites/text_methods_rates_to_2x.py
    python -m experiments report configs/suites/text_methods_rates_to_2x.py
"""

from __future__ import annotations

from configs.suites.text_grid import text_methods

SELECTED = {"gpart": 1e-2, "unilora": 5e-3, "lora": 1e-3, "full": 1e-4}


def get_suite() -> list[tuple[str, list[str]]]:
    return text_methods({("rt", m): rate for m, rate in SELECTED.items()}, tasks=("rt",))

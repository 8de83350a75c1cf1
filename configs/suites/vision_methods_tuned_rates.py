"""Vision transfer at the learning rates the vision sweep selected, three seeds.

``SELECTED`` is, per (task, method), the rate with the best validation accuracy in
``experiments/results/suite_lr_sweep_vision.json`` (ties to the lower rate;
``tests/experiments/test_suite.py`` checks it): 16x to 64x the MiniLM defaults. Two of the eight
sit at the top of the swept range (full on MNIST-5k; GPart on digits, where 0.32 beat 0.08 by one
validation image), the rest inside it. The head-only run is not swept (the head's rate is the
same for every method): it is the default-rate suite's own. Seed 0 at a selected rate is the
sweep's own run (same workdir).

    python -m experiments suite configs/suites/vision_methods_tuned_rates.py
    python -m experiments report configs/suites/vision_methods_tuned_rates.py
"""

from __future__ import annotations

from configs.suites.text_grid import rate_overrides
from experiments.suite import entry

TASKS = ("mnist5k", "digits")
METHODS = ("gpart", "unilora", "lora", "full", "head_only")
SEEDS = (0, 1, 2)
SELECTED = {
    ("mnist5k", "gpart"): 8e-2, ("mnist5k", "unilora"): 1.6e-1,
    ("mnist5k", "lora"): 8e-3, ("mnist5k", "full"): 3.2e-3,
    ("digits", "gpart"): 3.2e-1, ("digits", "unilora"): 8e-2,
    ("digits", "lora"): 1.6e-2, ("digits", "full"): 8e-4,
}


def get_suite() -> list[tuple[str, list[str]]]:
    return [entry(f"configs/vit.py:task={task},method={m}", seed,
                  rate_overrides(m, SELECTED.get((task, m))))
            for seed in SEEDS for task in TASKS for m in METHODS]

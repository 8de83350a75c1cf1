"""The learning-rate sweep of the vision methods on MNIST-5k and digits validation (seed 0).

Each adapted method (GPart and Uni-LoRA theta, LoRA factors, full query/value) at its default rate
(the default-rate suite's own run) and at 0.4x, 2x, 4x, 8x, 16x, 32x and 64x of it, selected per
task by validation accuracy (``vision_methods_tuned_rates.py``). The grid reaches 64x because the
best rates sat at the top of narrower ones. 2 tasks x 4 methods x 8 rates = 64 runs.

    python -m experiments suite configs/suites/lr_sweep_vision.py
    python -m experiments report configs/suites/lr_sweep_vision.py
"""

from __future__ import annotations

from configs.suites.text_grid import rate_overrides, scaled_rate
from experiments.suite import entry

TASKS = ("mnist5k", "digits")
METHODS = ("gpart", "unilora", "lora", "full")
MULTIPLES = (1, 0.4, 2, 4, 8, 16, 32, 64)  # of each method's default rate


def get_suite() -> list[tuple[str, list[str]]]:
    return [entry(f"configs/vit.py:task={task},method={m}", 0, rate_overrides(m, scaled_rate(m, k)))
            for task in TASKS for m in METHODS for k in MULTIPLES]

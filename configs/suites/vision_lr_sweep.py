"""Issue 7, stage (f): the learning-rate sweep on MNIST-5k and digits validation (seed 0).

As ``configs/suites/lr_sweep.py`` for the ViT: each adapted method (GPart and Uni-LoRA theta,
LoRA factors, full query/value) at its default rate (``configs/common.py``; the vision suite's own
run) and at 0.4x, 2x, 4x, 8x, 16x, 32x and 64x of it, selected per task by validation accuracy
(``configs/suites/vision_tuned.py``). The range grew three times, each time because the best
rates sat at its top: 4x was added when every (task, method) pair was best at 2x, 8x and 16x
when 7 of the 8 were best at 4x, 32x and 64x when 7 of 8 were best at 16x.
2 tasks x 4 methods x 8 rates = 64 runs, 56 of them new.

    python -m experiments.suite configs/suites/vision_lr_sweep.py
    python -m experiments.report configs/suites/vision_lr_sweep.py
"""

from __future__ import annotations

from configs import common

TASKS = ("mnist5k", "digits")
METHODS = ("gpart", "unilora", "lora", "full")
MULTIPLES = (1, 0.4, 2, 4, 8, 16, 32, 64)  # of each method's default rate (common.adapter_lr)


def get_suite() -> list[tuple[str, list[str]]]:
    return [common.suite_entry(f"configs/vit_{task}_{m}.py", m, 0, common.scaled_rate(m, k))
            for task in TASKS for m in METHODS for k in MULTIPLES]

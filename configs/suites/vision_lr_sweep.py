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

TASKS = ("mnist5k", "digits")
MULTIPLES = (0.4, 2, 4, 8, 16, 32, 64)  # of each method's default rate (configs/common.py)
DEFAULTS = {"gpart": 5e-3, "unilora": 5e-3, "lora": 5e-4, "full": 5e-5}
RATES = {m: tuple(float(f"{k * rate:.3g}") for k in MULTIPLES) for m, rate in DEFAULTS.items()}


def get_suite() -> list[tuple[str, list[str]]]:
    entries = []
    for task in TASKS:
        for method, rates in RATES.items():
            config = f"configs/vit_{task}_{method}.py"
            entries.append((config, ["--config.seed=0"]))
            entries += [(config, [f"--config.optim.adapter_lr={lr:g}", "--config.seed=0"]) for lr in rates]
    return entries

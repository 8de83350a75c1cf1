"""Issue 7, stage (f): the learning-rate sweep on MNIST-5k and digits validation (seed 0).

As ``configs/suites/lr_sweep.py`` for the ViT: each adapted method (GPart and Uni-LoRA theta,
LoRA factors, full query/value) at its default rate (``configs/common.py``; the vision suite's own
run) and at 0.4x, 2x and 4x of it (4x was added when every method's best rate was 2x, the top
of the first range), selected per task by validation accuracy (``configs/suites/vision_tuned.py``).
2 tasks x 4 methods x 4 rates = 32 runs, 24 of them new.

    python -m experiments.suite configs/suites/vision_lr_sweep.py
    python -m experiments.report configs/suites/vision_lr_sweep.py
"""

from __future__ import annotations

TASKS = ("mnist5k", "digits")
RATES = {"gpart": (2e-3, 1e-2, 2e-2), "unilora": (2e-3, 1e-2, 2e-2), "lora": (2e-4, 1e-3, 2e-3),
         "full": (2e-5, 1e-4, 2e-4)}


def get_suite() -> list[tuple[str, list[str]]]:
    entries = []
    for task in TASKS:
        for method, rates in RATES.items():
            config = f"configs/vit_{task}_{method}.py"
            entries.append((config, ["--config.seed=0"]))
            entries += [(config, [f"--config.optim.adapter_lr={lr:g}", "--config.seed=0"]) for lr in rates]
    return entries

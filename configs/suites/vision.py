"""Issue 7, stage (f): vision transfer with the project's ViT pretrained on Fashion-MNIST.

MNIST-5k and digits x GPart / Uni-LoRA (d = 1,024) / LoRA r = 8 / full (query and value) /
head only x seeds 0, 1, 2 = 30 runs; configs ``configs/vit_<task>_<method>.py`` (shared
defaults in ``configs/common.py``, ``vit``). The pretrained ViT is cached in
``~/.cache/gpart-jax/vit_fmnist`` (``python -m experiments.pretrain_vit`` makes it, about 10 min).

    python -m experiments.suite configs/suites/vision.py
    python -m experiments.report configs/suites/vision.py
"""

from __future__ import annotations

TASKS = ("mnist5k", "digits")
METHODS = ("gpart", "unilora", "lora", "full", "head_only")
SEEDS = (0, 1, 2)


def get_suite() -> list[tuple[str, list[str]]]:
    return [(f"configs/vit_{task}_{method}.py", [f"--config.seed={seed}"])
            for seed in SEEDS for task in TASKS for method in METHODS]

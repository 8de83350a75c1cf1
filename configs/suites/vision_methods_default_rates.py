"""Vision transfer with the project's ViT (pretrained on Fashion-MNIST), each method at its usual rate.

MNIST-5k and digits x GPart / Uni-LoRA (d = 1,024) / LoRA r = 8 / full (query and value) / head
only x seeds 0, 1, 2 = 30 runs (``configs/vit.py``). The pretrained ViT is cached in
``~/.cache/gpart-jax/vit_fmnist`` (``python -m experiments pretrain-vit`` makes it, about 10 min).

    python -m experiments suite configs/suites/vision_methods_default_rates.py
    python -m experiments report configs/suites/vision_methods_default_rates.py
"""

from __future__ import annotations

from experiments.suite import entry

TASKS = ("mnist5k", "digits")
METHODS = ("gpart", "unilora", "lora", "full", "head_only")
SEEDS = (0, 1, 2)


def get_suite() -> list[tuple[str, list[str]]]:
    return [entry(f"configs/vit.py:task={task},method={m}", seed)
            for seed in SEEDS for task in TASKS for m in METHODS]

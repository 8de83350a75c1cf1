"""Issue 7, stage (d): the non-isometric ablation on Rotten Tomatoes, three seeds.

GPart with and without ``1/sqrt(n_j)`` at d = 23,040 and the same learning rates, under AdamW's
decoupled weight decay (the stage (a) runs themselves: same configs, same workdirs, so they are
not trained twice) and under an L2 penalty of the same coefficient (0.1) on theta. 2 x 2 x 3 = 12
runs. The measured ``||delta w||^2 / ||theta||^2`` of every trained theta:
``python experiments/ablation.py``.

    python -m experiments.suite configs/suites/ablation.py
    python -m experiments.report configs/suites/ablation.py
"""

from __future__ import annotations

CONFIGS = ("minilm_rt_gpart", "minilm_rt_gpart_noniso", "minilm_rt_gpart_l2", "minilm_rt_gpart_noniso_l2")
SEEDS = (0, 1, 2)


def get_suite() -> list[tuple[str, list[str]]]:
    return [(f"configs/{c}.py", [f"--config.seed={seed}"]) for seed in SEEDS for c in CONFIGS]

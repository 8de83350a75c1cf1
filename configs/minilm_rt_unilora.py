"""MiniLM-L6 + Uni-LoRA, d = 23,040 over rank-4 LoRA factors of the q and v kernels, on Rotten Tomatoes.

The quick start's budget (``configs/minilm_rt_gpart.py``: the same subset, epochs and steps),
so it compares with GPart at an equal number of steps. Hyperparameters: ``configs/common.py``.
"""

from configs import common


def get_config():
    return common.minilm_rt("unilora")

"""MiniLM-L6 + full fine-tuning of the query and value kernels (head as saved module), Rotten Tomatoes.

The quick start's budget (``configs/minilm_rt_gpart.py``: the same subset, epochs and steps),
so it compares with GPart at an equal number of steps. Hyperparameters: ``configs/common.py``.
"""

from configs import common


def get_config():
    return common.minilm_rt("full")

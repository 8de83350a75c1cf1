"""MiniLM-L6 on the 2016 election tweets: Uni-LoRA, d = 23,040 (issue 7, stage h).

Query and value kernels of the 6 layers; data cut, epochs and rates: ``configs/common.py``
(``minilm_tweets``, ``method``, ``optim``).
"""

from configs import common


def get_config():
    return common.minilm_tweets("unilora")

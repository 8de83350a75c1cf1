"""Ablation (issue 7, stage d): GPart (isometric) on Rotten Tomatoes with an L2 penalty on theta.

Everything as ``configs/minilm_rt_gpart.py`` (d = 23,040, theta lr 5e-3, the same data cut and
steps) except the regularization: ``0.1 ||theta||^2`` added to the loss (its gradient goes
through Adam like the loss's) instead of AdamW's decoupled decay ``theta <- theta - lr 0.1 theta``.
For isometric GPart ``||theta||^2 = ||delta w||^2``; without the scale it is not (see
``gpart_jax/optim.py`` and ``python experiments/ablation.py``).
"""

from configs import common


def get_config():
    cfg = common.renamed(common.minilm_rt("gpart"), "minilm_rt_gpart_l2")
    cfg.optim.regularization = "l2"
    return cfg

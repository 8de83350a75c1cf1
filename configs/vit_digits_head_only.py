"""ViT on scikit-learn digits: the new head alone (the pretrained model frozen).

The project's ViT, pretrained on Fashion-MNIST, adapted to scikit-learn digits (8x8, resized to
28x28): the new head alone (the pretrained model frozen), on the query and value kernels of the 4
blocks (N = 73,728 weights), with a new zero-initialised 10-class ``head``. Data, epochs and the
rest: ``configs/common.py`` (``vit``).
"""

from configs import common


def get_config():
    return common.vit("digits", "head-only")

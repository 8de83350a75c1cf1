"""Pretrain the small ViT (``experiments.models.vit``) on Fashion-MNIST: the project's image base model.

    apt-get install -y dataset-fashion-mnist
    python -m experiments pretrain-vit             # -> the cache ($GPART_JAX_CACHE)
    python -m experiments pretrain-vit --record    # and experiments/results/vit_fmnist_pretrain.json
    python -m experiments pretrain-vit --epochs 2 --out /tmp/vit

No pretrained image model ships in any package, so GPart's vision experiments adapt this one.
Training: AdamW (weight decay 0.05 on matrices), linear warm-up then cosine decay of the
learning rate, batch 128, random horizontal flips, cross-entropy; then top-1 accuracy on the
10,000 test images. ``experiments.models.vit.load_pretrained_vit`` reads the weights from the
cache and names this command when they are missing. The weights are never committed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.data import sources
from experiments.models import vit

RESULTS = pathlib.Path(__file__).parent / "results" / "vit_fmnist_pretrain.json"


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int32 (N,))`` of Debian's Fashion-MNIST ``split``
    (``"train"`` or ``"test"``; ``experiments.data.sources.read_fashion_mnist``)."""
    examples = sources.read_fashion_mnist(split)
    return (np.stack([e["image"][..., 0] for e in examples]),
            np.asarray([e["label"] for e in examples], np.int32))


def _decay_mask(params):
    return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)


def evaluate(model: vit.ViT, params: dict, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy."""
    predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, vit.normalize(x)), -1))
    correct = 0
    for i in range(0, len(images), batch_size):
        predicted = np.asarray(predict(params, images[i:i + batch_size]))
        correct += int((predicted == labels[i:i + batch_size]).sum())
    return correct / len(images)


def pretrain(out_dir: str | pathlib.Path | None = None, *, config: vit.ViTConfig | None = None,
             epochs: int = 6, batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 0.05,
             warmup_steps: int = 500, seed: int = 0) -> dict:
    """Train the ViT on the 60,000 training images, write it to ``out_dir`` (default the cache).

    Returns the metrics written to ``metrics.json``: test accuracy, final training loss, time.
    """
    out_dir = vit.cache_dir() if out_dir is None else pathlib.Path(out_dir)
    config = vit.ViTConfig() if config is None else config
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    model = vit.ViT(config)
    key = jax.random.key(seed)
    params = model.init(key, jnp.zeros((1, 28, 28, 1)))["params"]
    steps_per_epoch = len(x_train) // batch_size
    # a short run (--epochs 1: 468 steps) warms up over half its steps at most; the cosine needs some
    warmup_steps = min(warmup_steps, epochs * steps_per_epoch // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, epochs * steps_per_epoch)
    opt = optax.adamw(schedule, weight_decay=weight_decay, mask=_decay_mask)
    state = opt.init(params)

    @jax.jit
    def step(params, state, images, labels, key):
        flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1))
        images = jnp.where(flip, images[:, :, ::-1], images)

        def loss_fn(p):
            logits = model.apply({"params": p}, vit.normalize(images), deterministic=False,
                                 rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    start = time.time()
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            key, sub = jax.random.split(key)
            params, state, loss = step(params, state, x_train[idx], y_train[idx], sub)
            losses.append(loss)
        mean_loss = float(np.mean(jax.device_get(losses)))
        history.append({"epoch": epoch + 1, "train_loss": round(mean_loss, 4),
                        "seconds": round(time.time() - start, 1)})
        print(f"epoch {epoch + 1}/{epochs}: train loss {mean_loss:.4f} ({time.time() - start:.0f} s)",
              flush=True)
    train_seconds = time.time() - start
    accuracy = evaluate(model, params, x_test, y_test)
    print(f"test accuracy {accuracy:.4f}", flush=True)
    metrics = {
        "dataset": "fashion-mnist (Debian dataset-fashion-mnist), 60000 train / 10000 test",
        "test_accuracy": round(accuracy, 4),
        "train_seconds": round(train_seconds, 1),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "seed": seed,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "num_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))),
        "history": history,
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}",
    }
    vit.save_vit(out_dir, config, params, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments pretrain-vit",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=None, help="weights folder (default: the cache)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true",
                        help=f"also write the metrics to {RESULTS.relative_to(RESULTS.parents[2])}")
    args = parser.parse_args(argv)
    try:
        metrics = pretrain(args.out, epochs=args.epochs, seed=args.seed)
    except sources.DataUnavailableError as e:
        print(f"python -m experiments pretrain-vit: {e}", file=sys.stderr)
        return 2
    if args.record:
        RESULTS.write_text(json.dumps(metrics, indent=1) + "\n")
        print(f"metrics -> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

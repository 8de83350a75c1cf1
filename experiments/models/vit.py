"""A small Vision Transformer in flax linen, pretrained in this project on Fashion-MNIST.

ViT (Dosovitskiy et al., 2021) with pre-LayerNorm blocks: an image ``(H, W, C)`` is cut into
``p x p`` patches, each flattened and projected, ``x = [cls; W_e patches] + pos``; then per block

    x = x + W_o MHA(LN_1(x)),      x = x + W_2 gelu(W_1 LN_2(x))

and ``logits = W_h LN(x)[cls]``. No pretrained image model ships in any package, so
``experiments/pretrain_vit.py`` trains one (``load_pretrained_vit`` runs it once and caches the
weights). The attention projections are named ``query`` / ``key`` / ``value`` (and ``out``), so
GPart's default targets ``("query/kernel", "value/kernel")`` select them, in layer order; the
classifier is ``head`` (replaced by a new, zero-initialised one when adapting to new labels).

As a model of the experiments (``experiments.models``): images are scaled as in pretraining
(``normalize``: ``x / 255``, then the Fashion-MNIST mean and std); images of another size (the 8x8
``digits``) are first resized bilinearly on their 0..255 values. The pretrained weights come
from ``python -m experiments pretrain-vit``; without them loading is an error naming that command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.models import names

Array = jax.Array

# Fashion-MNIST pixel statistics of the training set, on [0, 1]
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of the ViT (defaults: the Fashion-MNIST model, 28x28x1, 16 patches + CLS)."""

    image_size: int = 28
    patch_size: int = 7
    channels: int = 1
    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 192
    num_classes: int = 10
    dropout: float = 0.0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patchify(images: Array, patch_size: int) -> Array:
    """``(B, H, W, C)`` -> ``(B, H/p * W/p, p*p*C)``, patches in row-major order."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def normalize(images: np.ndarray | Array) -> Array:
    """uint8 Fashion-MNIST images ``(B, 28, 28)`` or ``(B, 28, 28, 1)`` -> float32 model input."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    return (x - FMNIST_MEAN) / FMNIST_STD


_INIT = nn.initializers.truncated_normal(0.02)


class ViTAttention(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        b, n, h = x.shape
        heads, dim = cfg.num_heads, h // cfg.num_heads

        def project(name):
            return nn.Dense(h, kernel_init=_INIT, name=name)(x).reshape(b, n, heads, dim)

        q, k, v = project("query"), project("key"), project("value")
        probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dim), axis=-1)
        probs = nn.Dropout(cfg.dropout)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, h)
        return nn.Dense(h, kernel_init=_INIT, name="out")(out)


class ViTMlp(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = nn.gelu(nn.Dense(cfg.mlp_dim, kernel_init=_INIT, name="fc1")(x), approximate=False)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        return nn.Dense(cfg.hidden_size, kernel_init=_INIT, name="fc2")(x)


class ViTBlock(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        drop = nn.Dropout(self.config.dropout)
        a = ViTAttention(self.config, name="attention")(nn.LayerNorm(name="norm1")(x), deterministic)
        x = x + drop(a, deterministic=deterministic)
        m = ViTMlp(self.config, name="mlp")(nn.LayerNorm(name="norm2")(x), deterministic)
        return x + drop(m, deterministic=deterministic)


class ViTLayers(nn.Module):
    """The ``encoder/layer`` list, children named ``0``, ``1``, ..."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        for i in range(self.config.num_layers):
            x = ViTBlock(self.config, name=str(i))(x, deterministic)
        return x


class ViTEncoder(nn.Module):
    """``encoder/layer/<i>``: the blocks."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        return ViTLayers(self.config, name="layer")(x, deterministic)


class ViTEmbeddings(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, images: Array) -> Array:
        cfg = self.config
        x = nn.Dense(cfg.hidden_size, kernel_init=_INIT, name="patch")(patchify(images, cfg.patch_size))
        cls = self.param("cls", nn.initializers.zeros, (1, 1, cfg.hidden_size))
        pos = self.param("position", _INIT, (1, cfg.num_patches + 1, cfg.hidden_size))
        return jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.hidden_size)), x], axis=1) + pos


class ViT(nn.Module):
    """ViT classifier: ``images`` (B, H, W, C) float (see ``normalize``) -> logits (B, classes).

    ``features=True`` returns the final-LayerNorm CLS features (B, hidden) instead.
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, images: Array, *, deterministic: bool = True, features: bool = False) -> Array:
        cfg = self.config
        if images.ndim == 3:
            images = images[..., None]
        x = ViTEmbeddings(cfg, name="embeddings")(images)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = ViTEncoder(cfg, name="encoder")(x, deterministic)
        cls = nn.LayerNorm(name="norm")(x)[:, 0]
        if features:
            return cls
        return nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros, name="head")(cls)


# --------------------------------------------------------------------------- cache and loading

class MissingPretrainedError(FileNotFoundError):
    """The pretrained ViT is not in the cache; the message names the command that makes it."""


def cache_dir() -> pathlib.Path:
    """``$GPART_JAX_CACHE/vit_fmnist`` (default ``~/.cache/gpart-jax/vit_fmnist``)."""
    root = os.environ.get("GPART_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gpart-jax")
    return pathlib.Path(root) / "vit_fmnist"


def save_vit(directory: str | pathlib.Path, config: ViTConfig, params: dict, metrics: dict) -> None:
    """Write ``params.safetensors`` (flat ``/`` paths), ``config.json`` and ``metrics.json``."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {p: np.asarray(v, np.float32) for p, v in names.flatten_params(params).items()}
    save_file(flat, str(directory / "params.safetensors.tmp"))
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=1))
    # last: a complete cache is one whose weights file exists
    os.replace(directory / "params.safetensors.tmp", directory / "params.safetensors")


def load_pretrained_vit(num_classes: int | None = None, *,
                        directory: str | pathlib.Path | None = None) -> tuple[ViT, dict]:
    """The Fashion-MNIST ViT as ``(model, {"params": params})``.

    Reads the cache (``cache_dir()`` unless ``directory``); without weights there it raises
    ``MissingPretrainedError`` naming the command that makes them. ``num_classes`` other than the
    pretrained 10 replaces ``head`` by a fresh zero-initialised one (to adapt the model to
    another labelling).
    """
    from safetensors.numpy import load_file

    directory = cache_dir() if directory is None else pathlib.Path(directory)
    if not (directory / "params.safetensors").exists():
        raise MissingPretrainedError(
            f"no pretrained ViT in {directory}: make it with `python -m experiments pretrain-vit` "
            f"(Fashion-MNIST from Debian, several minutes on a CPU), or point $GPART_JAX_CACHE at a "
            f"cache that has it")
    config = ViTConfig(**json.loads((directory / "config.json").read_text()))
    params = names.unflatten_params({p: jnp.asarray(v) for p, v in
                                     load_file(str(directory / "params.safetensors")).items()})
    if num_classes is not None and num_classes != config.num_classes:
        config = dataclasses.replace(config, num_classes=num_classes)
        params["head"] = {"kernel": jnp.zeros((config.hidden_size, num_classes), jnp.float32),
                          "bias": jnp.zeros((num_classes,), jnp.float32)}
    return ViT(config), {"params": params}


# --------------------------------------------------------------------------- the model interface

KIND = "classification"
DATA = "image"
HEAD = ("head",)
INPUTS = ("image",)


def _config(directory: pathlib.Path | None = None) -> ViTConfig:
    path = (cache_dir() if directory is None else directory) / "config.json"
    return ViTConfig(**json.loads(path.read_text())) if path.exists() else ViTConfig()


def abstract(cfg, num_classes: int):
    """``(model, params as ShapeDtypeStructs)``: no weights read."""
    config = dataclasses.replace(_config(), num_classes=num_classes)
    model = ViT(config)
    shape = (1, config.image_size, config.image_size, config.channels)
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def load(cfg, num_classes: int):
    """The pretrained ViT with a new, zero-initialised ``head`` of ``num_classes``."""
    if cfg.compute_dtype != "float32":
        raise ValueError("the ViT computes in float32 only; set --config.compute_dtype=float32")
    model, variables = load_pretrained_vit(num_classes)
    head = variables["params"]["head"]  # always a new head (the pretrained one has 10 classes too)
    variables["params"]["head"] = jax.tree_util.tree_map(jnp.zeros_like, head)
    return model, variables


def image_arrays(rows: list[dict], size: int) -> dict[str, np.ndarray]:
    """``{"image": float32 (N, size, size, 1) model input, "label": int32}`` of image examples.

    Images of another size are resized bilinearly on their 0..255 values first, then normalized
    like the pretraining data (``normalize``).
    """
    images = np.stack([np.asarray(r["image"]) for r in rows]).astype(np.float32)
    if images.shape[1:3] != (size, size):
        images = np.asarray(jax.image.resize(images, (len(images), size, size, images.shape[3]),
                                             "linear"))
    return {"image": np.asarray(normalize(images)),
            "label": np.asarray([r["label"] for r in rows], np.int32)}


def batches(cfg, examples, *, batch_size: int, shuffle: bool, order=None):
    """Shuffled, resumable batches of the normalized images (``experiments.data.arrays``)."""
    from experiments.data.arrays import ArrayBatches

    return ArrayBatches(image_arrays(list(examples), _config().image_size), batch_size=batch_size,
                        seed=cfg.seed, shuffle=shuffle, order=order)


def logits(model, params, batch, rng=None):
    """float32 logits ``(B, classes)``; dropout (``config.dropout``) when ``rng`` is given."""
    out = model.apply(params, batch["image"], deterministic=rng is None,
                      rngs={} if rng is None else {"dropout": rng})
    return out.astype(jnp.float32)

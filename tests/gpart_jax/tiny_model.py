"""A tiny flax classifier and its params, shared by the tests of adapter files, merge and optim."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import gpart_jax as gj

# Every method, built on the tiny model with options that fit it.
METHOD_OPTIONS = {
    "gpart": {"d": 48, "seed": 2**64 - 3, "targets": "all-linear"},
    "gpart-noniso": {"d": 40, "seed": 5, "targets": "all-linear"},
    "lora": {"r": 2, "targets": "all-linear"},
    "unilora": {"d": 16, "r": 2, "targets": "all-linear"},
    "vera": {"r": 8, "targets": "all-linear"},
    "fastfood": {"d": 16, "targets": "all-linear"},
    "full": {"targets": "all-linear"},
    "head-only": {},
}
ADDITIVE = ("gpart", "gpart-noniso", "lora", "unilora", "vera", "fastfood")


class TinyClassifier(nn.Module):
    """Two Dense layers and a classifier head with ``num_classes`` outputs."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            h = nn.Dense(16, name=f"layer_{i}")(x)
            x = x + jnp.tanh(h) if x.shape[-1] == 16 else jnp.tanh(h)
        return nn.Dense(self.num_classes, name="classifier")(x)


def tiny_setup(seed: int = 0, num_classes: int = 3):
    """``(model, x, labels, base)``: 128 inputs of width 8 and the model's initial params."""
    model = TinyClassifier(num_classes)
    x = jax.random.normal(jax.random.key(seed), (128, 8))
    labels = jnp.argmax(x[:, :3] + 0.3 * x[:, 3:6], axis=-1)
    base = model.init(jax.random.key(1), x)
    return model, x, labels, base


def build(name: str, base, **overrides):
    """Method ``name`` on ``base``; the adapted leaves exclude the classifier head."""
    options = dict(METHOD_OPTIONS[name])
    if options.get("targets") == "all-linear":
        options["targets"] = gj.All("all-linear", gj.Not("classifier"))
    options.update(overrides)
    return gj.methods.build(name, base, **options)


def random_like(tree, seed: int = 0, scale: float = 1.0):
    """A pytree of float32 normals with the shapes of ``tree`` (a trained-looking trainable)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda v: jnp.asarray(scale * rng.normal(size=np.shape(v)), jnp.float32), tree)


def trained_head(base, seed: int = 1) -> dict:
    """The base's classifier, moved as training would move it: the saved modules."""
    return {p: np.asarray(v) + np.float32(0.5) for p, v in
            gj.saved_modules(base, "classifier").items()}

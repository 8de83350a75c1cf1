"""optax for adapters: separate learning rates, schedules and regularization for theta and heads.

Two meanings of regularization, and why the difference matters for GPart:

* **L2 penalty** ``lambda ||theta||^2`` added to the loss (``l2_penalty`` below adds its gradient
  ``2 lambda theta``; with Adam it is rescaled like any gradient). For isometric GPart
  ``||theta||^2 = ||P theta||^2 = ||delta w||^2``, so it is exactly an L2 penalty on the weight
  update. For non-isometric GPart ``||delta w||^2 = sum_j n_j theta_j^2``: the penalty on the
  update is miscalibrated by the group sizes (about ``N / d``).
* **Decoupled weight decay** (AdamW): ``theta <- theta - lr * wd * theta``. Because ``P`` is
  linear, ``delta w = P theta`` shrinks by the same factor ``1 - lr * wd`` for any ``P``,
  isometric or not.

The paper's recipe: AdamW, linear warmup over the first 6% of steps then linear decay to 0,
theta learning rate 5e-3, weight decay 0.1 on theta, a per-task learning rate for the head, no
decay on biases.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gpart_jax.layout import flatten_with_paths


def linear_warmup_decay(peak_lr: float, total_steps: int, warmup_frac: float = 0.06) -> optax.Schedule:
    """0 -> ``peak_lr`` linearly over ``round(warmup_frac * total_steps)`` steps, then -> 0 at the end."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_frac < 1.0:
        raise ValueError(f"warmup_frac must be in [0, 1), got {warmup_frac}")
    warmup = int(round(warmup_frac * total_steps))
    decay = optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup, 1))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), decay], [warmup])


def l2_penalty(coeff: float) -> optax.GradientTransformation:
    """Add ``2 * coeff * params`` to the gradient: the gradient of ``coeff * ||params||^2``.

    Chain it *before* the optimizer (``optax.chain(l2_penalty(c), optax.adam(lr))``) to get the
    same updates as adding ``coeff * ||params||^2`` to the loss.
    """
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("l2_penalty needs params: call update(grads, state, params)")
        updates = jax.tree_util.tree_map(lambda g, p: g + 2.0 * coeff * p, updates, params)
        return updates, state

    return optax.GradientTransformation(init, update)


def _decay_mask(tree) -> Any:
    """True for leaves that get weight decay: not biases, not 1-D leaves of saved modules."""
    flat, treedef = flatten_with_paths(tree)
    mask = [not (path.rsplit("/", 1)[-1] == "bias" or getattr(leaf, "ndim", 0) < 2)
            for path, leaf in flat]
    return jax.tree_util.tree_unflatten(treedef, mask)


def _one(lr, total_steps, warmup_frac, weight_decay, regularization, mask):
    schedule = linear_warmup_decay(lr, total_steps, warmup_frac)
    if regularization == "decoupled":
        return optax.adamw(schedule, weight_decay=weight_decay, mask=mask)
    return optax.chain(optax.masked(l2_penalty(weight_decay), mask) if mask is not None
                       else l2_penalty(weight_decay), optax.adam(schedule))


def make_optimizer(
    trainable: dict,
    *,
    total_steps: int,
    adapter_lr: float = 5e-3,
    saved_lr: float = 1e-3,
    warmup_frac: float = 0.06,
    adapter_weight_decay: float = 0.1,
    saved_weight_decay: float = 0.0,
    regularization: str = "decoupled",
    max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """AdamW (or Adam + L2 penalty) with its own schedule for the adapter and the saved modules.

    ``trainable`` is ``{"adapter": ..., "saved": {path: leaf}}`` (``gpart_jax.trainable``). Both
    groups use linear warmup over ``warmup_frac`` of ``total_steps`` then linear decay to 0.
    ``regularization="decoupled"``: AdamW's decay ``theta <- theta - lr wd theta``;
    ``"l2"``: the gradient of ``wd ||theta||^2`` added before Adam (see the module docstring).
    The adapter is decayed whole (theta is one vector); in saved modules biases and 1-D leaves
    are not decayed. ``max_grad_norm`` clips the global norm of all gradients first.
    """
    if regularization not in ("decoupled", "l2"):
        raise ValueError(f"regularization must be 'decoupled' or 'l2', got {regularization!r}")
    if set(trainable) != {"adapter", "saved"}:
        raise ValueError(f"trainable must be a dict with keys 'adapter' and 'saved' (see "
                         f"gpart_jax.trainable.init_trainable), got keys {sorted(trainable)}")
    labels = {"adapter": jax.tree_util.tree_map(lambda _: "adapter", trainable["adapter"]),
              "saved": jax.tree_util.tree_map(lambda _: "saved", trainable["saved"])}
    saved_mask = {"adapter": jax.tree_util.tree_map(lambda _: False, trainable["adapter"]),
                  "saved": _decay_mask(trainable["saved"])}
    # partition hands each transform the sub-tree of its label with the rest masked out, so the
    # masks are given on the full structure.
    transforms = {
        "adapter": _one(adapter_lr, total_steps, warmup_frac, adapter_weight_decay,
                        regularization, None),
        "saved": _one(saved_lr, total_steps, warmup_frac, saved_weight_decay, regularization,
                      saved_mask),
    }
    opt = optax.partition(transforms, labels)
    if max_grad_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), opt)
    return opt


def global_norm(tree) -> jax.Array:
    """sqrt of the sum of squares of every leaf (float32)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                        for x in jax.tree_util.tree_leaves(tree)))

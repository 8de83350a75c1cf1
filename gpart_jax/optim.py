"""optax for adapters: separate learning rates, schedules and regularization for the method's
trainable pytree and the saved modules.

Two meanings of regularization, and why the difference matters for GPart:

* **L2 penalty** ``lambda ||theta||^2`` added to the loss (its gradient ``2 lambda theta`` is
  added before Adam, ``optax.add_decayed_weights(2 lambda)``, and rescaled like any gradient).
  For isometric GPart ``||theta||^2 = ||P theta||^2 = ||delta w||^2``, so it is exactly an L2
  penalty on the weight update. For non-isometric GPart ``||delta w||^2 = sum_j n_j theta_j^2``:
  the penalty on the update is miscalibrated by the group sizes (about ``N / d``).
* **Decoupled weight decay** (AdamW): ``theta <- theta - lr * wd * theta``. Because ``P`` is
  linear, ``delta w = P theta`` shrinks by the same factor ``1 - lr * wd`` for any ``P``,
  isometric or not.

The paper's recipe: AdamW, linear warmup over the first 6% of steps then linear decay to 0,
theta learning rate 5e-3, weight decay 0.1 on theta, a per-task learning rate for the head, no
decay on biases.
"""

from __future__ import annotations

import jax
import optax

from gpart_jax import _validate
from gpart_jax.paths import leaves_with_paths

REGULARIZATIONS = ("decoupled", "l2")


def linear_warmup_decay(peak_lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """0 -> ``peak_lr`` linearly over ``warmup_steps`` steps, then linearly -> 0 at ``total_steps``."""
    total_steps = _validate.positive_int(total_steps, "total_steps")
    warmup_steps = _validate.integer(warmup_steps, "warmup_steps", low=0, high=total_steps - 1)
    decay = optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup_steps), decay],
                                [warmup_steps])


def warmup_steps_of(total_steps: int, warmup_frac: float = 0.06,
                    warmup_steps: int | None = None) -> int:
    """Warmup length in steps: ``warmup_steps`` if given, else ``round(warmup_frac * total_steps)``."""
    if warmup_steps is not None:
        return _validate.integer(warmup_steps, "warmup_steps", low=0, high=total_steps - 1)
    frac = _validate.real(warmup_frac, "warmup_frac", low=0.0, high=1.0, high_open=True)
    return int(round(frac * total_steps))


def _saved_decay_mask(saved):
    """True for saved leaves that get weight decay: not biases, not 1-D leaves."""
    flat, treedef = leaves_with_paths(saved)
    mask = [not (path.rsplit("/", 1)[-1] == "bias" or getattr(leaf, "ndim", 0) < 2)
            for path, leaf in flat]
    return jax.tree_util.tree_unflatten(treedef, mask)


def _one(lr, total_steps, warmup_steps, weight_decay, regularization, mask):
    schedule = linear_warmup_decay(lr, total_steps, warmup_steps)
    if regularization == "decoupled":
        return optax.adamw(schedule, weight_decay=weight_decay, mask=mask)
    return optax.chain(optax.add_decayed_weights(2.0 * weight_decay, mask), optax.adam(schedule))


def make_optimizer(
    *,
    total_steps: int,
    trainable_lr: float = 5e-3,
    saved_lr: float = 1e-3,
    warmup_frac: float = 0.06,
    warmup_steps: int | None = None,
    trainable_weight_decay: float = 0.1,
    saved_weight_decay: float = 0.0,
    regularization: str = "decoupled",
    max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """AdamW (or Adam + L2 penalty) for the pair ``(trainable, saved)``, each with its own schedule.

    The optimizer's params are the pair ``(trainable, saved)``: the method's trainable pytree
    (theta) and the saved modules ``{path: leaf}`` (``{}`` when there are none), as
    ``jax.grad`` of a loss over that pair gives them. Both use linear warmup (``warmup_steps``,
    or ``warmup_frac`` of ``total_steps``) then linear decay to 0.
    ``regularization="decoupled"``: AdamW's decay ``theta <- theta - lr wd theta``;
    ``"l2"``: the gradient of ``wd ||theta||^2`` added before Adam (see the module docstring).
    The trainable pytree is decayed whole (theta is one vector); in saved modules biases and 1-D
    leaves are not decayed. ``max_grad_norm`` clips the global norm of all gradients first.
    """
    total_steps = _validate.positive_int(total_steps, "total_steps")
    warmup = warmup_steps_of(total_steps, warmup_frac, warmup_steps)
    _validate.choice(regularization, "regularization", REGULARIZATIONS)
    for name, value in (("trainable_lr", trainable_lr), ("saved_lr", saved_lr)):
        _validate.real(value, name, low=0.0)
    for name, value in (("trainable_weight_decay", trainable_weight_decay),
                        ("saved_weight_decay", saved_weight_decay)):
        _validate.real(value, name, low=0.0)

    def labels(pair):
        trainable, saved = pair
        return (jax.tree_util.tree_map(lambda _: "trainable", trainable),
                jax.tree_util.tree_map(lambda _: "saved", saved))

    def saved_mask(pair):
        # partition hands each transform the whole pair with the other label's leaves masked
        # out, so the mask is given on the pair
        trainable, saved = pair
        return jax.tree_util.tree_map(lambda _: False, trainable), _saved_decay_mask(saved)

    transforms = {
        "trainable": _one(trainable_lr, total_steps, warmup, trainable_weight_decay,
                          regularization, None),
        "saved": _one(saved_lr, total_steps, warmup, saved_weight_decay, regularization,
                      saved_mask),
    }
    opt = optax.partition(transforms, labels)
    if max_grad_norm is not None:
        max_grad_norm = _validate.real(max_grad_norm, "max_grad_norm", low=0.0, low_open=True)
        opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), opt)
    return opt

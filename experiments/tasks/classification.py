"""Classification: cross-entropy on one label per example; accuracy and Matthews correlation.

Rows of weight 0 (the filler rows of a last, partial batch) count for nothing: the loss of a
batch is ``sum_b w_b CE(logits_b, label_b)`` with ``sum_b w_b`` as its weight, and the metrics
read the real rows only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import metrics

TARGETS = ("label",)  # the batch keys the loss reads besides the model's inputs
METRICS = ("accuracy", "mcc", "loss")  # what a run may be selected by


def loss_terms(logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """``(sum of weighted cross-entropies, sum of weights)`` over the batch."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return jnp.sum(ce * batch["weight"]), jnp.sum(batch["weight"])


def eval_outputs(logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Per row: ``loss`` (weighted), ``weight``, ``prediction`` and ``label``."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"loss": ce * batch["weight"], "weight": batch["weight"],
            "prediction": jnp.argmax(logits, axis=-1), "label": batch["label"]}


def summarize(outputs: dict[str, np.ndarray], task, split: str, params, *, generate: bool = True,
              keep_generations: bool = False) -> dict:
    """``loss`` (mean cross-entropy), ``accuracy``, ``mcc`` and ``examples`` of the real rows."""
    del split, params, generate, keep_generations
    weight = outputs["weight"]
    real = weight > 0
    return ({"loss": float(outputs["loss"].sum() / max(weight.sum(), 1.0))}
            | metrics.classification_metrics(outputs["label"][real], outputs["prediction"][real],
                                              task.num_classes))

"""Causal language modelling of answers: the loss on the answer's tokens, and exact match.

An example is a prompt followed by its answer; ``loss_mask`` is 1 on the answer's tokens. The
loss is the cross-entropy of each answer token given the tokens before it, summed and divided by
the number of answer tokens. Validation and test are also scored by greedy generation
(``model.generate``): ``exact_match`` is GSM8K's (the number after the last ``####``),
``last_number_match`` the last number of the generation, whatever its format.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import metrics

TARGETS = ("loss_mask",)
METRICS = ("loss", "exact_match")


def _token_losses(logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    mask = batch["loss_mask"][:, 1:] * batch["weight"][:, None]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["input_ids"][:, 1:])
    return ce * mask, mask


def loss_terms(logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """``(sum of answer-token cross-entropies, number of answer tokens)``."""
    ce, mask = _token_losses(logits, batch)
    return jnp.sum(ce), jnp.sum(mask)


def eval_outputs(logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Per row: ``loss`` (summed over its answer tokens) and ``weight`` (their number)."""
    ce, mask = _token_losses(logits, batch)
    return {"loss": jnp.sum(ce, axis=1), "weight": jnp.sum(mask, axis=1)}


def summarize(outputs: dict[str, np.ndarray], task, split: str, params, *, generate: bool = True,
              keep_generations: bool = False) -> dict:
    """``loss`` (mean over answer tokens), ``examples`` and, where the split has prompts to
    generate from, ``exact_match``, ``last_number_match``, ``generated`` and a ``sample``; with
    ``keep_generations`` also ``generations`` (``{"answer", "generation"}`` per prompt)."""
    stream = task.splits[split]
    result = {"loss": float(outputs["loss"].sum() / max(outputs["weight"].sum(), 1.0)),
              "examples": stream.num_examples}
    count = {"validation": task.cfg.task.get("generate_examples", 0),
             "test": stream.num_examples}.get(split, 0)
    if not (generate and count):
        return result
    prompts, answers = stream.prompts[:count], stream.answers[:count]
    texts = task.model_module.generate(task.model, params, prompts, task.cfg.task.max_new_tokens,
                                       task.cfg.train.eval_batch_size)
    result |= {"exact_match": metrics.exact_match(texts, answers),
               "last_number_match": metrics.last_number_match(texts, answers),
               "generated": len(texts), "sample": texts[0][:300]}
    if keep_generations:
        result["generations"] = [{"answer": a, "generation": t} for t, a in zip(texts, answers, strict=True)]
    return result

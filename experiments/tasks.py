"""What the trainer trains: a (model, dataset, method) triple built from a config.

``build_task(cfg)`` loads the frozen base model, builds the method over its params, and turns
the dataset's splits into resumable batch streams:

* **text classification** (MiniLM, ``BertForSequenceClassification``): WordPiece ids in
  length buckets (``experiments.data.text.BucketedBatches``); a fresh ``classifier`` head.
* **image classification** (the project's ViT, pretrained on Fashion-MNIST): images scaled as
  the model was pretrained (``experiments.models.vit.normalize``: ``x / 255``, then the
  Fashion-MNIST mean and standard deviation); 8x8 ``digits`` are first resized to 28x28 with
  bilinear interpolation (``jax.image.resize(..., "linear")`` on the 0..255 values); a fresh,
  zero-initialised ``head``.
* **causal LM** (SmolLM2-135M-Instruct): a chat prompt with the question, then the solution
  (ending ``#### N``) and ``<|im_end|>``; the loss is on the solution's tokens only
  (``loss_mask``). Validation and test are also scored by greedy generation and GSM8K exact
  match of the number after the last ``####``.

``abstract_params(cfg)`` gives the same model's parameter shapes without reading any weights
(for ``gpart-jax params``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import gpart_jax.methods as M
from experiments import data
from experiments.data import catalog
from experiments.data.sources import OFFLINE_NAMES, SOURCES, DataUnavailableError
from experiments.data.text import BucketedBatches, Position, text_batches

MODELS = {"minilm": "text", "vit": "image", "smollm2": "math"}
HEADS = {"minilm": ("classifier",), "vit": ("head",), "smollm2": ()}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SUBSET_SEED = 0  # subsets of a split are the same for every run seed (comparable runs)
# Keys of cfg.method that are not options of the method's create().
METHOD_KEYS = ("name", "modules_to_save")


class UsageError(ValueError):
    """A config that cannot run as given; the message says what to change."""


# --------------------------------------------------------------------------- batches

def subset_indices(total: int, n: int) -> np.ndarray:
    """``n`` indices of ``range(total)`` (all when ``n`` is 0 or ``>= total``), sorted.

    A fixed permutation (``default_rng(SUBSET_SEED)``), independent of the run's seed.
    """
    if n <= 0 or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(total)[:n])


class ArrayBatches:
    """Shuffled, resumable batches of fixed-shape arrays (images), with the interface of
    ``BucketedBatches``: ``len`` (batches per epoch), ``plan``, ``epoch``, ``stream``.

    Per epoch the examples are permuted by ``numpy.random.default_rng([seed, epoch])`` and cut
    into batches; the last one is filled with rows of ``weight`` 0 and ``index`` -1.
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1 or not sizes.pop():
            raise ValueError("arrays must be non-empty and of one length")
        self.arrays, self.batch_size, self.seed, self.shuffle = arrays, batch_size, seed, shuffle
        self.num_examples = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def plan(self, epoch: int) -> list[np.ndarray]:
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                 if self.shuffle else np.arange(self.num_examples))
        return [order[i:i + self.batch_size] for i in range(0, self.num_examples, self.batch_size)]

    def collate(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        rows = len(indices)
        batch = {}
        for key, value in self.arrays.items():
            out = np.zeros((self.batch_size, *value.shape[1:]), value.dtype)
            out[:rows] = value[indices]
            batch[key] = out
        weight = np.zeros(self.batch_size, np.float32)
        weight[:rows] = 1
        index = np.full(self.batch_size, -1, np.int64)
        index[:rows] = indices
        return batch | {"weight": weight, "index": index}

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        for indices in self.plan(epoch)[start_step:]:
            yield self.collate(indices)

    def stream(self, start: Position | None = None) -> Iterator[tuple[Position, dict[str, np.ndarray]]]:
        start = Position() if start is None else start
        epoch, step = start.epoch + start.step // len(self), start.step % len(self)
        while True:
            for offset, batch in enumerate(self.epoch(epoch, step)):
                yield Position(epoch, step + offset), batch
            epoch, step = epoch + 1, 0


class LMBatches(BucketedBatches):
    """``BucketedBatches`` of prompt + answer token sequences, plus ``loss_mask`` (float32,
    ``(B, L)``): 1 on the answer's tokens, 0 on the prompt, padding and filler rows."""

    def __init__(self, sequences: Sequence[np.ndarray], prompt_lengths: Sequence[int], **kwargs: Any):
        super().__init__(sequences, None, **kwargs)
        self.prompt_lengths = np.asarray(prompt_lengths, np.int64)

    def collate(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        batch = super().collate(indices)
        mask = np.zeros(batch["input_ids"].shape, np.float32)
        for row, i in enumerate(indices):
            mask[row, self.prompt_lengths[i]:self.lengths[i]] = 1
        return batch | {"loss_mask": mask}


# --------------------------------------------------------------------------- the task

@dataclasses.dataclass
class Task:
    """Everything a run needs besides the optimizer.

    ``base``: the frozen params ``{"params": ...}``; ``splits``: ``"train"`` (shuffled by the
    run's seed), ``"validation"`` and ``"test"`` (in order) batch streams; ``inputs``: the batch
    keys the model reads; ``generation``: for causal LM, per split ``(prompts, answers)`` scored
    by greedy generation.
    """

    kind: str  # "classification" or "causal_lm"
    model: Any
    base: dict
    method: M.Method
    modules_to_save: tuple[str, ...]
    splits: dict[str, Any]
    inputs: tuple[str, ...]
    metric: str
    num_classes: int | None = None
    tokenizer: Any = None
    generation: dict[str, tuple[list[list[int]], list[str]]] = dataclasses.field(default_factory=dict)
    max_new_tokens: int = 0
    info: dict = dataclasses.field(default_factory=dict)

    def logits(self, params, batch: dict, rng: jax.Array | None = None) -> jax.Array:
        """float32 logits; dropout is on when ``rng`` is given (training)."""
        args = [batch[k] for k in self.inputs]
        if self.kind == "causal_lm":
            return self.model.apply(params, args[0], attention_mask=args[1]).logits
        out = self.model.apply(params, *args, deterministic=rng is None,
                               rngs={} if rng is None else {"dropout": rng})
        return out.astype(jnp.float32)

    def loss_terms(self, params, batch: dict, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``(sum of weighted losses, sum of weights)`` over the batch.

        Classification: cross-entropy of each row times its ``weight`` (0 for filler rows).
        Causal LM: cross-entropy of each answer token given the tokens before it, weighted by
        ``loss_mask`` (answer tokens only); the weight is the number of answer tokens.
        """
        logits = self.logits(params, batch, rng)
        if self.kind == "causal_lm":
            mask = batch["loss_mask"][:, 1:] * batch["weight"][:, None]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["input_ids"][:, 1:])
            return jnp.sum(ce * mask), jnp.sum(mask)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return jnp.sum(ce * batch["weight"]), jnp.sum(batch["weight"])

    def eval_outputs(self, params, batch: dict) -> dict[str, jax.Array]:
        """Per row: ``loss`` (summed) and ``weight``; classification also ``prediction``."""
        logits = self.logits(params, batch)
        if self.kind == "causal_lm":
            mask = batch["loss_mask"][:, 1:] * batch["weight"][:, None]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["input_ids"][:, 1:])
            return {"loss": jnp.sum(ce * mask, axis=1), "weight": jnp.sum(mask, axis=1)}
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {"loss": ce * batch["weight"], "weight": batch["weight"],
                "prediction": jnp.argmax(logits, axis=-1), "label": batch["label"]}

    def device_keys(self) -> tuple[str, ...]:
        """The batch keys a step reads (``index`` stays on the host)."""
        extra = ("loss_mask",) if self.kind == "causal_lm" else ("label",)
        return (*self.inputs, *extra, "weight")


# --------------------------------------------------------------------------- config checks

def method_options(cfg: ml_collections.ConfigDict) -> dict:
    """``cfg.method`` without ``name`` / ``modules_to_save``: the options of ``methods.build``."""
    options = {k: v for k, v in cfg.method.to_dict().items() if k not in METHOD_KEYS}
    if "targets" in options and isinstance(options["targets"], list):
        options["targets"] = tuple(options["targets"])
    return options


def modules_to_save(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The saved (fully trained) modules: ``cfg.method.modules_to_save``, default the model's head."""
    given = cfg.method.get("modules_to_save", None)
    return HEADS[cfg.model.name] if given is None else tuple(given)


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Cheap checks of a config before anything is loaded; ``UsageError`` says what to change."""
    if cfg.model.name not in MODELS:
        raise UsageError(f"unknown model {cfg.model.name!r}; set --config.model.name to one of "
                         f"{', '.join(MODELS)}")
    if cfg.method.name not in M.METHODS:
        raise UsageError(f"unknown method {cfg.method.name!r}; set --config.method.name to one of "
                         f"{', '.join(M.METHODS)}")
    if cfg.compute_dtype not in COMPUTE_DTYPES:
        raise UsageError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got "
                         f"{cfg.compute_dtype!r}; set --config.compute_dtype=float32")
    if cfg.compute_dtype != "float32" and cfg.model.name == "vit":
        raise UsageError("the ViT computes in float32 only; set --config.compute_dtype=float32")
    for name in (cfg.task.dataset, cfg.task.get("test_dataset") or cfg.task.dataset):
        check_dataset(name, MODELS[cfg.model.name])
    if cfg.task.metric not in ("accuracy", "mcc", "loss", "exact_match"):
        raise UsageError(f"unknown metric {cfg.task.metric!r}; set --config.task.metric to accuracy, "
                         f"mcc, loss or exact_match")
    if cfg.task.metric == "exact_match" and cfg.model.name != "smollm2":
        raise UsageError("exact_match is a causal-LM metric; use --config.task.metric=accuracy or mcc")
    if cfg.task.metric in ("accuracy", "mcc") and cfg.model.name == "smollm2":
        raise UsageError("a causal LM is selected by loss or exact_match; set --config.task.metric=loss")
    t = cfg.train
    if t.batch_size < 1 or t.grad_accum < 1 or t.batch_size % t.grad_accum:
        raise UsageError(f"train.batch_size ({t.batch_size}) must be a positive multiple of "
                         f"train.grad_accum ({t.grad_accum})")
    if t.epochs < 1 and t.steps < 1:
        raise UsageError("set --config.train.epochs or --config.train.steps to at least 1")


def check_dataset(name: str, kind: str) -> None:
    """``name`` is an offline source of ``kind`` or a TFDS catalog name; else ``UsageError``."""
    if name in SOURCES:
        if SOURCES[name].kind != kind:
            fits = [n for n, s in SOURCES.items() if s.kind == kind]
            raise UsageError(f"dataset {name!r} holds {SOURCES[name].kind} data, this model takes "
                             f"{kind}; set --config.task.dataset to one of {', '.join(fits)}")
        return
    try:
        catalog.builder(name)
    except DataUnavailableError as e:
        close = difflib.get_close_matches(name, OFFLINE_NAMES, n=1)
        why = f" (did you mean {close[0]!r}?)" if close else f" ({str(e).split(': ', 1)[-1][:160]})"
        raise UsageError(f"unknown dataset {name!r}{why}; set --config.task.dataset to one of "
                         f"{', '.join(OFFLINE_NAMES)} or a prepared TFDS catalog name") from None


# --------------------------------------------------------------------------- models

def _minilm(cfg, num_labels: int, key: jax.Array, dtype, shapes_only: bool = False):
    from experiments.models import bert

    layers = int(cfg.model.get("num_layers", 0) or 0)
    if shapes_only:
        config = bert.minilm_config()
        if layers:
            config = dataclasses.replace(config, num_hidden_layers=layers)
        model = bert.BertForSequenceClassification(config, num_labels=num_labels,
                                                   pooling=cfg.model.pooling, dtype=dtype)
        return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    model, variables = bert.load_minilm(num_labels, pooling=cfg.model.pooling, key=key, dtype=dtype)
    if layers and layers < model.config.num_hidden_layers:
        # keep the first `layers` layers: a smaller model for tests
        config = dataclasses.replace(model.config, num_hidden_layers=layers)
        model = bert.BertForSequenceClassification(config, num_labels=num_labels,
                                                   pooling=cfg.model.pooling, dtype=dtype)
        stack = variables["params"]["bert"]["encoder"]["layer"]
        variables["params"]["bert"]["encoder"]["layer"] = {str(i): stack[str(i)] for i in range(layers)}
    return model, variables


def _vit(cfg, num_classes: int, shapes_only: bool = False):
    from experiments.models import vit

    if shapes_only:
        import json

        path = vit.cache_dir() / "config.json"
        config = vit.ViTConfig(**json.loads(path.read_text())) if path.exists() else vit.ViTConfig()
        model = vit.ViT(dataclasses.replace(config, num_classes=num_classes))
        shape = (1, config.image_size, config.image_size, config.channels)
        return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    model, variables = vit.load_pretrained_vit(num_classes)
    # always a new head for the new task (load_pretrained_vit keeps the pretrained one at 10 classes)
    head = variables["params"]["head"]
    variables["params"]["head"] = jax.tree_util.tree_map(jnp.zeros_like, head)
    return model, variables


def _smollm2(cfg, dtype, shapes_only: bool = False):
    from experiments.models import llama

    layers = int(cfg.model.get("num_layers", 0) or 0) or None
    if shapes_only:
        config = llama.smollm2_config()
        if layers:
            config = dataclasses.replace(config, num_hidden_layers=layers)
        model = llama.LlamaForCausalLM(config, dtype=dtype)
        return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    model, variables = llama.load_smollm2(num_layers=layers)  # float32 params
    if dtype != jnp.float32:
        model = llama.LlamaForCausalLM(model.config, dtype=dtype)
    return model, variables


def num_classes_of(name: str) -> int | None:
    """Classes of a dataset, from the offline registry or the prepared TFDS info (no examples read)."""
    if name in SOURCES:
        labels = SOURCES[name].label_names
        return None if labels is None else len(labels)
    info = catalog.builder(name).info
    label = info.features["label"] if "label" in info.features else None
    return getattr(label, "num_classes", None)


def build_method(cfg: ml_collections.ConfigDict, params) -> M.Method:
    """``methods.build(cfg.method.name, params, **options)``; a bad option is a ``UsageError``."""
    try:
        return M.build(cfg.method.name, params, **method_options(cfg))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{e} (from the config's method.* keys); set them for this method, or start "
                         f"from its own file in configs/") from None


def abstract_params(cfg: ml_collections.ConfigDict) -> tuple[Any, dict]:
    """``(model, shapes)``: the task model and its params as ``jax.ShapeDtypeStruct`` (no weights read)."""
    check_config(cfg)
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    name = cfg.model.name
    if name == "minilm":
        return _minilm(cfg, num_classes_of(cfg.task.dataset), None, dtype, shapes_only=True)
    if name == "vit":
        return _vit(cfg, num_classes_of(cfg.task.dataset), shapes_only=True)
    return _smollm2(cfg, dtype, shapes_only=True)


# --------------------------------------------------------------------------- build_task

def _load(name: str, split: str, n: int = 0) -> list[dict]:
    source = data.load(name, split)
    return source.__getitems__(subset_indices(len(source), n))


def _quiet_tfds() -> None:
    try:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    except ImportError:
        pass
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


def load_model(cfg: ml_collections.ConfigDict) -> tuple[Any, dict]:
    """``(model, {"params": ...})`` of ``cfg.model`` with its new head (key ``fold_in(key(seed), 0)``)."""
    check_config(cfg)
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    if cfg.model.name == "smollm2":
        return _smollm2(cfg, dtype)
    if cfg.model.name == "minilm":
        head_key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
        return _minilm(cfg, num_classes_of(cfg.task.dataset), head_key, dtype)
    return _vit(cfg, num_classes_of(cfg.task.dataset))


def build_task(cfg: ml_collections.ConfigDict) -> Task:
    """Model, frozen params, method and batch streams of ``cfg`` (see the module docstring).

    The head is initialised from ``fold_in(key(seed), 0)`` and the adapter from
    ``fold_in(key(seed), 1)`` (``train`` does the latter); the training batches are shuffled by
    ``cfg.seed``. Raises ``UsageError``, ``MissingPackageError`` or ``DataUnavailableError`` with
    a one-line fix.
    """
    check_config(cfg)
    _quiet_tfds()
    kind = MODELS[cfg.model.name]
    t = cfg.task
    test_name = t.get("test_dataset") or t.dataset
    micro = cfg.train.batch_size  # train streams hold whole steps; the step splits them
    eval_bs = cfg.train.eval_batch_size
    model, base = load_model(cfg)
    method = build_method(cfg, base)
    rows = {"train": _load(t.dataset, t.train_split, t.train_examples),
            "validation": _load(t.dataset, t.validation_split, t.validation_examples),
            "test": _load(test_name, t.test_split, t.test_examples)}
    info = {"examples": {k: len(v) for k, v in rows.items()}, "dataset": t.dataset,
            "test_dataset": test_name}
    common = dict(model=model, base=base, method=method, modules_to_save=modules_to_save(cfg),
                  metric=t.metric, info=info)
    if kind == "text":
        from experiments.data.text import WordPieceTokenizer

        tok = WordPieceTokenizer.minilm(t.max_length)
        buckets = tuple(b for b in t.buckets if b < t.max_length) + (t.max_length,)
        splits = {s: text_batches(r, tok, batch_size=micro if s == "train" else eval_bs,
                                  seed=cfg.seed, shuffle=s == "train", buckets=buckets)
                  for s, r in rows.items()}
        return Task(kind="classification", splits=splits,
                    inputs=("input_ids", "attention_mask", "token_type_ids"),
                    num_classes=num_classes_of(t.dataset), tokenizer=tok, **common)
    if kind == "image":
        splits = {s: ArrayBatches(image_arrays(r, model.config.image_size),
                                  batch_size=micro if s == "train" else eval_bs, seed=cfg.seed,
                                  shuffle=s == "train") for s, r in rows.items()}
        return Task(kind="classification", splits=splits, inputs=("image",),
                    num_classes=num_classes_of(t.dataset), **common)
    from experiments.models import llama

    tok = llama.load_smollm2_tokenizer()
    buckets = tuple(b for b in t.buckets if b < t.max_length) + (t.max_length,)
    splits, generation = {}, {}
    for s, r in rows.items():
        prompts = [tok.encode(tok.chat_prompt(ex["question"])) for ex in r]
        answers = [tok.encode(ex["solution"]) + [tok.eos_id] for ex in r]
        seqs = [np.asarray((p + a)[:t.max_length], np.int32) for p, a in zip(prompts, answers, strict=True)]
        splits[s] = LMBatches(seqs, [min(len(p), t.max_length) for p in prompts],
                              batch_size=micro if s == "train" else eval_bs, seed=cfg.seed,
                              shuffle=s == "train", buckets=buckets, pad_id=tok.pad_id)
        n_gen = {"validation": t.generate_examples, "test": len(r)}.get(s, 0)
        generation[s] = (prompts[:n_gen], [ex["answer"] for ex in r[:n_gen]])
    return Task(kind="causal_lm", splits=splits, inputs=("input_ids", "attention_mask"),
                tokenizer=tok, generation=generation, max_new_tokens=t.max_new_tokens, **common)


def image_arrays(rows: list[dict], size: int) -> dict[str, np.ndarray]:
    """``{"image": float32 (N, size, size, 1) model input, "label": int32}`` of image examples.

    Images of another size are resized bilinearly on their 0..255 values first, then normalized
    like the pretraining data (``vit.normalize``).
    """
    from experiments.models import vit

    images = np.stack([np.asarray(r["image"]) for r in rows]).astype(np.float32)
    if images.shape[1:3] != (size, size):
        images = np.asarray(jax.image.resize(images, (len(images), size, size, images.shape[3]), "linear"))
    return {"image": np.asarray(vit.normalize(images)),
            "label": np.asarray([r["label"] for r in rows], np.int32)}


def generate_answers(task: Task, params, prompts: list[list[int]], batch_size: int) -> list[str]:
    """Greedy generations (text) of ``prompts`` with ``params``, ``batch_size`` prompts at a time."""
    from experiments.models import llama

    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = llama.generate(task.model, params, prompts[i:i + batch_size], task.max_new_tokens,
                                eos_id=task.tokenizer.eos_id, pad_id=task.tokenizer.pad_id)
        out += [task.tokenizer.decode(t) for t in tokens]
    return out


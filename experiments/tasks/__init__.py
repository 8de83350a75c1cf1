"""What the trainer trains: a (model, data, method) triple built from a config.

``build_task(cfg)`` loads the model (``experiments.models.<cfg.model.name>``), builds the method
over its params, and turns the data's splits into resumable batch streams. The model module says
which task kind it serves, a module of this package: ``classification`` or ``causal_lm``, each
with its loss, evaluation outputs and metrics. No other code switches on the kind.

``check_config(cfg)`` validates every value of a config before any weight or example is read
(and before a workdir is created): a bad value is a ``UsageError`` naming the key and the fix.
``abstract_params(cfg)`` gives the model's parameter shapes without reading weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import pathlib
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np

import gpart_jax as gj
from experiments import data, models
from experiments.data import catalog
from experiments.data.sources import OFFLINE_NAMES, SOURCES, DataUnavailableError

SUBSET_SEED = 0  # subsets of a split are the same for every run seed (comparable runs)
COMPUTE_DTYPES = ("float32", "bfloat16")
# Keys of cfg.method that are not options of the method's create().
METHOD_KEYS = ("name", "saved_modules", "element_order", "bias", "scope", "layer_pattern")


class UsageError(ValueError):
    """A config that cannot run as given; the message says what to change."""


def kind_of(model_module: ModuleType) -> ModuleType:
    """The task kind module (``experiments.tasks.<KIND>``) a model serves."""
    return importlib.import_module(f"{__name__}.{model_module.KIND}")


# --------------------------------------------------------------------------- the task

@dataclasses.dataclass
class Task:
    """Everything a run needs besides the optimizer.

    ``base``: the frozen params ``{"params": ...}``; ``saved``: the initial leaves of the modules
    trained in full (the new head), by path; ``splits``: ``"train"`` (shuffled by the run's
    seed), ``"validation"`` and ``"test"`` (in order) batch streams.
    """

    cfg: ml_collections.ConfigDict
    kind: ModuleType
    model_module: ModuleType
    model: Any
    base: dict
    method: gj.Method
    saved: dict
    splits: dict[str, Any]
    metric: str
    num_classes: int | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def logits(self, params, batch: dict, rng: jax.Array | None = None) -> jax.Array:
        """float32 logits; dropout is on when ``rng`` is given (training)."""
        return self.model_module.logits(self.model, params, batch, rng)

    def loss_terms(self, params, batch: dict, rng: jax.Array | None = None):
        """``(sum of weighted losses, sum of weights)`` over the batch (the kind's loss)."""
        return self.kind.loss_terms(self.logits(params, batch, rng), batch)

    def eval_outputs(self, params, batch: dict) -> dict[str, jax.Array]:
        """Per-row evaluation outputs (the kind's)."""
        return self.kind.eval_outputs(self.logits(params, batch), batch)

    def device_keys(self) -> tuple[str, ...]:
        """The batch keys a step reads (``index`` stays on the host)."""
        return (*self.model_module.INPUTS, *self.kind.TARGETS, "weight")

    def summarize(self, outputs: dict[str, np.ndarray], split: str, params, **kwargs) -> dict:
        """The metrics of ``split`` from its per-row outputs (the kind's)."""
        return self.kind.summarize(outputs, self, split, params, **kwargs)


# --------------------------------------------------------------------------- config checks

def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _int(cfg_node, key: str, low: int, where: str) -> None:
    value = cfg_node[key]
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
           f"{where}.{key} must be an integer >= {low}, got {value!r}; set --config.{where}.{key}")


def _real(cfg_node, key: str, where: str, low: float = 0.0, high: float | None = None,
          high_open: bool = False) -> None:
    value = cfg_node[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and value >= low and (high is None or (value < high if high_open else value <= high))
    rng = f"[{low}, {high})" if high_open else f"[{low}, {high if high is not None else 'inf'}]"
    _check(ok, f"{where}.{key} must be a number in {rng}, got {value!r}; set --config.{where}.{key}")


def check_config(cfg: ml_collections.ConfigDict) -> ModuleType:
    """Validate ``cfg`` before anything is loaded; returns its model module. ``UsageError`` names
    the key and the fix."""
    try:
        model_module = models.get(cfg.model.name)
    except models.UnknownModelError as e:
        raise UsageError(str(e)) from None
    kind = kind_of(model_module)
    _check(cfg.method.name in gj.methods.METHODS,
           f"unknown method {cfg.method.name!r}; set --config.method.name to one of "
           f"{', '.join(gj.methods.METHODS)}")
    _check(cfg.compute_dtype in COMPUTE_DTYPES,
           f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {cfg.compute_dtype!r}; "
           f"set --config.compute_dtype=float32")
    _check(isinstance(cfg.seed, int) and 0 <= cfg.seed < 2**31,
           f"seed must be an integer in [0, 2**31), got {cfg.seed!r}; set --config.seed")
    _check(isinstance(cfg.devices, int) and cfg.devices >= 0,
           f"devices must be >= 0 (0: all local devices), got {cfg.devices!r}; set --config.devices")
    _check(isinstance(cfg.log_every, int) and cfg.log_every >= 1,
           f"log_every must be an integer >= 1, got {cfg.log_every!r}; set --config.log_every")
    t = cfg.task
    _check(t.metric in kind.METRICS, f"a {kind.__name__.rsplit('.', 1)[1]} model is selected by "
           f"{', '.join(kind.METRICS)}, not {t.metric!r}; set --config.task.metric")
    for key in ("train_examples", "validation_examples", "test_examples"):
        _int(t, key, 0, "task")
    if model_module.DATA in ("text", "math"):
        _int(t, "max_length", 1, "task")
    for name in (t.dataset, t.get("test_dataset") or t.dataset):
        check_dataset(name, model_module.DATA, t)
    tr = cfg.train
    for key in ("batch_size", "grad_accum", "eval_batch_size", "checkpoint_every", "keep_last"):
        _int(tr, key, 1, "train")
    for key in ("epochs", "steps"):
        _int(tr, key, 0, "train")
    _check(tr.batch_size % tr.grad_accum == 0,
           f"train.batch_size ({tr.batch_size}) must be a multiple of train.grad_accum "
           f"({tr.grad_accum}); set --config.train.grad_accum to a divisor of it")
    _check(tr.epochs >= 1 or tr.steps >= 1,
           "set --config.train.epochs or --config.train.steps to at least 1")
    o = cfg.optim
    for key in ("adapter_lr", "head_lr", "weight_decay", "head_weight_decay", "max_grad_norm"):
        _real(o, key, "optim")
    _real(o, "warmup_frac", "optim", 0.0, 1.0, high_open=True)
    _check(o.warmup_steps is None or (isinstance(o.warmup_steps, int) and o.warmup_steps >= 0),
           f"optim.warmup_steps must be None or an integer >= 0, got {o.warmup_steps!r}")
    _check(o.regularization in gj.optim.REGULARIZATIONS,
           f"optim.regularization must be one of {', '.join(gj.optim.REGULARIZATIONS)}, got "
           f"{o.regularization!r}")
    check_distributed(cfg)
    return model_module


def check_distributed(cfg: ml_collections.ConfigDict) -> None:
    """The multi-process settings (``cfg.distributed``) are complete when any is given (then
    ``auto``, JAX's cluster auto-detection, is not used)."""
    d = cfg.get("distributed")
    if d is None:
        return
    given = bool(d.coordinator) or d.num_processes > 0 or d.process_id >= 0
    if given:
        _check(bool(d.coordinator) and ":" in d.coordinator,
               f"distributed.coordinator must be host:port, got {d.coordinator!r}")
        _check(d.num_processes >= 1, f"distributed.num_processes must be >= 1, got {d.num_processes}")
        _check(0 <= d.process_id < d.num_processes,
               f"distributed.process_id must be in [0, {d.num_processes}), got {d.process_id}")


def check_dataset(name: str, kind: str, task: ml_collections.ConfigDict | None = None) -> None:
    """``name`` is an offline source of ``kind``, ``files`` (a user's own text), a TFDS dataset
    directory or a prepared TFDS catalog name; else ``UsageError``."""
    if name in SOURCES:
        if SOURCES[name].kind != kind:
            fits = [n for n, s in SOURCES.items() if s.kind == kind]
            raise UsageError(f"dataset {name!r} holds {SOURCES[name].kind} data, this model takes "
                             f"{kind}; set --config.task.dataset to one of {', '.join(fits)}")
        return
    if name == "files":
        _check(kind == "text", "task.dataset=files (a user's own labelled text) needs a text "
               "classification model (minilm)")
        return
    if "/" in name and pathlib.Path(name).is_dir():
        return  # a TFDS dataset directory; read with tfds.builder_from_directory
    try:
        catalog.builder(name)
    except DataUnavailableError as e:
        close = difflib.get_close_matches(name, OFFLINE_NAMES, n=1)
        why = f" (did you mean {close[0]!r}?)" if close else f" ({str(e).split(': ', 1)[-1][:160]})"
        raise UsageError(f"unknown dataset {name!r}{why}; set --config.task.dataset to one of "
                         f"{', '.join(OFFLINE_NAMES)}, files (your own CSV/JSONL), a TFDS dataset "
                         f"directory or a prepared TFDS catalog name") from None


# --------------------------------------------------------------------------- data

def subset_indices(total: int, n: int) -> np.ndarray:
    """``n`` indices of ``range(total)`` (all when ``n`` is 0 or ``>= total``), sorted.

    A fixed permutation (``default_rng(SUBSET_SEED)``), independent of the run's seed; locked by
    digests in the tests (a numpy release could change the stream).
    """
    if n <= 0 or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(total)[:n])


def _user_files(cfg):
    from experiments.data.user import read_files

    t = cfg.task
    return read_files(t.files.to_dict(), t.text_column, t.label_column, t.split_column)


def examples(cfg: ml_collections.ConfigDict, split: str) -> list[dict]:
    """The examples of ``split`` (``"train"``, ``"validation"``, ``"test"``) as the run reads them:
    the split named by ``task.<split>_split`` of the dataset (``task.test_dataset`` for the test),
    cut to ``task.<split>_examples`` by ``subset_indices``."""
    t = cfg.task
    name = (t.get("test_dataset") or t.dataset) if split == "test" else t.dataset
    count = t[f"{split}_examples"]
    if name == "files":
        rows = _user_files(cfg)[0][split]
        return [rows[i] for i in subset_indices(len(rows), count)]
    source = data.load(name, t[f"{split}_split"])
    return source.__getitems__(subset_indices(len(source), count))


def num_classes_of(cfg: ml_collections.ConfigDict, name: str | None = None) -> int | None:
    """Classes of the run's dataset (no examples read, except a user's own files)."""
    name = name or cfg.task.dataset
    if name in SOURCES:
        labels = SOURCES[name].label_names
        return None if labels is None else len(labels)
    if name == "files":
        return len(_user_files(cfg)[1])
    info = catalog.builder(name).info
    label = info.features["label"] if "label" in info.features else None
    return getattr(label, "num_classes", None)


# --------------------------------------------------------------------------- the method

def method_options(cfg: ml_collections.ConfigDict) -> dict:
    """``cfg.method`` without the keys that are not ``create`` options."""
    options = {k: v for k, v in cfg.method.to_dict().items() if k not in METHOD_KEYS}
    if isinstance(options.get("targets"), list):
        options["targets"] = tuple(options["targets"])
    return options


def build_method(cfg: ml_collections.ConfigDict, params) -> gj.Method:
    """The method of ``cfg.method`` over ``params``; a bad option is a ``UsageError``.

    GPart with the reference's numbering (``method.element_order="torch"``, ``method.bias``,
    ``method.scope="transformer_block"``) goes through ``gpart_jax.layout.build`` and
    ``GPart.from_layout``.
    """
    m = cfg.method
    try:
        reference = m.name in ("gpart", "gpart-noniso") and (
            m.get("element_order", "native") != "native" or m.get("bias", False)
            or m.get("scope", "global") != "global")
        if not reference:
            return gj.methods.build(m.name, params, **method_options(cfg))
        options = method_options(cfg)
        entries = gj.layout.build(params, options.pop("targets"), element_order=m.element_order,
                                  bias=m.bias)
        if m.name == "gpart-noniso":
            options["isometric"] = False
        return gj.GPart.from_layout(entries, scope=m.scope, layer_pattern=m.get("layer_pattern"),
                                    **options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{e} (from the config's method.* keys)") from None


def saved_paths(cfg: ml_collections.ConfigDict, model_module: ModuleType, params) -> list[str]:
    """Paths of the modules trained in full: ``method.saved_modules`` (default the model's head)."""
    given = cfg.method.get("saved_modules", None)
    modules = model_module.HEAD if given is None else tuple(given)
    try:
        return list(gj.saved_modules(params, modules)) if modules else []
    except gj.TargetError as e:
        raise UsageError(f"method.saved_modules: {e}") from None


def abstract_params(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """``(model, params as jax.ShapeDtypeStruct)`` of ``cfg`` (no weights read)."""
    model_module = check_config(cfg)
    return model_module.abstract(cfg, num_classes_of(cfg))


def check_method(cfg: ml_collections.ConfigDict) -> None:
    """Build the method and the saved modules on the model's shapes: every method option is
    validated before any weight is read."""
    model_module = check_config(cfg)
    _, shapes = model_module.abstract(cfg, num_classes_of(cfg))
    method = build_method(cfg, shapes)
    saved = saved_paths(cfg, model_module, shapes)
    overlap = sorted(set(method.target_paths) & set(saved))
    _check(not overlap, f"method.saved_modules overlaps the adapted leaves ({overlap[:3]}); a leaf "
           f"is either adapted or trained in full")


# --------------------------------------------------------------------------- build_task

def build_task(cfg: ml_collections.ConfigDict, *, order=None) -> Task:
    """Model, frozen params, method and batch streams of ``cfg`` (see the module docstring).

    The head is initialised from ``fold_in(key(seed), 0)`` and the trainable pytree from
    ``fold_in(key(seed), 1)`` (the trainer does the latter); the training batches are shuffled by
    ``cfg.seed`` (or follow ``order``, an ``experiments.data.order.ExampleOrder``, or
    ``task.order_file``). Raises ``UsageError``, ``MissingPackageError`` or
    ``DataUnavailableError`` with a one-line fix.
    """
    model_module = check_config(cfg)
    _quiet_tfds()
    kind = kind_of(model_module)
    t = cfg.task
    num_classes = num_classes_of(cfg) if model_module.KIND == "classification" else None
    model, base = model_module.load(cfg, num_classes)
    method = build_method(cfg, base)
    saved = gj.saved_modules(base, tuple(saved_paths(cfg, model_module, base)) or ())
    rows = {split: examples(cfg, split) for split in ("train", "validation", "test")}
    if order is None and t.get("order_file"):
        from experiments.data.order import ExampleOrder

        order = ExampleOrder.read(t.order_file, len(rows["train"]))
    micro = cfg.train.batch_size  # train streams hold whole steps; the step splits them
    splits = {split: model_module.batches(
        cfg, r, batch_size=micro if split == "train" else cfg.train.eval_batch_size,
        shuffle=split == "train", order=order if split == "train" else None)
        for split, r in rows.items()}
    info = {"examples": {k: len(v) for k, v in rows.items()}, "dataset": t.dataset,
            "test_dataset": t.get("test_dataset") or t.dataset}
    return Task(cfg, kind, model_module, model, base, method, saved, splits, t.metric,
                num_classes, info)


def _quiet_tfds() -> None:
    try:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    except ImportError:
        pass
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


__all__ = ["Task", "UsageError", "abstract_params", "build_method", "build_task", "check_config",
           "check_dataset", "check_method", "examples", "num_classes_of", "subset_indices"]

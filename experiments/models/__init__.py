"""Models by name: ``experiments/models/<name>.py``, each with the same small interface.

``get(name)`` imports ``experiments.models.<name>`` and checks that it exposes:

* ``KIND``: the task kind it serves, a module of ``experiments/tasks`` (``"classification"``,
  ``"causal_lm"``); ``DATA``: the examples it reads (``"text"``, ``"image"``, ``"math"``);
* ``HEAD``: the modules it trains in full by default (a new head; ``()`` for none);
* ``abstract(cfg, num_classes) -> (model, params)``: the params as ``jax.ShapeDtypeStruct``s,
  no weights read (for parameter counts);
* ``load(cfg, num_classes) -> (model, params)``: the real weights, a new head drawn from
  ``fold_in(key(cfg.seed), 0)``;
* ``batches(cfg, examples, *, batch_size, shuffle) -> stream``: the examples as batches
  (``experiments.data.batches``), and ``INPUTS``, the batch keys the model reads;
* ``logits(model, params, batch, rng=None) -> float32 logits`` (dropout when ``rng`` is given).

Causal LMs add ``tokenizer()`` and ``generate(model, params, prompts, max_new_tokens,
batch_size) -> texts`` (greedy; ``prompts`` are token ids). The modules here: ``minilm``
(``bert`` is its architecture), ``smollm2`` (``llama``), ``vit`` (the project's own ViT);
``names`` maps checkpoint names to flax paths.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INTERFACE = ("KIND", "DATA", "HEAD", "INPUTS", "abstract", "load", "batches", "logits")


class UnknownModelError(ValueError):
    """A model name with no module of the interface; the message lists the models there are."""


def available() -> tuple[str, ...]:
    """The model names there are (modules of this package that expose the interface)."""
    import pkgutil

    names = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in INTERFACE):
            names.append(info.name)
    return tuple(sorted(names))


def get(name: str) -> ModuleType:
    """The model module ``experiments.models.<name>``; ``UnknownModelError`` names the choices."""
    if not isinstance(name, str) or not name.isidentifier():
        raise UnknownModelError(f"unknown model {name!r}; set --config.model.name to one of "
                                f"{', '.join(available())}")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        module = None
    if module is None or not all(hasattr(module, attr) for attr in INTERFACE):
        raise UnknownModelError(f"unknown model {name!r}; set --config.model.name to one of "
                                f"{', '.join(available())}")
    return module

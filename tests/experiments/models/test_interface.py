"""experiments/models/__init__.py: ``models.get(name)`` finds a model module by name, each model
module exposes the one interface the trainer uses, and an unknown name lists the models."""

from __future__ import annotations

import inspect
import sys
import types

import pytest

from experiments import models, tasks
from experiments.models import UnknownModelError

MODELS = ("minilm", "smollm2", "vit")
FUNCTIONS = {"abstract": ("cfg", "num_classes"), "load": ("cfg", "num_classes"),
             "batches": ("cfg", "examples", "batch_size", "shuffle", "order"),
             "logits": ("model", "params", "batch", "rng")}


def test_available_lists_the_model_modules_and_not_the_architectures():
    assert models.available() == MODELS  # bert, llama, names, deps: no interface


@pytest.mark.parametrize("name", MODELS)
def test_get_finds_each_model_module_by_name(name):
    module = models.get(name)
    assert module is sys.modules[f"experiments.models.{name}"]
    for attr in models.INTERFACE:
        assert hasattr(module, attr), f"{name} lacks {attr}"
    for function, params in FUNCTIONS.items():
        assert tuple(inspect.signature(getattr(module, function)).parameters) == params, (name, function)
    assert module.DATA in ("text", "image", "math")
    assert isinstance(module.HEAD, tuple) and isinstance(module.INPUTS, tuple) and module.INPUTS
    kind = tasks.kind_of(module)  # the task kind is a module of experiments/tasks
    assert kind.__name__ == f"experiments.tasks.{module.KIND}"
    for attr in ("TARGETS", "METRICS", "loss_terms", "eval_outputs", "summarize"):
        assert hasattr(kind, attr), f"{kind.__name__} lacks {attr}"
    if module.KIND == "causal_lm":  # generation: a tokenizer and greedy decoding
        assert callable(module.tokenizer) and callable(module.generate)


@pytest.mark.parametrize("name", ["bert", "llama", "names", "deps", "no_such_model", "../vit", "", 3])
def test_an_unknown_name_lists_the_models(name):
    with pytest.raises(UnknownModelError, match=r"set --config.model.name to one of minilm, smollm2, vit"):
        models.get(name)
    assert issubclass(UnknownModelError, ValueError)


def test_a_module_without_the_interface_is_not_a_model(monkeypatch):
    half = types.ModuleType("experiments.models.half")
    half.KIND, half.DATA = "classification", "text"
    monkeypatch.setitem(sys.modules, "experiments.models.half", half)
    with pytest.raises(UnknownModelError, match="unknown model 'half'"):
        models.get("half")


def test_an_import_error_inside_a_model_module_is_not_hidden(monkeypatch):
    """A model module that fails to import its own dependency is that error, not "unknown model"."""
    real = models.importlib.import_module

    def import_module(name, *args):
        if name == "experiments.models.minilm":
            raise ModuleNotFoundError("No module named 'flax'", name="flax")
        return real(name, *args)

    monkeypatch.setattr(models.importlib, "import_module", import_module)
    with pytest.raises(ModuleNotFoundError, match="flax"):
        models.get("minilm")


def test_the_config_check_names_the_models():
    from experiments.config import load_config

    cfg = load_config("configs/minilm.py", ["--config.model.name=resnet"])
    with pytest.raises(tasks.UsageError, match="unknown model 'resnet'; set --config.model.name to one of "
                                               "minilm, smollm2, vit"):
        tasks.check_config(cfg)

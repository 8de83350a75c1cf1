"""gpart-jax: GPart (isometric fine-tuning by global parameter partitioning) for JAX and Flax.

``w = w0 + P theta`` with ``(P theta)_i = theta_{g(i)} / sqrt(n_{g(i)})``: a seed assigns every
adapted weight to one of ``d`` groups, and ``theta`` (length ``d``) is all that trains.

Every method, GPart and the baselines (``gpart_jax.methods``), is two pure functions:
``trainable = method.init(key)`` and ``params = method.apply(trainable, base_params)``. Modules
trained in full (a new head) travel as ``saved = {path: leaf}`` in every entry point.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names are loaded on first use (PEP 562), so that the jax-free modules (``gpart_jax.files``,
# ``gpart_jax.errors``) can be imported without jax: the experiments' workdir rules and suite
# runner use them in processes that never compute.
_EXPORTS = {
    "gpart_jax.adapters": ("Adapter", "load_adapter", "read_manifest", "save_adapter"),
    "gpart_jax.arithmetic": ("combine", "cosine", "distance", "inner", "norm", "project"),
    "gpart_jax.core": ("GPart",),
    "gpart_jax.errors": ("AdapterCorruptError", "AdapterError", "AdapterLockedError",
                         "IncompatibleAdaptersError", "InteropError", "LayoutMismatchError",
                         "TargetError"),
    "gpart_jax.filters": ("All", "AllLinear", "Any", "Layers", "Not", "select"),
    "gpart_jax.hashing": ("balanced_group_ids", "balanced_group_sizes", "group_ids"),
    "gpart_jax.layout": ("LayoutEntry",),
    "gpart_jax.merging": ("merge", "unmerge"),
    "gpart_jax.method": ("Method", "Summary"),
    "gpart_jax.optim": ("linear_warmup_decay", "make_optimizer"),
    "gpart_jax.saved": ("full_params", "join", "saved_modules"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        module = importlib.import_module(_MODULE_OF[name])
        for exported in _EXPORTS[_MODULE_OF[name]]:  # once: later lookups are ordinary
            globals()[exported] = getattr(module, exported)
        return globals()[name]
    try:  # a submodule (gpart_jax.files, gpart_jax.methods, ...) not imported yet
        return importlib.import_module(f"gpart_jax.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"gpart_jax.{name}":
            raise
    raise AttributeError(f"module 'gpart_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from gpart_jax import filters, interop, layout, methods, parallel
    from gpart_jax.adapters import Adapter, load_adapter, read_manifest, save_adapter
    from gpart_jax.arithmetic import combine, cosine, distance, inner, norm, project
    from gpart_jax.core import GPart
    from gpart_jax.errors import (
        AdapterCorruptError,
        AdapterError,
        AdapterLockedError,
        IncompatibleAdaptersError,
        InteropError,
        LayoutMismatchError,
        TargetError,
    )
    from gpart_jax.filters import All, AllLinear, Any, Layers, Not, select
    from gpart_jax.hashing import balanced_group_ids, balanced_group_sizes, group_ids
    from gpart_jax.layout import LayoutEntry
    from gpart_jax.merging import merge, unmerge
    from gpart_jax.method import Method, Summary
    from gpart_jax.optim import linear_warmup_decay, make_optimizer
    from gpart_jax.saved import full_params, join, saved_modules

__version__ = "0.2.0"

__all__ = [
    "Adapter", "AdapterCorruptError", "AdapterError", "AdapterLockedError", "All", "AllLinear",
    "Any", "GPart", "IncompatibleAdaptersError", "InteropError", "LayoutEntry",
    "LayoutMismatchError", "Layers", "Method", "Not", "Summary", "TargetError",
    "balanced_group_ids", "balanced_group_sizes", "combine", "cosine", "distance", "filters",
    "full_params", "group_ids", "inner", "interop", "join", "layout", "linear_warmup_decay",
    "load_adapter", "make_optimizer", "merge", "methods", "norm", "parallel", "project", "read_manifest",
    "save_adapter", "saved_modules", "select", "unmerge", "__version__",
]

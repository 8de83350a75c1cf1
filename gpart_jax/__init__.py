"""gpart-jax: GPart (isometric fine-tuning by global parameter partitioning) for JAX and Flax.

``w = w0 + P theta`` with ``(P theta)_i = theta_{g(i)} / sqrt(n_{g(i)})``: a seed assigns every
adapted weight to one of ``d`` groups, and ``theta`` (length ``d``) is all that trains.

Every method, GPart and the baselines (``gpart_jax.methods``), is two pure functions:
``trainable = method.init(key)`` and ``params = method.apply(trainable, base_params)``. Modules
trained in full (a new head) travel as ``saved = {path: leaf}`` in every entry point.
"""

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
from gpart_jax.merge import merge, unmerge
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

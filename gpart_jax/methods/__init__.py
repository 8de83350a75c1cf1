"""Fine-tuning methods behind one protocol (``Method``): GPart and its baselines.

    method  = build("lora", base_params, r=8, targets=("query/kernel", "value/kernel"))
    adapter = method.init(key)
    params  = method.apply(adapter, base_params)      # pure; differentiate w.r.t. adapter

Names: ``"gpart"``, ``"gpart-noniso"`` (``isometric=False``), ``"lora"``, ``"unilora"``,
``"vera"``, ``"full"``, ``"head-only"``, ``"fastfood"``. Each module's docstring states its math.
"""

from __future__ import annotations

import inspect
from typing import Any

from gpart_jax.core import GPart
from gpart_jax.methods.base import Method, add_deltas, targeted_leaves, tree_nbytes, tree_size
from gpart_jax.methods.budget import count, d_for_lora_rank, format_counts, lora_params, lora_rank_for_d
from gpart_jax.methods.fastfood import Fastfood, fwht
from gpart_jax.methods.full import Full, HeadOnly
from gpart_jax.methods.gpart import GPartMethod
from gpart_jax.methods.lora import LoRA
from gpart_jax.methods.unilora import UniLoRA
from gpart_jax.methods.vera import VeRA

_FACTORIES = {
    "gpart": (GPartMethod.create, {}),
    "gpart-noniso": (GPartMethod.create, {"isometric": False}),
    "lora": (LoRA.create, {}),
    "unilora": (UniLoRA.create, {}),
    "vera": (VeRA.create, {}),
    "full": (Full.create, {}),
    "head-only": (HeadOnly.create, {}),
    "fastfood": (Fastfood.create, {}),
}
METHODS = tuple(_FACTORIES)

# Options a config may pass to every method; a method that has no use for one ignores it.
COMMON_OPTIONS = ("targets", "seed", "exclude", "layers", "layer_pattern", "adapted_dtype")


def _accepted(factory) -> set[str]:
    names = set()
    for fn in (factory, GPart.create) if factory == GPartMethod.create else (factory,):
        names |= {p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return names


def build(name: str, base_params: Any, **options) -> Method:
    """Build method ``name`` over ``base_params`` (arrays or ``jax.ShapeDtypeStruct``s).

    ``options`` go to the method's ``create`` (``d``, ``r``, ``seed``, ``targets``, ...). The
    common options ``targets``, ``seed``, ``exclude``, ``layers``, ``layer_pattern`` and
    ``adapted_dtype`` are dropped for methods that do not take them (``head-only`` takes none;
    ``full`` and ``lora`` no seed); any other unknown option is an error.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    factory, fixed = _FACTORIES[name]
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise TypeError(f"method {name!r} fixes {clash}; use the other method name instead")
    accepted = _accepted(factory)
    unknown = sorted(k for k in options if k not in accepted and k not in COMMON_OPTIONS)
    if unknown:
        raise TypeError(f"method {name!r} does not take option(s) {unknown}; it takes "
                        f"{sorted(accepted - set(fixed))}")
    options = {k: v for k, v in options.items() if k in accepted}
    return factory(base_params, **fixed, **options)


__all__ = [
    "COMMON_OPTIONS",
    "METHODS",
    "Fastfood",
    "Full",
    "GPartMethod",
    "HeadOnly",
    "LoRA",
    "Method",
    "UniLoRA",
    "VeRA",
    "add_deltas",
    "build",
    "count",
    "d_for_lora_rank",
    "format_counts",
    "fwht",
    "lora_params",
    "lora_rank_for_d",
    "targeted_leaves",
    "tree_nbytes",
    "tree_size",
]

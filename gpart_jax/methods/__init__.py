"""GPart and its baselines behind one protocol (``gpart_jax.Method``).

    method    = build("lora", base_params, r=8, targets=("query", "value"))
    trainable = method.init(key)
    params    = method.apply(trainable, base_params)   # pure; differentiate w.r.t. trainable

Names: ``"gpart"``, ``"gpart-noniso"`` (``isometric=False``), ``"lora"``, ``"unilora"``,
``"vera"``, ``"full"``, ``"head-only"``, ``"fastfood"``. Each module's docstring states its math.
``from_spec(spec, base_params)`` rebuilds any method from the JSON its ``spec()`` wrote (what an
adapter file stores).
"""

from __future__ import annotations

import inspect
from typing import Any

from gpart_jax.core import GPart
from gpart_jax.errors import LayoutMismatchError
from gpart_jax.layout import LayoutEntry, check_params
from gpart_jax.method import Method
from gpart_jax.methods.budget import count, d_for_lora_rank, lora_params, lora_rank_for_d
from gpart_jax.methods.fastfood import Fastfood, fwht
from gpart_jax.methods.full import Full, HeadOnly
from gpart_jax.methods.lora import LoRA
from gpart_jax.methods.unilora import UniLoRA
from gpart_jax.methods.vera import VeRA
from gpart_jax.paths import leaves_with_paths

_FACTORIES = {
    "gpart": (GPart.create, {}),
    "gpart-noniso": (GPart.create, {"isometric": False}),
    "lora": (LoRA.create, {}),
    "unilora": (UniLoRA.create, {}),
    "vera": (VeRA.create, {}),
    "full": (Full.create, {}),
    "head-only": (HeadOnly.create, {}),
    "fastfood": (Fastfood.create, {}),
}
METHODS = tuple(_FACTORIES)

# Options a config may pass to every method; a method that has no use for one ignores it.
COMMON_OPTIONS = ("targets", "seed", "adapted_dtype")


def options_of(name: str) -> tuple[str, ...]:
    """The keyword options method ``name``'s ``create`` takes (less those its name fixes)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    factory, fixed = _FACTORIES[name]
    return tuple(p.name for p in inspect.signature(factory).parameters.values()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in fixed)


def build(name: str, base_params: Any, **options) -> Method:
    """Build method ``name`` over ``base_params`` (arrays or ``jax.ShapeDtypeStruct``s).

    ``options`` go to the method's ``create`` (``d``, ``r``, ``seed``, ``targets``, ...). The
    common options ``targets``, ``seed`` and ``adapted_dtype`` are dropped for methods that do
    not take them (``head-only`` takes none; ``full`` and ``lora`` no seed); any other unknown
    option is a ``TypeError`` that lists the method's options.
    """
    accepted = options_of(name)
    factory, fixed = _FACTORIES[name]
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise TypeError(f"method {name!r} fixes {clash}; use the other method name instead")
    unknown = sorted(k for k in options if k not in accepted and k not in COMMON_OPTIONS)
    if unknown:
        raise TypeError(f"method {name!r} does not take option(s) {unknown}; it takes "
                        f"{', '.join(accepted) or 'none'}")
    options = {k: v for k, v in options.items() if k in accepted}
    return factory(base_params, **fixed, **options)


def from_spec(spec: dict, base_params: Any) -> Method:
    """The method a ``spec()`` describes, rebuilt on ``base_params`` (its adapted leaves must be
    there with the recorded shapes, else ``LayoutMismatchError``)."""
    name = spec.get("method")
    if name in ("gpart", "gpart-noniso"):
        return GPart.from_spec(spec, base_params)
    if name not in _FACTORIES:
        raise ValueError(f"unknown method {name!r} in the spec; this gpart-jax knows "
                         f"{', '.join(METHODS)}")
    if name == "head-only":
        return HeadOnly()
    options = {k: v for k, v in spec.items() if k in options_of(name)}
    if "seed" in options:
        options["seed"] = int(options["seed"])
    wanted = tuple((str(p), tuple(int(n) for n in s)) for p, s in spec["adapted"])
    check_params([LayoutEntry(p, s) for p, s in wanted], leaves_with_paths(base_params)[0],
                 f"the {name} adapter's recorded leaves")
    paths = frozenset(p for p, _ in wanted)
    options["targets"] = lambda path, leaf: path in paths
    method = build(name, base_params, **options)
    if method.adapted != wanted:  # another natural order cannot happen for the same paths
        raise LayoutMismatchError(f"the base gives {name} the leaves {method.adapted[:2]}..., the "
                                  f"spec records {wanted[:2]}...")
    if name == "unilora" and method.gpart.fingerprint != spec["fingerprint"]:
        raise LayoutMismatchError("the rebuilt Uni-LoRA partition differs from the recorded one "
                                  "(fingerprint): the spec was edited or the base differs")
    return method


__all__ = [
    "COMMON_OPTIONS", "METHODS", "Fastfood", "Full", "GPart", "HeadOnly", "LoRA", "Method",
    "UniLoRA", "VeRA", "build", "count", "d_for_lora_rank", "from_spec", "fwht", "lora_params",
    "lora_rank_for_d", "options_of",
]

"""The reference's partition of a base: which modules, in which order, numbered how.

``plan_modules(config, shapes)`` selects the modules a reference adapter targets
(``gpart_jax.interop.matching``), orders them as the reference does (torch's
``named_modules()`` order: ``gpart_jax.interop.architectures`` for the known families, else an
explicit order) and builds the library's ``GPart`` over shape-only stand-ins of their weights:
``<module path>/kernel`` of the stored ``(out, in)`` shape, enumerated row-major, which *is* the
reference's numbering, with each module's bias right after its weight when the adapter adapts
biases. Its ``deltas(theta)`` are then the reference's weight updates.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpart_jax import layout
from gpart_jax.core import GPart
from gpart_jax.errors import InteropError
from gpart_jax.interop.architectures import (
    ARCHITECTURES,
    definition_key,
    detect_architecture,
    is_embedding,
)
from gpart_jax.interop.config import DEFAULT_LAYERS, GPartConfig, ModuleOrder
from gpart_jax.interop.matching import peft_layer_index, targeted
from gpart_jax.interop.reference import RecordedModule, ReferenceAdapter
from gpart_jax.paths import leaves_with_paths


def _no_match(config: GPartConfig, candidates: list[str], prefix: str) -> str:
    """Why ``config`` selects no module, naming what the base has."""
    shown = ", ".join(candidates[:6]) + (", ..." if len(candidates) > 6 else "")
    wanted = config.layers_to_transform
    if wanted is not None and not isinstance(config.target_modules, str):
        anywhere = targeted(dataclasses.replace(config, layers_to_transform=None,
                                                source=config.source),
                            [prefix + m for m in candidates])
        layers = sorted({i for m in anywhere if (i := peft_layer_index(m, config.layers_pattern))
                         is not None})
        if anywhere:
            return (f"layers_to_transform {wanted!r} selects none of the base's layers: the "
                    f"targeted modules are in layers {layers[0]}..{layers[-1]}" if layers else
                    f"layers_to_transform {wanted!r}: the targeted modules have no layer index "
                    f"(layers_pattern {config.layers_pattern!r})")
    hint = (f"; a regex target sees the names with the prefix {prefix!r} prepended: pass "
            f"prefix= (e.g. 'bert.') when the checkpoint lacks PEFT's base-model prefix"
            if isinstance(config.target_modules, str) else "")
    return (f"target_modules {config.target_modules!r} matched no module of the base "
            f"(modules: {shown}){hint}")


def _order_modules(targeted: list[str], module_order: ModuleOrder, candidates: list[str],
                   prefix: str) -> list[str]:
    """Targeted module names (no prefix) in the reference's global order."""
    if isinstance(module_order, str):
        if module_order == "insertion":
            return list(targeted)  # already in the state dict's insertion order
        if module_order == "auto":
            arch = detect_architecture(candidates)
            if arch is None:
                if len(targeted) == 1:
                    return list(targeted)
                raise InteropError(
                    f"cannot tell the reference's module order for {targeted[:3]}...: the "
                    f"architecture is not one of {sorted(ARCHITECTURES)}. Pass module_order= the "
                    f"module names in the model's named_modules() order (or an architecture name), "
                    f"or module_order='insertion' if the state dict came from torch's "
                    f"model.state_dict() (a safetensors file's key order is sorted, not the "
                    f"module order)")
        elif module_order in ARCHITECTURES:
            arch = ARCHITECTURES[module_order]
        else:
            raise InteropError(f"module_order must be 'auto', 'insertion', one of "
                               f"{sorted(ARCHITECTURES)} or a sequence of module names, got "
                               f"{module_order!r}")
        keys = {m: definition_key(arch, m) for m in targeted}
        unplaced = [m for m, k in keys.items() if k is None]
        if unplaced:
            raise InteropError(f"modules {unplaced[:5]} have no place in the {arch.name} definition "
                               f"order this project knows; pass module_order= the module names in "
                               f"the model's named_modules() order")
        if len(set(keys.values())) != len(keys):
            raise InteropError(f"several targeted modules share one place in the {arch.name} "
                               f"definition order (two block stacks?); pass module_order= explicitly")
        return sorted(targeted, key=keys.__getitem__)
    names = [n[len(prefix):] if prefix and n.startswith(prefix) else n for n in module_order]
    position = {}
    for i, n in enumerate(names):
        position.setdefault(n, i)
    missing = [m for m in targeted if m not in position]
    if missing:
        raise InteropError(f"module_order does not list the targeted modules {missing[:5]}; it must "
                           f"list every targeted module (extra names are ignored)")
    return sorted(targeted, key=position.__getitem__)


def _core_layer_pattern(layers_pattern: str | Sequence[str] | None) -> str:
    """The reference's block rule as a ``gpart_jax.layout`` pattern over ``/``-joined paths."""
    names = (DEFAULT_LAYERS if not layers_pattern else
             (layers_pattern,) if isinstance(layers_pattern, str) else tuple(layers_pattern))
    return r"(?:" + "|".join(names) + r")/(\d+)"


def module_path(module: str) -> str:
    return module.replace(".", "/")


def param_name(path: str) -> str:
    """``a/b/query/kernel`` -> ``a.b.query.weight``; ``a/b/query/bias`` -> ``a.b.query.bias``."""
    parent, _, leaf = path.rpartition("/")
    return parent.replace("/", ".") + (".weight" if leaf == "kernel" else "." + leaf)


@dataclasses.dataclass(frozen=True, eq=False)
class ReferencePlan:
    """The reference's partition of one base: targeted modules in global order and their GPart.

    Attributes:
      config: the adapter's config.
      modules: targeted module names as the state dict names them (without ``prefix``), in the
        reference's global order.
      weight_shapes: each module's stored weight shape (``(out, in)``; ``(in, out)`` with
        ``fan_in_fan_out``).
      bias_shapes: each module's bias shape where the bias is adapted, else ``None``.
      prefix: what PEFT's base model prepends to the state dict's names (``"bert."``).
      gpart: a ``GPart`` over shape-only stand-ins of the weights (``<module path>/kernel`` of the
        stored shape, ``element_order="native"``, biases as ``.../bias``): its ``layout``,
        ``blocks``, ``group_sizes``, ``scales`` and ``deltas(theta)`` are the reference's.
    """

    config: GPartConfig
    modules: tuple[str, ...]
    weight_shapes: tuple[tuple[int, ...], ...]
    bias_shapes: tuple[tuple[int, ...] | None, ...]
    prefix: str
    gpart: GPart

    def recorded(self) -> tuple[RecordedModule, ...]:
        """``(PEFT module name, weight shape, bias shape)`` per module, as export records them."""
        return tuple((self.prefix + m, w, b) for m, w, b in
                     zip(self.modules, self.weight_shapes, self.bias_shapes, strict=True))

    def param_names(self) -> list[str]:
        """State-dict parameter name of each layout entry, in global order."""
        return [param_name(e.path) for e in self.gpart.layout]


def plan_modules(config: GPartConfig, shapes: Mapping[str, Sequence[int]], *,
                 module_order: ModuleOrder = "auto", prefix: str = "") -> ReferencePlan:
    """Select, order and partition the targeted modules of a base given by parameter shapes.

    Args:
      config: the adapter's config.
      shapes: parameter name -> shape, named as the state dict names them; a *module* is a name
        ``M`` with a 2-D ``M.weight`` (the Linear assumption). Its insertion order is used only
        with ``module_order="insertion"``.
      module_order: ``"auto"`` (detect a known architecture from the names), an architecture
        name (``"bert"``, ``"roberta"``, ``"llama"``, ``"vit"``), ``"insertion"`` (the order of
        ``shapes``, right when it came from torch's ``state_dict()``), or a sequence of module
        names in ``named_modules()`` order (extra names are ignored).
      prefix: prepended to each name to get PEFT's name (``"bert."`` for a ``BertModel``
        checkpoint adapted as ``BertForSequenceClassification``); regex targets see it.
    """
    shapes = {str(k): tuple(int(s) for s in v) for k, v in shapes.items()}
    weights = {k[:-len(".weight")]: s for k, s in shapes.items() if k.endswith(".weight")}
    candidates = list(weights)
    peft_names = [prefix + m for m in candidates]
    chosen = set(targeted(config, peft_names))
    targeted_modules = [m for m in candidates if prefix + m in chosen]
    if not targeted_modules:
        raise InteropError(_no_match(config, candidates, prefix))
    wanted = config.layers_to_transform
    if wanted is not None and not isinstance(config.target_modules, str):
        layers = {peft_layer_index(prefix + m, config.layers_pattern) for m in targeted_modules}
        absent = sorted(({wanted} if isinstance(wanted, int) else set(wanted)) - layers)
        if absent:
            raise InteropError(f"layers_to_transform lists layers {absent} that this base does not "
                               f"have (its targeted modules are in layers {sorted(layers)}): the "
                               f"adapter was made for a deeper model")
    not_linear = [f"{m} ({weights[m]})" for m in targeted_modules if len(weights[m]) != 2]
    if not_linear:
        raise InteropError(f"targeted modules {not_linear[:5]} have weights that are not 2-D: only "
                           f"Linear (or Conv1D) modules can be adapted")
    arch = detect_architecture(candidates)
    if arch is not None:
        emb = [m for m in targeted_modules if is_embedding(arch, m)]
        if emb:
            raise InteropError(f"targeted modules {emb[:5]} are embedding tables, not Linear modules; "
                               f"GPart adapts Linear layers only")
    ordered = _order_modules(targeted_modules, module_order, candidates, prefix)

    with_bias = config.bias != "none"
    fifo = config.fan_in_fan_out
    tree: dict = {}
    bias_shapes = []
    for m in ordered:
        ws = weights[m]
        bs = shapes.get(m + ".bias") if with_bias else None
        if bs is not None:
            out = ws[1] if fifo else ws[0]
            if bs != (out,):
                raise InteropError(
                    f"{m}.bias has shape {bs}, but a weight stored {ws} with fan_in_fan_out="
                    f"{fifo} has {out} outputs: check fan_in_fan_out (true only for weights "
                    f"stored (in, out), like GPT-2's Conv1D)")
        node = tree
        for c in m.split("."):
            node = node.setdefault(c, {})
            if not isinstance(node, dict):
                raise InteropError(f"module name {m} collides with a parameter name")
        node["kernel"] = jax.ShapeDtypeStruct(ws, jnp.float32)
        if bs is not None:
            node["bias"] = jax.ShapeDtypeStruct(bs, jnp.float32)
        bias_shapes.append(bs)
    paths = [module_path(m) + "/kernel" for m in ordered]
    try:
        entries = layout.from_paths(leaves_with_paths(tree)[0], paths, order=paths,
                               element_order="native", bias=with_bias)
        with warnings.catch_warnings():  # empty groups are the reference's too
            warnings.simplefilter("ignore")
            gp = GPart.from_layout(entries, d=config.d, seed=config.seed, scheme="stateless",
                                   isometric=config.isometric, scope=config.partition_scope,
                                   layer_pattern=_core_layer_pattern(config.layers_pattern))
    except ValueError as e:
        raise InteropError(f"the adapter (d = {config.d}, partition_scope = "
                           f"{config.partition_scope!r}) does not fit this base's "
                           f"{len(ordered)} targeted modules: {e}") from None
    return ReferencePlan(config, tuple(ordered), tuple(weights[m] for m in ordered),
                         tuple(bias_shapes), prefix, gp)


def check_recorded(adapter: ReferenceAdapter, plan: ReferencePlan) -> None:
    """Refuse a base whose targeted modules differ from those an exported adapter recorded."""
    if adapter.modules is None:
        return
    have = {n: (w, b) for n, w, b in plan.recorded()}
    want = {n: (w, b) for n, w, b in adapter.modules}
    for name, (w, b) in want.items():
        if name not in have:
            raise InteropError(f"the adapter was trained with module {name}, which this base does not "
                               f"have (or the adapter's targets do not select it here)")
        if have[name] != (w, b):
            raise InteropError(f"the adapter was trained on a base whose {name} has weight shape {w} "
                               f"and bias shape {b}; this base has {have[name][0]} and "
                               f"{have[name][1]}: the adapter does not belong to this base")
    extra = [n for n in have if n not in want]
    if extra or [n for n, _, _ in adapter.modules] != [n for n, _, _ in plan.recorded()]:
        raise InteropError(f"the adapter was trained on modules {list(want)[:4]}... in another order "
                           f"or set than this base gives ({list(have)[:4]}..., extra {extra[:3]}); "
                           f"check module_order and prefix")


def saved_for_base(adapter: ReferenceAdapter, shapes: Mapping[str, tuple[int, ...]],
                    prefix: str) -> dict[str, np.ndarray]:
    """The saved modules renamed as the base names them, their shapes checked against it."""
    out = {}
    for name, value in adapter.saved.items():
        key = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if key in shapes and tuple(shapes[key]) != tuple(value.shape):
            raise InteropError(f"the adapter's saved tensor {name} has shape {tuple(value.shape)}, "
                               f"but the base's {key} has shape {tuple(shapes[key])}: the adapter was "
                               f"trained on another base (or another head size)")
        out[key] = value
    return out


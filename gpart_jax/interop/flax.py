"""The seam between the reference's torch names and a flax parameter pytree.

``plan_flax(adapter_or_config, params, name_map)`` maps a reference adapter onto flax params
(``name_map``: PEFT parameter name -> flax path): ``plan.create_gpart(params)`` is the
reference's partition over the flax kernels (numbered as the PyTorch weights), ``plan.theta``
its theta and ``plan.saved`` its saved modules in flax layout. ``check_reference_layout`` says
whether a GPart over flax params is the reference's partition (what export needs).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from gpart_jax import layout
from gpart_jax.core import GPart
from gpart_jax.errors import InteropError
from gpart_jax.interop.config import GPartConfig, ModuleOrder, NameMap
from gpart_jax.interop.plan import ReferencePlan, check_recorded, param_name, plan_modules
from gpart_jax.interop.reference import ReferenceAdapter, as_reference_adapter
from gpart_jax.paths import leaf_name, leaves_with_paths


def torch_shape(torch_name: str, flax_path: str, shape: tuple[int, ...], fifo: bool) -> tuple[int, ...]:
    """The torch shape of a flax leaf: a 2-D ``kernel`` (in, out) is a Linear weight (out, in)."""
    if (torch_name.endswith(".weight") and leaf_name(flax_path) == "kernel" and len(shape) == 2
            and not fifo):
        return (shape[1], shape[0])
    return tuple(shape)


def invert_name_map(name_map: NameMap) -> dict[str, str]:
    inverse: dict[str, str] = {}
    for torch_name, flax_path in name_map.items():
        if flax_path in inverse:
            raise InteropError(f"name_map maps both {inverse[flax_path]} and {torch_name} to "
                               f"{flax_path}; it must be one-to-one")
        inverse[flax_path] = torch_name
    return inverse


def _block_of(path: str, blocks) -> int:
    for k, b in enumerate(blocks):
        if b.prefix == "" or path.startswith(b.prefix + "/"):
            return k
    return -1


def check_reference_layout(gpart: GPart, reference: ReferencePlan, name_map: NameMap,
                           fix: str = "") -> None:
    """Raise unless ``gpart`` (over flax params) is the reference's partition under ``name_map``.

    Checks: stateless scheme; same d, seed, isometric, scope; position by position the same
    global order (the flax leaf of each layout entry maps to the reference's parameter there),
    sizes, biases, and element orders (``"torch"`` for kernels, ``"native"`` with
    ``fan_in_fan_out``); the same blocks (d, seed, theta offset, positions, members); the same
    group sizes. Equal plans give equal ids, hence bit-identical deltas.
    """
    to_torch = invert_name_map(name_map)
    ref = reference.gpart
    fifo = reference.config.fan_in_fan_out
    problems = []
    if gpart.scheme != "stateless":
        problems.append(f"scheme={gpart.scheme!r} is this project's own partition; the reference "
                        f"has only the stateless SplitMix64 ids (scheme='stateless')")
    for attr in ("d", "seed", "isometric", "scope"):
        if getattr(gpart, attr) != getattr(ref, attr):
            problems.append(f"{attr} = {getattr(gpart, attr)!r}, the reference's is {getattr(ref, attr)!r}")
    if len(gpart.layout) != len(ref.layout):
        problems.append(f"{len(gpart.layout)} adapted leaves, the reference adapts "
                        f"{len(ref.layout)} parameters ({reference.param_names()[:4]}...)")
    for i, (a, b) in enumerate(zip(gpart.layout, ref.layout, strict=False)):
        want, got = param_name(b.path), to_torch.get(a.path)
        if got != want:
            problems.append(f"global position {i} holds {a.path} (torch name {got}); the reference "
                            f"has {want} there")
            break
        if a.is_bias != b.is_bias or a.size != b.size:
            problems.append(f"{a.path}: size {a.size} (bias {a.is_bias}), the reference's {want} has "
                            f"{b.size} (bias {b.is_bias})")
            break
        if not a.is_bias:
            order = "native" if fifo else "torch"
            shape = a.shape if fifo else a.shape[::-1]
            if a.element_order != order or shape != b.shape:
                problems.append(f"{a.path}: element_order {a.element_order!r} of shape {a.shape}; the "
                                f"reference's {want} {b.shape} needs element_order={order!r}")
                break
    if not problems:
        blocks = [(b.d, b.seed, b.theta_offset, b.num_positions) for b in gpart.blocks]
        ref_blocks = [(b.d, b.seed, b.theta_offset, b.num_positions) for b in ref.blocks]
        members = [_block_of(e.path, gpart.blocks) for e in gpart.layout]
        ref_members = [_block_of(e.path, ref.blocks) for e in ref.layout]
        if blocks != ref_blocks or members != ref_members:
            problems.append(f"blocks (d, seed, theta offset, positions) {blocks[:3]}... with members "
                            f"{members[:6]}...; the reference's are {ref_blocks[:3]}... with "
                            f"{ref_members[:6]}... (pass layer_pattern= matching the flax block names)")
        elif not np.array_equal(gpart.group_sizes, ref.group_sizes):
            problems.append("group sizes differ from the reference's")
    if problems:
        raise InteropError("the GPart is not the reference's partition: " + "; ".join(problems)
                           + (f". {fix}" if fix else ""))


@dataclasses.dataclass(frozen=True, eq=False)
class FlaxPlan:
    """A reference adapter (or config) mapped onto a flax parameter pytree.

    Attributes:
      config: the adapter's config.
      element_order: how the flax kernels are numbered: ``"torch"`` (as the PyTorch weight
        ``(out, in)``), or ``"native"`` with ``fan_in_fan_out``.
      layer_pattern: the flax block names' pattern, for ``partition_scope="transformer_block"``.
      theta: the adapter's theta (float32 numpy), or ``None`` when planned from a config.
      saved: the saved modules' tensors by flax path, in flax layout (Linear weights
        transposed to ``(in, out)`` kernels).
      modules: torch module names in global order; ``order``: their flax kernel paths.
      reference: the reference's plan over the torch names.
      name_map: PEFT parameter name -> flax path.
    """

    config: GPartConfig
    element_order: str
    layer_pattern: str | None
    theta: np.ndarray | None
    saved: dict[str, np.ndarray]
    modules: tuple[str, ...]
    order: tuple[str, ...]
    reference: ReferencePlan
    name_map: dict[str, str]

    def create_gpart(self, flax_params) -> GPart:
        """The reference's partition over the flax leaves: the layout in the reference's order
        (``gpart_jax.layout.build``), then ``GPart.from_layout``; checked against the plan."""
        c = self.config
        entries = layout.from_paths(leaves_with_paths(flax_params)[0], self.order, order=self.order,
                               element_order=self.element_order, bias=c.bias != "none")
        with warnings.catch_warnings():  # empty groups are the reference's too
            warnings.simplefilter("ignore")
            gp = GPart.from_layout(entries, d=c.d, seed=c.seed, scheme="stateless",
                                   isometric=c.isometric, scope=c.partition_scope,
                                   layer_pattern=self.layer_pattern)
        check_reference_layout(gp, self.reference, self.name_map)
        return gp


def plan_flax(source: GPartConfig | ReferenceAdapter | str | os.PathLike, flax_params,
              name_map: NameMap, *, module_order: ModuleOrder = "auto",
              layer_pattern: str | None = None) -> FlaxPlan:
    """Map a reference adapter (or a config, to train one) onto a flax parameter pytree.

    The seam for the project's flax models: ``plan = plan_flax(adapter_dir, params, name_map)``,
    then ``gp = plan.create_gpart(params)`` and ``gp.apply(jnp.asarray(plan.theta), params)``
    reproduces the reference's merged weights, with ``plan.saved`` joined in
    (``gpart_jax.join``).

    Args:
      source: an adapter directory, a loaded ``ReferenceAdapter``, or a ``GPartConfig`` (theta
        ``None``: plan a fresh, exportable GPart).
      flax_params: the flax parameter pytree (arrays or ``jax.ShapeDtypeStruct``).
      name_map: PEFT parameter name (``"bert.encoder.layer.0.attention.self.query.weight"``,
        ``"classifier.bias"``) -> flax leaf path (``"params/encoder/layer_0/query/kernel"``),
        one-to-one, covering at least the targeted modules' weights (and biases) and the saved
        modules. A torch ``<module>.weight`` targeted must map to a 2-D flax ``kernel`` stored
        ``(in, out)``; its bias to the ``bias`` next to that kernel. Its insertion order is the
        module order for ``module_order="insertion"``.
      module_order: as in ``plan_modules``.
      layer_pattern: ``GPart.from_layout``'s pattern for flax block names, with
        ``partition_scope="transformer_block"`` (default: the core's).
    """
    adapter = None if isinstance(source, GPartConfig) else as_reference_adapter(source)
    if adapter is None:
        config, theta, saved_torch = source, None, {}
    else:
        config, theta, saved_torch = adapter.config, adapter.theta, dict(adapter.saved)
    name_map = dict(name_map)
    invert_name_map(name_map)
    flat = dict(leaves_with_paths(flax_params)[0])
    fifo = config.fan_in_fan_out
    shapes = {}
    for torch_name, flax_path in name_map.items():
        if flax_path not in flat:
            raise InteropError(f"name_map maps {torch_name} to {flax_path}, which is not a leaf of "
                               f"flax_params (leaves: {list(flat)[:5]}...)")
        shapes[torch_name] = torch_shape(torch_name, flax_path,
                                          tuple(getattr(flat[flax_path], "shape", ())), fifo)
    ref = plan_modules(config, shapes, module_order=module_order, prefix="")
    if adapter is not None:
        check_recorded(adapter, ref)
    order = []
    for m, bs in zip(ref.modules, ref.bias_shapes, strict=True):
        kernel = name_map[m + ".weight"]
        if leaf_name(kernel) != "kernel" or len(flat[kernel].shape) != 2:
            raise InteropError(f"{m}.weight maps to {kernel} of shape {flat[kernel].shape}: a targeted "
                               f"Linear weight must map to a 2-D flax 'kernel' (in, out)")
        sibling = kernel[:-len("kernel")] + "bias"
        if bs is not None and name_map.get(m + ".bias") != sibling:
            raise InteropError(f"{m}.bias maps to {name_map.get(m + '.bias')}, but GPart adapts the "
                               f"bias next to the kernel, {sibling}")
        if config.bias != "none" and bs is None and sibling in flat:
            raise InteropError(f"flax_params has {sibling} but name_map has no {m}.bias: add it "
                               f"(bias={config.bias!r} adapts each targeted module's own bias)")
        order.append(kernel)
    saved = {}
    for name, value in saved_torch.items():
        flax_path = name_map.get(name)
        if flax_path is None:
            raise InteropError(f"the adapter's saved tensor {name} has no flax counterpart: add it to "
                               f"name_map")
        if name.endswith(".weight") and leaf_name(flax_path) == "kernel" and value.ndim == 2:
            value = np.ascontiguousarray(value.T)
        leaf_shape = tuple(getattr(flat[flax_path], "shape", ()))
        if tuple(value.shape) != leaf_shape:
            raise InteropError(f"the adapter's saved tensor {name} is {tuple(value.shape)} in flax "
                               f"layout, but {flax_path} has shape {leaf_shape}: the adapter was "
                               f"trained on another base (or another head size)")
        saved[flax_path] = value
    return FlaxPlan(config, "native" if fifo else "torch", layer_pattern, theta, saved, ref.modules,
                    tuple(order), ref, name_map)

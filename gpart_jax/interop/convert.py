"""Between the library's adapter files and the reference's PEFT adapters.

* ``import_adapter(reference_dir, base, out_dir)``: a reference adapter planned on a base
  checkpoint's shapes, written as the library's adapter (``gpart_jax.save_adapter``'s format,
  so ``load_adapter``, ``gpart-jax info`` and every command read it). Its GPart is over
  shape-only stand-ins named after the torch modules (``bert/encoder/layer/0/attention/self/
  query/kernel``, stored ``(out, in)``, numbered as the reference numbers them); the PEFT config,
  the prefix and the modules' names and shapes are recorded in the manifest's ``extra.peft``, so
  that later uses check the base.
* ``export_imported(adapter_dir, out_dir)``: such an adapter back to a PEFT adapter directory.
* ``export_adapter(out_dir, gpart, theta, name_map)``: an adapter trained on flax params, written
  as a PEFT adapter that the reference reads (``name_map``: PEFT name -> flax path).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from gpart_jax.adapters import load_adapter, save_adapter
from gpart_jax.core import GPart
from gpart_jax.errors import InteropError
from gpart_jax.interop.architectures import detect_architecture
from gpart_jax.interop.config import REFERENCE_PEFT_VERSION, GPartConfig, ModuleOrder, NameMap
from gpart_jax.interop.flax import check_reference_layout, invert_name_map, torch_shape
from gpart_jax.interop.plan import check_recorded, plan_modules, saved_for_base
from gpart_jax.interop.reference import (
    ReferenceAdapter,
    read_reference_adapter,
    write_reference_adapter,
)
from gpart_jax.interop.safetensors_files import safetensors_shapes
from gpart_jax.paths import leaf_name


def export_adapter(out_dir: str | os.PathLike, gpart: GPart, theta, name_map: NameMap, *,
                   saved: Mapping[str, Any] | None = None, module_order: ModuleOrder = "auto",
                   fan_in_fan_out: bool = False, task_type: str | None = None,
                   base_model_name_or_path: str | None = None, init_bound: float = 0.0,
                   overwrite: bool = False) -> Path:
    """Write a gpart-jax adapter trained on flax params as a reference (PEFT) adapter directory.

    ``read_reference_adapter(out_dir)`` reads back theta and the saved modules bit for bit, and the
    reference rebuilds the same partition from the written config: ``target_modules`` lists the
    full PEFT names of the adapted modules, ``bias`` is ``"gpart_only"`` when the layout holds
    biases (else ``"none"``), ``partition_scope``, ``d``, ``proj_seed``, ``isometric`` are the
    GPart's. The targeted modules' shapes are recorded in the safetensors metadata, so that
    ``merge_state_dict`` refuses a base with other shapes. Refused, before anything is written:
    a GPart that is not the reference's partition (see ``check_reference_layout``; build it with
    ``plan_flax(config, params, name_map).create_gpart(params)``), a theta that is not float32 of
    shape ``(d,)`` or not finite, saved leaves without a torch name.

    Args:
      out_dir: the adapter directory (created; an existing non-empty one needs ``overwrite``).
      gpart: the trained adapter's plan; theta: its ``(d,)`` vector.
      name_map: PEFT parameter name -> flax path (as for ``plan_flax``).
      saved: fully trained leaves by flax path (PEFT's ``modules_to_save``); 2-D ``kernel``s are
        written transposed as Linear weights ``(out, in)``.
      module_order: the reference's module order (see ``plan_modules``).
      fan_in_fan_out: the torch modules store their weights ``(in, out)`` (GPT-2's Conv1D).
      task_type, base_model_name_or_path, init_bound: written into ``adapter_config.json``.
    """
    flax_to_torch = invert_name_map(name_map)
    if gpart.scheme != "stateless":
        raise InteropError(f"scheme={gpart.scheme!r} is this project's own partition and cannot be "
                           f"exported: the reference has only the stateless SplitMix64 ids; train with "
                           f"scheme='stateless'")
    shapes: dict[str, tuple[int, ...]] = {}
    in_layout = {e.path: e for e in gpart.layout}
    kernels = [e for e in gpart.layout if not e.is_bias]
    missing = [e.path for e in gpart.layout if e.path not in flax_to_torch]
    if missing:
        raise InteropError(f"name_map has no PEFT name for the adapted leaves {missing[:5]}")
    for flax_path in flax_to_torch:  # name_map's order, for module_order="insertion"
        if flax_path in in_layout:
            torch_name = flax_to_torch[flax_path]
            shapes[torch_name] = torch_shape(torch_name, flax_path, in_layout[flax_path].shape,
                                              fan_in_fan_out)
    modules = []
    for e in kernels:
        torch_name = flax_to_torch[e.path]
        if not torch_name.endswith(".weight"):
            raise InteropError(f"{e.path} maps to {torch_name}; an adapted kernel must map to a torch "
                               f"'<module>.weight'")
        modules.append(torch_name[:-len(".weight")])
    for e in gpart.layout:
        if e.is_bias and not any(flax_to_torch[e.path] == m + ".bias" for m in modules):
            raise InteropError(f"{e.path} maps to {flax_to_torch[e.path]}, not to the bias of an "
                               f"adapted module")
    theta = np.asarray(theta)
    if theta.dtype != np.float32 or theta.shape != (gpart.d,):
        raise InteropError(f"theta must be float32 of shape ({gpart.d},), got {theta.dtype} "
                           f"{theta.shape}")
    saved_torch, to_save = {}, []
    for flax_path, value in (saved or {}).items():
        torch_name = flax_to_torch.get(flax_path)
        if torch_name is None:
            raise InteropError(f"saved leaf {flax_path} has no PEFT name in name_map")
        if torch_name in shapes:
            raise InteropError(f"saved leaf {flax_path} ({torch_name}) is also adapted by the GPart")
        value = np.asarray(value)
        if torch_name.endswith(".weight") and leaf_name(flax_path) == "kernel" and value.ndim == 2:
            value = value.T
        saved_torch[torch_name] = np.ascontiguousarray(value)
        module = torch_name.rsplit(".", 1)[0]
        if module not in to_save:
            to_save.append(module)
    extra = {"peft_type": "GPART", "peft_version": REFERENCE_PEFT_VERSION, "task_type": task_type,
             "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
             "revision": None, "auto_mapping": None}
    config = GPartConfig(
        d=gpart.d, target_modules=tuple(modules), proj_seed=gpart.seed, isometric=gpart.isometric,
        bias="gpart_only" if any(e.is_bias for e in gpart.layout) else "none",
        partition_scope=gpart.scope, fan_in_fan_out=fan_in_fan_out,
        modules_to_save=tuple(to_save) or None, init_bound=float(init_bound), extra=extra,
        source="export_adapter")
    if module_order == "auto":  # detect from every name the model has, as plan_flax does, not
        # only from the adapted ones (which may lack the architecture's signature module)
        arch = detect_architecture(n[:-len(".weight")] for n in name_map if n.endswith(".weight"))
        module_order = arch.name if arch is not None else module_order
    ref = plan_modules(config, shapes, module_order=module_order)
    check_reference_layout(gpart, ref, name_map, fix=(
        "Build the GPart with plan_flax(config, params, name_map).create_gpart(params) so that it "
        "follows the reference's order, element order and blocks"))
    adapter = ReferenceAdapter(config, np.array(theta), saved_torch, ref.recorded())
    return write_reference_adapter(out_dir, adapter, overwrite=overwrite)


def _saved_path(torch_name: str) -> str:
    """``classifier.weight`` -> ``classifier/weight``: a saved tensor's path in the library's file."""
    return torch_name.replace(".", "/")


def import_adapter(adapter_dir: str | os.PathLike, base: str | os.PathLike,
                   out_dir: str | os.PathLike, *, module_order: ModuleOrder = "auto",
                   prefix: str = "", overwrite: bool = False) -> Path:
    """Write a reference adapter as the library's adapter, planned on a base checkpoint's shapes.

    Only the base's safetensors header is read. The targeted modules' names and shapes are
    recorded, so that ``export_imported`` and later merges refuse a base that differs.
    """
    adapter = read_reference_adapter(adapter_dir)
    shapes = safetensors_shapes(Path(base), "base weights")
    plan = plan_modules(adapter.config, shapes, module_order=module_order, prefix=prefix)
    check_recorded(adapter, plan)
    saved = saved_for_base(adapter, shapes, prefix)
    peft = {"config": adapter.config.to_dict(), "prefix": prefix,
            "modules": [[m, list(w), None if b is None else list(b)] for m, w, b in
                        zip(plan.modules, plan.weight_shapes, plan.bias_shapes, strict=True)]}
    out_dir = Path(out_dir)
    save_adapter(out_dir, plan.gpart, jnp.asarray(adapter.theta),
                 saved={_saved_path(k): v for k, v in saved.items()},
                 extra={"peft": peft, "imported_from": str(Path(adapter_dir).absolute())},
                 overwrite=overwrite)
    return out_dir


def export_imported(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    overwrite: bool = False) -> Path:
    """Write an adapter made by ``import_adapter`` back as a reference adapter directory.

    The plan is rebuilt from the recorded config and module shapes and must reproduce the
    adapter's partition (its fingerprint); the written adapter records the module shapes in its
    safetensors metadata.
    """
    loaded = load_adapter(adapter_dir)
    peft = loaded.metadata.get("extra", {}).get("peft")
    if not isinstance(peft, dict):
        raise InteropError(f"{adapter_dir} was not imported from a reference adapter (its manifest "
                           f"has no extra.peft); an adapter trained on flax params is exported with "
                           f"gpart_jax.interop.export_adapter(out_dir, gpart, theta, name_map)")
    missing = sorted({"config", "prefix", "modules"} - set(peft))
    if missing:
        raise InteropError(f"{adapter_dir}: its record of the reference adapter (extra.peft in its "
                           f"manifest) lacks {missing}; import the reference adapter again "
                           f"(gpart-jax peft import)")
    config = GPartConfig.from_dict(peft["config"], source=f"{adapter_dir}: extra.peft.config")
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for m, w, b in peft["modules"]:
            shapes[m + ".weight"] = tuple(int(n) for n in w)
            if b is not None:
                shapes[m + ".bias"] = tuple(int(n) for n in b)
    except (TypeError, ValueError):
        raise InteropError(f"{adapter_dir}: extra.peft.modules in its manifest is not a list of "
                           f"[module, weight shape, bias shape or null]; import the reference "
                           f"adapter again (gpart-jax peft import)") from None
    plan = plan_modules(config, shapes, module_order=[m for m, _, _ in peft["modules"]],
                        prefix=peft["prefix"])
    if plan.gpart.fingerprint != loaded.method.spec().get("fingerprint"):
        raise InteropError(f"{adapter_dir}: the recorded PEFT modules give another partition than "
                           f"the adapter's (fingerprints differ): the manifest is inconsistent")
    saved = {path.replace("/", "."): np.asarray(v) for path, v in loaded.saved.items()}
    reference = ReferenceAdapter(config, np.asarray(loaded.trainable, np.float32), saved,
                                 plan.recorded())
    return write_reference_adapter(out_dir, reference, overwrite=overwrite)

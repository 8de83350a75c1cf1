"""Apply a reference adapter to PyTorch-named weights, without torch: ``W = W0 + P theta``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from gpart_jax import files
from gpart_jax.errors import InteropError
from gpart_jax.interop.config import CONFIG_NAME, WEIGHTS_NAME, ModuleOrder
from gpart_jax.interop.plan import check_recorded, plan_modules, saved_for_base
from gpart_jax.interop.reference import (
    ReferenceAdapter,
    as_reference_adapter,
    read_reference_adapter,
)
from gpart_jax.interop.safetensors_files import (
    check_output_file,
    read_safetensors,
    safetensors_module,
    write_file,
)

BIAS_ALL_NOTE = (
    "bias='all': the reference also trained every other bias of the model but saved none of "
    "them (a reference quirk); the merge applies what the adapter holds (theta, which covers the "
    "targeted modules' own biases, and the saved modules), as the reference itself does when it "
    "loads these files, not the biases of the model it trained")


def merge_state_dict(adapter: ReferenceAdapter | str | os.PathLike, state_dict: Mapping[str, Any], *,
                     module_order: ModuleOrder = "auto", prefix: str = "") -> dict[str, np.ndarray]:
    """Apply a reference adapter to PyTorch-named numpy weights: ``W = W0 + P theta``.

    Each targeted parameter becomes ``float32(W0 + float32(theta[g] * scale[g]))`` (cast back to
    its dtype if that is not float32); the saved modules are added or replaced under the base's
    names (a PEFT name starting with ``prefix`` loses it); every other entry is passed through
    unchanged (the same array objects). ``state_dict`` is named as PEFT's base model names it
    minus ``prefix``, in PyTorch layout. See ``plan_modules`` for ``module_order`` and
    ``prefix``. With ``bias="all"`` a warning says what cannot be applied.
    """
    adapter = as_reference_adapter(adapter)
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    plan = plan_modules(adapter.config, shapes, module_order=module_order, prefix=prefix)
    check_recorded(adapter, plan)
    saved = saved_for_base(adapter, shapes, prefix)
    names = plan.param_names()
    bad = [f"{n} ({np.asarray(state_dict[n]).dtype})" for n in names
           if not jnp.issubdtype(np.asarray(state_dict[n]).dtype, jnp.floating)]
    if bad:
        raise InteropError(f"targeted parameters {bad[:5]} are not floating point")
    if adapter.config.bias == "all":
        warnings.warn(BIAS_ALL_NOTE, stacklevel=2)
    deltas = plan.gpart.deltas(jnp.asarray(adapter.theta))
    merged = dict(state_dict)
    for name, delta in zip(names, deltas, strict=True):
        w0 = np.asarray(state_dict[name])
        merged[name] = (w0.astype(np.float32) + np.asarray(delta)).astype(w0.dtype, copy=False)
    merged.update(saved)
    return merged


def merge_file(adapter_dir: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike, *,
               module_order: ModuleOrder = "auto", prefix: str = "", overwrite: bool = False) -> Path:
    """``merge_state_dict`` from a base safetensors file to a merged safetensors file.

    Everything is validated and computed before ``out`` is written, through a temporary file in
    its directory that replaces it atomically: an error leaves no (partial) output. An existing
    ``out`` is replaced only with ``overwrite``, and never when it is one of the inputs.
    """
    adapter_dir, base, out = Path(adapter_dir), Path(base), Path(out)
    inputs = {"base checkpoint": base, "adapter's weights": adapter_dir / WEIGHTS_NAME,
              "adapter's config": adapter_dir / CONFIG_NAME}
    check_output_file(out, inputs, overwrite)
    save_file = safetensors_module().numpy.save_file
    adapter = read_reference_adapter(adapter_dir)
    state, _ = read_safetensors(base, "base weights")
    merged = merge_state_dict(adapter, state, module_order=module_order, prefix=prefix)
    merged = {k: np.ascontiguousarray(v) for k, v in merged.items()}
    lock = files.PathLock(out.with_name(f".{out.name}.lock"), f"output {out}", remove=True)
    try:
        with lock:
            check_output_file(out, inputs, overwrite)  # again, now that no other writer can
            return write_file(out, lambda p: save_file(merged, str(p), metadata={"format": "pt"}))
    except files.LockedError as e:
        raise InteropError(str(e.strerror)) from None

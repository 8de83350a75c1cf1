"""The reference's adapter directory: read it, validate it, write it.

``read_reference_adapter(dir)`` gives a ``ReferenceAdapter``: the validated ``GPartConfig``,
theta (float32, ``(d,)``) and the saved modules by PEFT parameter name, in PyTorch layout.
``write_reference_adapter(dir, adapter)`` writes the two files the reference reads, whole or
not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gpart_jax.errors import InteropError
from gpart_jax.interop.config import (
    CONFIG_NAME,
    META_MODULES,
    SAVED_PREFIX,
    THETA_KEY,
    WEIGHTS_NAME,
    GPartConfig,
)
from gpart_jax.interop.safetensors_files import read_safetensors, safetensors_module, write_adapter_dir

RecordedModule = tuple[str, tuple[int, ...], tuple[int, ...] | None]


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceAdapter:
    """A reference GPart adapter in memory.

    Attributes:
      config: the validated ``GPartConfig``.
      theta: float32 numpy array of shape ``(d,)``.
      saved: the saved modules' tensors by PEFT parameter name (``"classifier.weight"``), in
        PyTorch layout.
      modules: for adapters written by ``export_adapter``, the targeted modules as
        ``(PEFT module name, weight shape, bias shape or None)`` in global order, so that a base
        with other shapes is refused; ``None`` for the reference's own adapters.
      path: the directory it was read from, if any.
    """

    config: GPartConfig
    theta: np.ndarray
    saved: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    modules: tuple[RecordedModule, ...] | None = None
    path: Path | None = None

    def __post_init__(self):
        theta = self.theta
        where = f"{self.path}" if self.path else "adapter"
        if not isinstance(theta, np.ndarray) or theta.dtype != np.float32 or theta.ndim != 1:
            raise InteropError(f"{where}: theta must be a 1-D float32 array, got "
                               f"{getattr(theta, 'dtype', type(theta).__name__)} of shape "
                               f"{getattr(theta, 'shape', None)}")
        if theta.shape[0] != self.config.d:
            raise InteropError(f"{where}: d = {self.config.d} in {CONFIG_NAME} but theta "
                               f"({THETA_KEY}) has {theta.shape[0]} entries; the config and the "
                               f"weights do not belong together: set d to {theta.shape[0]} or use "
                               f"the matching {WEIGHTS_NAME}")
        if not np.all(np.isfinite(theta)):
            raise InteropError(f"{where}: theta holds {int(np.sum(~np.isfinite(theta)))} "
                               f"non-finite values (NaN or inf); the adapter is broken")


def read_reference_adapter(adapter_dir: str | os.PathLike) -> ReferenceAdapter:
    """Read a reference GPart adapter directory (``adapter_config.json`` + safetensors weights).

    Returns theta (numpy float32, shape ``(d,)``), the saved modules by PEFT name (prefix
    ``base_model.model.`` removed, PyTorch layout) and the parsed, validated config. Refuses,
    saying why: a config gpart-jax cannot reproduce (see the module docstring), a corrupted or
    truncated file, a missing ``base_model.gpart_theta_d``, a ``d`` that disagrees with theta's
    length, a torch-pickled ``adapter_model.bin``.
    """
    path = Path(adapter_dir)
    if not path.is_dir():
        raise InteropError(f"adapter directory {path} does not exist (expected a directory holding "
                           f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise InteropError(f"{path}: no {CONFIG_NAME}; is this a PEFT adapter directory?")
    try:
        doc = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{cfg_path}: not valid JSON ({e}); the file is corrupted") from None
    config = GPartConfig.from_dict(doc, source=str(cfg_path))
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise InteropError(f"{path}: the weights are in adapter_model.bin, a torch pickle that "
                               f"gpart-jax does not read; convert it where torch is installed: "
                               f"safetensors.torch.save_file(torch.load(...), '{WEIGHTS_NAME}')")
        raise InteropError(f"{path}: no {WEIGHTS_NAME}")
    tensors, metadata = read_safetensors(weights, "adapter weights")
    if THETA_KEY not in tensors:
        raise InteropError(f"{weights}: no tensor {THETA_KEY!r} (theta); found {sorted(tensors)[:10]}. "
                           f"The file is not a GPart adapter's weights, or was saved under another "
                           f"adapter name")
    stray = [k for k in tensors if k != THETA_KEY and not k.startswith(SAVED_PREFIX)]
    if stray:
        raise InteropError(f"{weights}: unexpected tensors {stray[:5]}: a GPart adapter holds "
                           f"{THETA_KEY} and saved modules under {SAVED_PREFIX!r} only")
    theta = tensors[THETA_KEY]
    if theta.dtype != np.float32 or theta.ndim != 1:
        raise InteropError(f"{weights}: {THETA_KEY} is {theta.dtype} of shape {theta.shape}; the "
                           f"reference stores a 1-D float32 theta, the only kind reproduced exactly")
    saved = {k[len(SAVED_PREFIX):]: v for k, v in tensors.items() if k.startswith(SAVED_PREFIX)}
    modules = None
    if META_MODULES in metadata:
        try:
            modules = tuple((str(n), tuple(int(s) for s in ws), None if bs is None else
                             tuple(int(s) for s in bs)) for n, ws, bs in json.loads(metadata[META_MODULES]))
        except (ValueError, TypeError) as e:
            raise InteropError(f"{weights}: metadata {META_MODULES!r} is corrupted ({e})") from None
    return ReferenceAdapter(config, np.array(theta), saved, modules, path)


def write_reference_adapter(out_dir: str | os.PathLike, adapter: ReferenceAdapter, *,
                 overwrite: bool = False) -> Path:
    """Write ``adapter`` as a PEFT adapter directory the reference (and ``read_reference_adapter``) reads.

    ``adapter_config.json`` (sorted keys) and ``adapter_model.safetensors`` with
    ``base_model.gpart_theta_d`` and ``base_model.model.<name>`` for each saved tensor, metadata
    ``{"format": "pt"}`` (plus the recorded module shapes when ``adapter.modules`` is set). Both
    files are written to a temporary directory first, so an error leaves no partial output.
    """
    save_file = safetensors_module().numpy.save_file

    tensors = {THETA_KEY: np.ascontiguousarray(adapter.theta)}
    for k, v in adapter.saved.items():
        tensors[SAVED_PREFIX + k] = np.ascontiguousarray(v)
    metadata = {"format": "pt"}
    if adapter.modules is not None:
        metadata[META_MODULES] = json.dumps(
            [[n, list(ws), None if bs is None else list(bs)] for n, ws, bs in adapter.modules])
    text = json.dumps(adapter.config.to_dict(), indent=2, sort_keys=True) + "\n"
    return write_adapter_dir(Path(out_dir), {
        CONFIG_NAME: lambda p: p.write_text(text),
        WEIGHTS_NAME: lambda p: save_file(tensors, str(p), metadata=metadata),
    }, overwrite)


def as_reference_adapter(adapter: ReferenceAdapter | str | os.PathLike) -> ReferenceAdapter:
    return adapter if isinstance(adapter, ReferenceAdapter) else read_reference_adapter(adapter)

"""Read, apply and write the reference implementation's GPart adapters, bit-exact, without torch.

The reference (PyTorch, a fork of Hugging Face PEFT) saves an adapter as a directory holding
``adapter_config.json`` and ``adapter_model.safetensors`` with ``theta`` (key
``base_model.gpart_theta_d``, float32, length ``d``) and the fully trained "saved" modules
(``base_model.model.<name>``, e.g. the classifier). Ids, group sizes and scales are not stored:
they are rebuilt from the configuration and the shapes of the targeted modules:

- The targeted modules are the Linear modules (here: names ``M`` with a 2-D ``M.weight``) that
  PEFT's matcher selects, in the model's ``named_modules()`` order (the architecture's definition
  order; see ``gpart_jax.interop.architectures``). Module ``m`` owns the global positions
  ``[o_m, o_m + s_m)`` with ``o_m`` the running sum of the sizes before it; ``s_m`` is
  ``out * in`` plus ``out`` when ``bias`` is ``"gpart_only"`` or ``"all"`` (its own bias follows
  its weight). Inside a module, position ``o_m + k`` is element ``k`` of the *stored* weight
  flattened row-major: ``W[k // in, k % in]`` for a ``(out, in)`` Linear weight, the stored
  ``(in, out)`` layout for ``fan_in_fan_out=True`` (GPT-2's Conv1D).
- ``g(p) = splitmix64(p + s + 0x9E3779B97F4A7C15) mod d`` (``gpart_jax.group_ids``),
  ``n_j = max(1, |{p : g(p) = j}|)``, ``scale_j = 1 / sqrt(n_j)`` in float32 (1 if not
  ``isometric``), and the merged weight is ``float32(W0_p + float32(theta_{g(p)} scale_{g(p)}))``.
- ``partition_scope="transformer_block"``: one such partition per transformer block (the name
  prefix up to the first ``<layers|layer|h|block|blocks>.<int>``, or ``layers_pattern``), blocks
  in natural order, ``d`` split by ``divmod`` (the first ``d mod B`` blocks one larger), block
  ``k`` seeded ``s + k`` with positions restarting at 0, owning a contiguous slice of theta.

The partition is built by ``gpart_jax.GPart`` over shape-only stand-ins of the torch weights
(element order ``"native"``: a row-major ``(out, in)`` array *is* the reference's order), so the
merge shares the project's one implementation of ids, counts and scales. Scales are numpy's IEEE
``1 / sqrt(n)``; the reference's come from torch on an MKL CPU and differ from them by 1-2 ulp for
some groups, which moves merged weights by about 3e-8 on the golden MiniLM adapter.

Unsupported (refused with the reason, never approximated): ``projection_type="fastfood"``,
``grouping_strategy="signed_magnitude"``, ``assignment_backend="materialized"``,
``target_modules="all-linear"`` (PEFT resolves it from torch module classes) and torch-pickled
``adapter_model.bin`` files. ``gpart_dropout`` and ``init_bound`` only matter in training.

Exportable gpart-jax adapters (``export_adapter``): ``scheme="stateless"``; every targeted leaf a
2-D flax ``kernel`` (in, out) mapped to a torch ``<module>.weight``, enumerated in
``element_order="torch"`` (or ``"native"`` with ``fan_in_fan_out=True``, whose torch weight is
stored ``(in, out)`` as the flax kernel is); biases only as ``bias=True`` (each kernel's own
bias right after it, PEFT's ``"gpart_only"``); the layout in the reference's module order; with
``scope="transformer_block"`` the same blocks as the reference's. ``plan_flax(config, ...)``
returns the ``GPart.create`` arguments that satisfy all of this.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpart_jax import hashing
from gpart_jax.core import GPart
from gpart_jax.interop.architectures import (
    ARCHITECTURES,
    definition_key,
    detect_architecture,
    is_embedding,
)
from gpart_jax.layout import flatten_with_paths

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
THETA_KEY = "base_model.gpart_theta_d"
SAVED_PREFIX = "base_model.model."
META_MODULES = "gpart_jax.modules"  # safetensors metadata written by export: the base's shapes
REFERENCE_PEFT_VERSION = "0.18.2.dev0"  # the reference's PEFT version, whose format is written
DEFAULT_LAYERS = ("layers", "layer", "h", "block", "blocks")
BIAS_MODES = ("none", "all", "gpart_only")
PARTITION_SCOPES = ("global", "transformer_block")

ModuleOrder = str | Sequence[str]
NameMap = Mapping[str, str]

_UNSUPPORTED = {
    ("projection_type", "fastfood"): (
        "the Fastfood projection is not a parameter partition: its random diagonal and "
        "permutation factors are drawn from torch's random number generator, whose stream "
        "gpart-jax does not reproduce, so the weights it would produce cannot be rebuilt"),
    ("grouping_strategy", "signed_magnitude"): (
        "its groups are formed from the signs and magnitudes of the base weights by the "
        "reference's own torch code, a rule that is not part of the documented format (only the "
        "stateless random grouping is specified bit for bit), so gpart-jax refuses rather than "
        "guess"),
    ("assignment_backend", "materialized"): (
        "its group ids are drawn with torch.randint from a seeded torch.Generator: a different "
        "partition that only torch's random number stream reproduces (the default "
        "assignment_backend='stateless' uses SplitMix64 ids, reproduced exactly)"),
}
_CHOICES = {"projection_type": ("partition",), "grouping_strategy": ("random",),
            "assignment_backend": ("stateless",), "bias": BIAS_MODES,
            "partition_scope": PARTITION_SCOPES}
_FIELDS = ("d", "target_modules", "proj_seed", "isometric", "bias", "partition_scope",
           "fan_in_fan_out", "layers_to_transform", "layers_pattern", "modules_to_save",
           "init_bound", "gpart_dropout", "grouping_strategy", "projection_type",
           "assignment_backend")


class InteropError(ValueError):
    """An adapter, base or argument that cannot be used as asked; the message says why and how."""


# --------------------------------------------------------------------------- configuration

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _str_tuple(value, name: str, source: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InteropError(f"{source}: {name} must be a list of strings, got {value!r}")
    items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if not all(isinstance(v, str) and v for v in items):
        raise InteropError(f"{source}: {name} must hold non-empty strings, got {value!r}")
    return tuple(items)


@dataclasses.dataclass(frozen=True)
class GPartConfig:
    """The reference's ``GPartConfig``: what ``adapter_config.json`` holds, validated.

    ``target_modules``: a regex (full match on the PEFT module name) or a tuple of names, each
    matching a module whose name equals it or ends with ``"." + name``. ``layers_to_transform``
    (an int or a tuple of ints) keeps only the modules of those layers; it applies, as in PEFT,
    to list targets matched by suffix (not to exact names or a regex), and the layer index is
    the integer component after the last ``layers_pattern`` component (default: after any
    component). ``extra`` keeps the other keys (``peft_type``, ``task_type``,
    ``base_model_name_or_path``, ...) so that a config is written back as it was read.
    Construction validates and refuses the options gpart-jax cannot reproduce.
    """

    d: int
    target_modules: str | tuple[str, ...]
    proj_seed: int = 42
    isometric: bool = True
    bias: str = "none"
    partition_scope: str = "global"
    fan_in_fan_out: bool = False
    layers_to_transform: int | tuple[int, ...] | None = None
    layers_pattern: str | tuple[str, ...] | None = None
    modules_to_save: tuple[str, ...] | None = None
    init_bound: float = 0.0
    gpart_dropout: float = 0.0
    grouping_strategy: str = "random"
    projection_type: str = "partition"
    assignment_backend: str = "stateless"
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=True)
    source: str = dataclasses.field(default="GPartConfig", compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for (key, value), why in _UNSUPPORTED.items():
            if getattr(self, key) == value:
                raise InteropError(f"{src}: {key}={value!r} is not supported: {why}.")
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise InteropError(f"{src}: {key} must be one of {allowed}, got {getattr(self, key)!r}")
        if not _is_int(self.d) or self.d < 1 or self.d > hashing.MAX_D:
            raise InteropError(f"{src}: d must be an integer in [1, 2**31 - 1], got {self.d!r}")
        set_("d", int(self.d))
        if not _is_int(self.proj_seed):
            raise InteropError(f"{src}: proj_seed must be an integer, got {self.proj_seed!r}")
        set_("proj_seed", int(self.proj_seed))
        for key in ("isometric", "fan_in_fan_out"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise InteropError(f"{src}: {key} must be true or false, got {getattr(self, key)!r}")
            set_(key, bool(getattr(self, key)))
        t = self.target_modules
        if t is None or (not isinstance(t, str) and len(t) == 0):
            raise InteropError(f"{src}: target_modules is empty; the adapter targets no module")
        if t == "all-linear":
            raise InteropError(
                f"{src}: target_modules='all-linear' is resolved by PEFT from torch module classes "
                f"and the model's output head, which a state dict does not record; write the "
                f"resolved module names as a list in target_modules (PEFT saves that list when it "
                f"resolves 'all-linear' itself)")
        if isinstance(t, str):
            try:
                re.compile(t)
            except re.error as e:
                raise InteropError(f"{src}: target_modules {t!r} is not a valid regex: {e}") from None
        else:
            set_("target_modules", _str_tuple(t, "target_modules", src))
        ltt = self.layers_to_transform
        if ltt is not None:
            if _is_int(ltt):
                set_("layers_to_transform", int(ltt))
            elif isinstance(ltt, (list, tuple)) and all(_is_int(i) for i in ltt):
                set_("layers_to_transform", tuple(int(i) for i in ltt))
            else:
                raise InteropError(f"{src}: layers_to_transform must be an int or a list of ints, "
                                   f"got {ltt!r}")
        lp = self.layers_pattern
        if lp is not None and not isinstance(lp, str):
            set_("layers_pattern", _str_tuple(lp, "layers_pattern", src))
        if self.modules_to_save is not None:
            set_("modules_to_save", _str_tuple(self.modules_to_save, "modules_to_save", src))
        set_("extra", dict(self.extra))

    @property
    def seed(self) -> int:
        """``proj_seed`` taken mod ``2**64``, as the reference's unsigned arithmetic does."""
        return self.proj_seed & hashing.MASK64

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "adapter_config.json") -> GPartConfig:
        """Parse and validate a reference ``adapter_config.json`` document."""
        if not isinstance(doc, Mapping):
            raise InteropError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        peft_type = doc.get("peft_type")
        if peft_type is not None and str(peft_type).upper() != "GPART":
            raise InteropError(f"{source}: peft_type is {peft_type!r}, not 'GPART': this is not a "
                               f"GPart adapter")
        missing = [k for k in ("d", "target_modules") if doc.get(k) is None]
        if missing:
            raise InteropError(f"{source}: missing key(s) {missing}; a GPart adapter config needs d "
                               f"and target_modules")
        kw = {k: doc[k] for k in _FIELDS if k in doc and doc[k] is not None}
        if "layers_to_transform" in doc:
            kw["layers_to_transform"] = doc["layers_to_transform"]
        if "layers_pattern" in doc:
            kw["layers_pattern"] = doc["layers_pattern"] or None
        extra = {k: v for k, v in doc.items() if k not in _FIELDS}
        return cls(**kw, extra=extra, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``adapter_config.json`` (the fields plus ``extra``)."""
        doc = dict(self.extra)
        for k in _FIELDS:
            v = getattr(self, k)
            doc[k] = list(v) if isinstance(v, tuple) else v
        doc.setdefault("peft_type", "GPART")
        return doc


# --------------------------------------------------------------------------- files

def _safetensors():
    """The ``safetensors`` package (with its numpy API), or an error that says how to install it."""
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise InteropError("reading and writing PEFT adapters needs the safetensors package: "
                           "pip install 'safetensors>=0.4'") from None
    return safetensors


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, or a clear error."""
    safe_open = _safetensors().safe_open

    if not path.is_file():
        raise InteropError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as f:
            keys, metadata = list(f.keys()), dict(f.metadata() or {})
            tensors = {}
            for k in keys:
                tensors[k] = f.get_tensor(k)
    except InteropError:
        raise
    except Exception as e:  # safetensors raises its own error type, numpy others
        raise InteropError(f"{path}: cannot read {what} as safetensors ({e}); the file is "
                           f"truncated or corrupted: download or save it again") from None
    return tensors, metadata


def _safetensors_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors of a safetensors file, read from its header only."""
    safe_open = _safetensors().safe_open

    if not path.is_file():
        raise InteropError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as f:
            return {k: tuple(int(s) for s in f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise InteropError(f"{path}: cannot read {what} as safetensors ({e}); the file is "
                           f"truncated or corrupted") from None


def _umask_mode(mode: int) -> int:
    """``mode`` less the process umask (temporary files are created private; outputs are not)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _atomic_file(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file in its directory, then ``os.replace`` it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InteropError(f"output directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _atomic_dir(out_dir: Path, files: Mapping[str, Callable[[Path], None]], overwrite: bool) -> Path:
    """Write ``files`` into ``out_dir``: all into a temporary sibling first, then moved in."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InteropError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InteropError(f"output directory {out_dir} exists and is not empty; choose another "
                           f"directory or pass overwrite=True (--overwrite)")
    if not out_dir.parent.is_dir():
        raise InteropError(f"parent directory {out_dir.parent} of the output does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, write in files.items():
            write(tmp / name)
            os.chmod(tmp / name, _umask_mode(0o666))
        os.chmod(tmp, _umask_mode(0o777))
        if not out_dir.exists():
            os.rename(tmp, out_dir)
        else:
            for name in files:
                os.replace(tmp / name, out_dir / name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --------------------------------------------------------------------------- adapters

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

    def equals(self, other: ReferenceAdapter) -> bool:
        """Same config, bitwise-equal theta and saved tensors (``modules`` and ``path`` ignored)."""
        return (self.config == other.config
                and np.array_equal(self.theta, other.theta)
                and self.saved.keys() == other.saved.keys()
                and all(self.saved[k].dtype == other.saved[k].dtype
                        and np.array_equal(self.saved[k], other.saved[k]) for k in self.saved))


def load_adapter(adapter_dir: str | os.PathLike) -> ReferenceAdapter:
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
    tensors, metadata = _read_safetensors(weights, "adapter weights")
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


def save_adapter(out_dir: str | os.PathLike, adapter: ReferenceAdapter, *,
                 overwrite: bool = False) -> Path:
    """Write ``adapter`` as a PEFT adapter directory the reference (and ``load_adapter``) reads.

    ``adapter_config.json`` (sorted keys) and ``adapter_model.safetensors`` with
    ``base_model.gpart_theta_d`` and ``base_model.model.<name>`` for each saved tensor, metadata
    ``{"format": "pt"}`` (plus the recorded module shapes when ``adapter.modules`` is set). Both
    files are written to a temporary directory first, so an error leaves no partial output.
    """
    save_file = _safetensors().numpy.save_file

    tensors = {THETA_KEY: np.ascontiguousarray(adapter.theta)}
    for k, v in adapter.saved.items():
        tensors[SAVED_PREFIX + k] = np.ascontiguousarray(v)
    metadata = {"format": "pt"}
    if adapter.modules is not None:
        metadata[META_MODULES] = json.dumps(
            [[n, list(ws), None if bs is None else list(bs)] for n, ws, bs in adapter.modules])
    text = json.dumps(adapter.config.to_dict(), indent=2, sort_keys=True) + "\n"
    return _atomic_dir(Path(out_dir), {
        CONFIG_NAME: lambda p: p.write_text(text),
        WEIGHTS_NAME: lambda p: save_file(tensors, str(p), metadata=metadata),
    }, overwrite)


def _as_adapter(adapter: ReferenceAdapter | str | os.PathLike) -> ReferenceAdapter:
    return adapter if isinstance(adapter, ReferenceAdapter) else load_adapter(adapter)


# --------------------------------------------------------------------------- target matching

def layer_index(name: str, layers_pattern: str | Sequence[str] | None = None) -> int | None:
    """Layer index of a PEFT module name, as PEFT's ``layers_to_transform`` reads it.

    The integer component that follows the *last* component matching ``layers_pattern``
    (default: any component), provided a component precedes that one and one follows the
    integer: ``bert.encoder.layer.3.attention.self.query`` -> 3.
    """
    patterns = ([r"[^.]*"] if not layers_pattern else
                [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern))
    for pattern in patterns:
        m = re.match(rf".*\.(?:{pattern})\.(?P<index>\d+)\.", name)
        if m is not None:
            return int(m.group("index"))
    return None


def is_targeted(config: GPartConfig, name: str) -> bool:
    """Whether PEFT's matcher selects module ``name`` (its full PEFT name) for ``config``.

    A regex ``target_modules`` must match the whole name. A list matches a name equal to one of
    its entries, or (then filtered by ``layers_to_transform``) ending with ``"." + entry``.
    """
    targets = config.target_modules
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith("." + t) for t in targets):
        return False
    wanted = config.layers_to_transform
    if wanted is None or (isinstance(wanted, tuple) and not wanted):
        return True
    index = layer_index(name, config.layers_pattern)
    if index is None:
        return False
    return index == wanted if isinstance(wanted, int) else index in wanted


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


def _module_path(module: str) -> str:
    return module.replace(".", "/")


def _param_name(path: str) -> str:
    """``a/b/query/kernel`` -> ``a.b.query.weight``; ``a/b/query/bias`` -> ``a.b.query.bias``."""
    parent, _, leaf = path.rpartition("/")
    return parent.replace("/", ".") + (".weight" if leaf == "kernel" else "." + leaf)


class _PathSet:
    """``targets`` callable selecting exactly the given paths."""

    def __init__(self, paths: Sequence[str]):
        self.paths = frozenset(paths)

    def __call__(self, path: str, leaf) -> bool:
        return path in self.paths

    def __repr__(self) -> str:
        return f"_PathSet({sorted(self.paths)[:3]}... {len(self.paths)} paths)"


# --------------------------------------------------------------------------- the reference's plan

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
        return [_param_name(e.path) for e in self.gpart.layout]


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
    targeted = [m for m in candidates if is_targeted(config, prefix + m)]
    if not targeted:
        shown = ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "")
        hint = (f"; a regex target sees the names with the prefix {prefix!r} prepended: pass "
                f"prefix= (e.g. 'bert.') when the checkpoint lacks PEFT's base-model prefix"
                if isinstance(config.target_modules, str) else "")
        raise InteropError(f"target_modules {config.target_modules!r} matched no module of the base "
                           f"(modules: {shown}){hint}")
    not_linear = [f"{m} ({weights[m]})" for m in targeted if len(weights[m]) != 2]
    if not_linear:
        raise InteropError(f"targeted modules {not_linear[:5]} have weights that are not 2-D: only "
                           f"Linear (or Conv1D) modules can be adapted")
    arch = detect_architecture(candidates)
    if arch is not None:
        emb = [m for m in targeted if is_embedding(arch, m)]
        if emb:
            raise InteropError(f"targeted modules {emb[:5]} are embedding tables, not Linear modules; "
                               f"GPart adapts Linear layers only")
    ordered = _order_modules(targeted, module_order, candidates, prefix)

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
    paths = [_module_path(m) + "/kernel" for m in ordered]
    try:
        gp = GPart.create(
            tree, d=config.d, seed=config.seed, targets=_PathSet(paths), scheme="stateless",
            isometric=config.isometric, scope=config.partition_scope, element_order="native",
            bias=with_bias, order=paths,
            layer_pattern=_core_layer_pattern(config.layers_pattern), exclude=(), warn_empty=False)
    except ValueError as e:
        raise InteropError(f"the adapter (d = {config.d}, partition_scope = "
                           f"{config.partition_scope!r}) does not fit this base's "
                           f"{len(ordered)} targeted modules: {e}") from None
    return ReferencePlan(config, tuple(ordered), tuple(weights[m] for m in ordered),
                         tuple(bias_shapes), prefix, gp)


def _check_recorded(adapter: ReferenceAdapter, plan: ReferencePlan) -> None:
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


def _saved_for_base(adapter: ReferenceAdapter, shapes: Mapping[str, tuple[int, ...]],
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
    adapter = _as_adapter(adapter)
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    plan = plan_modules(adapter.config, shapes, module_order=module_order, prefix=prefix)
    _check_recorded(adapter, plan)
    saved = _saved_for_base(adapter, shapes, prefix)
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
               module_order: ModuleOrder = "auto", prefix: str = "") -> Path:
    """``merge_state_dict`` from a base safetensors file to a merged safetensors file.

    Everything is validated and computed before ``out`` is written, through a temporary file in
    its directory that replaces it atomically: an error leaves no (partial) output.
    """
    save_file = _safetensors().numpy.save_file

    adapter = load_adapter(adapter_dir)
    state, _ = _read_safetensors(Path(base), "base weights")
    merged = merge_state_dict(adapter, state, module_order=module_order, prefix=prefix)
    merged = {k: np.ascontiguousarray(v) for k, v in merged.items()}
    return _atomic_file(Path(out), lambda p: save_file(merged, str(p), metadata={"format": "pt"}))


# --------------------------------------------------------------------------- flax: the seam

def _leaf_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _torch_shape(torch_name: str, flax_path: str, shape: tuple[int, ...], fifo: bool) -> tuple[int, ...]:
    """The torch shape of a flax leaf: a 2-D ``kernel`` (in, out) is a Linear weight (out, in)."""
    if (torch_name.endswith(".weight") and _leaf_name(flax_path) == "kernel" and len(shape) == 2
            and not fifo):
        return (shape[1], shape[0])
    return tuple(shape)


def _invert(name_map: NameMap) -> dict[str, str]:
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
    to_torch = _invert(name_map)
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
        want, got = _param_name(b.path), to_torch.get(a.path)
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
      gpart_kwargs: the keyword arguments of ``GPart.create(flax_params, **gpart_kwargs)`` that
        rebuild the reference's partition over the flax leaves (``order`` is the reference's
        global order, ``element_order="torch"`` unless ``fan_in_fan_out``).
      theta: the adapter's theta (float32 numpy), or ``None`` when planned from a config.
      saved: the saved modules' tensors by flax path, in flax layout (Linear weights
        transposed to ``(in, out)`` kernels).
      modules: torch module names in global order; ``order``: their flax kernel paths.
      reference: the reference's plan over the torch names.
      name_map: PEFT parameter name -> flax path.
    """

    config: GPartConfig
    gpart_kwargs: dict[str, Any]
    theta: np.ndarray | None
    saved: dict[str, np.ndarray]
    modules: tuple[str, ...]
    order: tuple[str, ...]
    reference: ReferencePlan
    name_map: dict[str, str]

    def create_gpart(self, flax_params) -> GPart:
        """``GPart.create(flax_params, **gpart_kwargs)``, checked against the reference's plan."""
        gp = GPart.create(flax_params, **self.gpart_kwargs)
        check_reference_layout(gp, self.reference, self.name_map)
        return gp


def plan_flax(source: GPartConfig | ReferenceAdapter | str | os.PathLike, flax_params,
              name_map: NameMap, *, module_order: ModuleOrder = "auto",
              layer_pattern: str | None = None) -> FlaxPlan:
    """Map a reference adapter (or a config, to train one) onto a flax parameter pytree.

    The seam for the project's flax models: ``plan = plan_flax(adapter_dir, params, name_map)``,
    then ``gp = plan.create_gpart(params)`` and ``gp.reparam(jnp.asarray(plan.theta), params)``
    reproduces the reference's merged weights, with ``plan.saved`` joined in
    (``gpart_jax.trainable.join``).

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
      layer_pattern: ``GPart.create``'s pattern for flax block names, with
        ``partition_scope="transformer_block"`` (default: the core's).
    """
    adapter = None if isinstance(source, GPartConfig) else _as_adapter(source)
    if adapter is None:
        config, theta, saved_torch = source, None, {}
    else:
        config, theta, saved_torch = adapter.config, adapter.theta, dict(adapter.saved)
    name_map = dict(name_map)
    _invert(name_map)
    flat = dict(flatten_with_paths(flax_params)[0])
    fifo = config.fan_in_fan_out
    shapes = {}
    for torch_name, flax_path in name_map.items():
        if flax_path not in flat:
            raise InteropError(f"name_map maps {torch_name} to {flax_path}, which is not a leaf of "
                               f"flax_params (leaves: {list(flat)[:5]}...)")
        shapes[torch_name] = _torch_shape(torch_name, flax_path,
                                          tuple(getattr(flat[flax_path], "shape", ())), fifo)
    ref = plan_modules(config, shapes, module_order=module_order, prefix="")
    if adapter is not None:
        _check_recorded(adapter, ref)
    order = []
    for m, bs in zip(ref.modules, ref.bias_shapes, strict=True):
        kernel = name_map[m + ".weight"]
        if _leaf_name(kernel) != "kernel" or len(flat[kernel].shape) != 2:
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
    kwargs: dict[str, Any] = dict(
        d=config.d, seed=config.seed, targets=_PathSet(order), scheme="stateless",
        isometric=config.isometric, scope=config.partition_scope,
        element_order="native" if fifo else "torch", bias=config.bias != "none", order=tuple(order),
        exclude=())
    if layer_pattern is not None:
        kwargs["layer_pattern"] = layer_pattern
    saved = {}
    for name, value in saved_torch.items():
        flax_path = name_map.get(name)
        if flax_path is None:
            raise InteropError(f"the adapter's saved tensor {name} has no flax counterpart: add it to "
                               f"name_map")
        if name.endswith(".weight") and _leaf_name(flax_path) == "kernel" and value.ndim == 2:
            value = np.ascontiguousarray(value.T)
        leaf_shape = tuple(getattr(flat[flax_path], "shape", ()))
        if tuple(value.shape) != leaf_shape:
            raise InteropError(f"the adapter's saved tensor {name} is {tuple(value.shape)} in flax "
                               f"layout, but {flax_path} has shape {leaf_shape}: the adapter was "
                               f"trained on another base (or another head size)")
        saved[flax_path] = value
    return FlaxPlan(config, kwargs, theta, saved, ref.modules, tuple(order), ref, name_map)


# --------------------------------------------------------------------------- export

def export_adapter(out_dir: str | os.PathLike, gpart: GPart, theta, name_map: NameMap, *,
                   saved: Mapping[str, Any] | None = None, module_order: ModuleOrder = "auto",
                   fan_in_fan_out: bool = False, task_type: str | None = None,
                   base_model_name_or_path: str | None = None, init_bound: float = 0.0,
                   overwrite: bool = False) -> Path:
    """Write a gpart-jax adapter trained on flax params as a reference (PEFT) adapter directory.

    ``load_adapter(out_dir)`` reads back theta and the saved modules bit for bit, and the
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
    flax_to_torch = _invert(name_map)
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
            shapes[torch_name] = _torch_shape(torch_name, flax_path, in_layout[flax_path].shape,
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
        if torch_name.endswith(".weight") and _leaf_name(flax_path) == "kernel" and value.ndim == 2:
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
    ref = plan_modules(config, shapes, module_order=module_order)
    check_reference_layout(gpart, ref, name_map, fix=(
        "Build the GPart with plan_flax(config, params, name_map).create_gpart(params) so that it "
        "follows the reference's order, element order and blocks"))
    adapter = ReferenceAdapter(config, np.array(theta), saved_torch, ref.recorded())
    return save_adapter(out_dir, adapter, overwrite=overwrite)


# --------------------------------------------------------------------------- gpart-jax files

IMPORT_JSON = "gpart_adapter.json"
IMPORT_THETA = "theta.npy"
IMPORT_SAVED = "saved.safetensors"
IMPORT_FORMAT = "gpart-jax/reference-plan/1"


def _json_lines(doc: Mapping[str, Any]) -> str:
    """JSON with one top-level key a line and one list item (module, layout entry) a line."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
            items = ",\n".join("  " + json.dumps(v) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def import_to_dir(adapter_dir: str | os.PathLike, base: str | os.PathLike, out_dir: str | os.PathLike,
                  *, module_order: ModuleOrder = "auto", prefix: str = "",
                  overwrite: bool = False) -> Path:
    """Write a reference adapter as gpart-jax files, planned on a base checkpoint's shapes.

    ``out_dir`` receives ``gpart_adapter.json`` (the GPart plan in torch names: config, prefix,
    targeted modules with shapes in global order, layout entries, blocks, group-size summary,
    fingerprint), ``theta.npy`` (float32, ``(d,)``) and ``saved.safetensors`` (the saved modules,
    PyTorch layout). Only the base's safetensors header is read.
    """
    adapter = load_adapter(adapter_dir)
    shapes = _safetensors_shapes(Path(base), "base weights")
    plan = plan_modules(adapter.config, shapes, module_order=module_order, prefix=prefix)
    _check_recorded(adapter, plan)
    _saved_for_base(adapter, shapes, prefix)
    gp = plan.gpart
    doc = {
        "format": IMPORT_FORMAT, "d": gp.d, "seed": gp.seed, "scheme": gp.scheme,
        "isometric": gp.isometric, "scope": gp.scope, "element_order": "native",
        "prefix": prefix, "fingerprint": gp.fingerprint, "num_adapted": gp.num_adapted,
        "num_empty_groups": gp.num_empty_groups,
        "modules": [[m, list(w), None if b is None else list(b)]
                    for m, w, b in zip(plan.modules, plan.weight_shapes, plan.bias_shapes, strict=True)],
        "layout": [e.to_json() for e in gp.layout],
        "blocks": [dataclasses.asdict(b) for b in gp.blocks],
        "peft_config": adapter.config.to_dict(),
    }
    save_file = _safetensors().numpy.save_file

    text = _json_lines(doc)
    saved = {k: np.ascontiguousarray(v) for k, v in adapter.saved.items()}
    return _atomic_dir(Path(out_dir), {
        IMPORT_JSON: lambda p: p.write_text(text),
        IMPORT_THETA: lambda p: np.save(p, adapter.theta, allow_pickle=False),
        IMPORT_SAVED: lambda p: save_file(saved, str(p), metadata={"format": "pt"}),
    }, overwrite)


def export_from_dir(gpart_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    overwrite: bool = False) -> Path:
    """Write the gpart-jax files of ``import_to_dir`` back as a reference adapter directory.

    The plan is rebuilt from the recorded config and module shapes and must reproduce the
    recorded fingerprint; the written adapter records the module shapes in its metadata.
    """
    src = Path(gpart_dir)
    try:
        doc = json.loads((src / IMPORT_JSON).read_text())
    except FileNotFoundError:
        raise InteropError(f"{src}: no {IMPORT_JSON}; expected the output of 'peft import'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{src / IMPORT_JSON}: not valid JSON ({e})") from None
    if doc.get("format") != IMPORT_FORMAT:
        raise InteropError(f"{src / IMPORT_JSON}: format {doc.get('format')!r}, expected {IMPORT_FORMAT!r}")
    config = GPartConfig.from_dict(doc["peft_config"], source=str(src / IMPORT_JSON))
    try:
        theta = np.load(src / IMPORT_THETA, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InteropError(f"{src / IMPORT_THETA}: cannot read theta ({e})") from None
    saved, _ = _read_safetensors(src / IMPORT_SAVED, "saved modules")
    shapes: dict[str, tuple[int, ...]] = {}
    for m, w, b in doc["modules"]:
        shapes[m + ".weight"] = tuple(w)
        if b is not None:
            shapes[m + ".bias"] = tuple(b)
    prefix = doc.get("prefix", "")
    plan = plan_modules(config, shapes, module_order=[m for m, _, _ in doc["modules"]], prefix=prefix)
    if plan.gpart.fingerprint != doc["fingerprint"]:
        raise InteropError(f"{src / IMPORT_JSON}: the recorded modules give fingerprint "
                           f"{plan.gpart.fingerprint[:12]}..., not the recorded "
                           f"{doc['fingerprint'][:12]}...: the file was edited or is inconsistent")
    adapter = ReferenceAdapter(config, theta, saved, plan.recorded())
    return save_adapter(out_dir, adapter, overwrite=overwrite)


__all__ = [
    "BIAS_ALL_NOTE", "FlaxPlan", "GPartConfig", "InteropError", "ReferenceAdapter", "ReferencePlan",
    "check_reference_layout", "export_adapter", "export_from_dir", "import_to_dir", "is_targeted",
    "layer_index", "load_adapter", "merge_file", "merge_state_dict", "plan_flax", "plan_modules",
    "save_adapter",
]

"""Adapter files: a method's trainable pytree and saved modules, verified on every read.

``save_adapter(directory, method, trainable, saved=...)`` writes, ``load_adapter(directory)``
reads back an ``Adapter(method, trainable, saved, metadata)`` whose ``method`` is rebuilt from the
file (checked against ``base_params`` when given). The directory holds:

* ``adapter.json``: the manifest. Format and version, the package version, the method's
  ``spec()`` (for GPart: d, seed, scheme, isometric, scope and the layout itself, with its
  fingerprint; for the baselines their options and adapted leaves), the shape, dtype and sha256
  of every stored array, the name of the tensors directory, the base dtypes, ``extra`` fields,
  and a sha256 of the manifest itself.
* ``tensors-<id>.safetensors``: the arrays (``trainable/<i>``, ``saved/<i>``).
* ``.lock``: the writers' lock.

**The write path.** A save writes a new ``tensors-<id>.safetensors`` next to the old one, flushes
it, reads it back and checks every sha256, then replaces ``adapter.json`` atomically
(``gpart_jax.files``), and only then removes the old tensors. A kill at any moment leaves the
old adapter or the new one; a full disk leaves the old one. A second process saving the same
directory gets ``AdapterLockedError`` naming the holder. A directory that is not an adapter is
never written into, ``overwrite`` or not. Non-finite arrays are refused at save and at load.

Saving and loading are local file operations with no collective, so in a program of several
JAX processes call them on one process (the others can load what it wrote). A trainable
pytree checkpoints with orbax like any other pytree of arrays; an adapter file is the small,
verified artifact to keep and share.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from gpart_jax import files, methods
from gpart_jax.errors import (
    AdapterCorruptError,
    AdapterError,
    AdapterLockedError,
    LayoutMismatchError,
    TargetError,
)
from gpart_jax.layout import check_params
from gpart_jax.method import Method
from gpart_jax.paths import leaves_with_paths
from gpart_jax.saved import check_disjoint, join

FORMAT = "gpart-jax-adapter"
FORMAT_VERSION = 2
MANIFEST = "adapter.json"
LOCK = ".lock"
# what a save writes (a killed save may leave a tensors file that no manifest names yet, or the
# staging directory of one)
_OURS = re.compile(r"^(adapter\.json|\.lock|tensors-[0-9a-f]{32}\.safetensors|"
                   r"\.tensors-[0-9a-f]{32}\.tmp|\.adapter\.json\.[^/]*\.tmp)$")


class Adapter(NamedTuple):
    """What ``load_adapter`` returns: the rebuilt method, its trainable pytree, the saved modules
    (``{path: array}``) and the manifest."""

    method: Method
    trainable: Any
    saved: dict[str, np.ndarray]
    metadata: dict


def _package_version() -> str:
    from gpart_jax import __version__

    return __version__


def _sha256(x) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x)).tobytes()).hexdigest()


def _manifest_sha256(manifest: dict) -> str:
    return files.json_sha256(manifest, without="manifest_sha256")


def _describe(entries: list[tuple[str, np.ndarray]]) -> list[dict]:
    return [{"path": p, "shape": list(x.shape), "dtype": str(x.dtype), "sha256": _sha256(x)}
            for p, x in entries]


def _host_arrays(tree, what: str) -> list[tuple[str, np.ndarray]]:
    """``(path, numpy array)`` of every leaf, refusing non-arrays and non-finite values."""
    out = []
    for path, leaf in leaves_with_paths(tree)[0]:
        if isinstance(leaf, jax.ShapeDtypeStruct) or not hasattr(leaf, "dtype"):
            raise TypeError(f"{what} leaf {path or '(root)'} is {type(leaf).__name__}, not an array")
        x = np.asarray(jax.device_get(leaf))
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x)))
            raise ValueError(f"{what} leaf {path or '(root)'} holds {bad} non-finite values (NaN or "
                             f"inf); refusing to save a broken adapter")
        out.append((path, x))
    return out


def _check_trainable(method: Method, trainable) -> None:
    """``trainable`` has the structure, shapes and dtypes of ``method.init``'s result."""
    want = method.trainable_shapes()
    want_flat, want_def = jax.tree_util.tree_flatten(want)
    try:
        have_flat = want_def.flatten_up_to(trainable)
    except (ValueError, TypeError) as e:
        raise TypeError(f"trainable does not have the structure {method.name}'s init gives "
                        f"({want_def}): {e}") from None
    for (path, _), w, h in zip(leaves_with_paths(want)[0], want_flat, have_flat, strict=True):
        shape, dtype = getattr(h, "shape", None), getattr(h, "dtype", None)
        if shape is None or tuple(shape) != tuple(w.shape) or np.dtype(dtype) != np.dtype(w.dtype):
            raise ValueError(f"trainable leaf {path or '(root)'} is {dtype} {shape}; {method.name} "
                             f"needs {np.dtype(w.dtype)} {tuple(w.shape)}")


def _check_saved(saved) -> dict[str, Any]:
    if saved is None:
        return {}
    if not isinstance(saved, Mapping) or not all(isinstance(k, str) for k in saved):
        raise TypeError(f"saved must be a mapping {{path: array}} (gpart_jax.saved_modules), got "
                        f"{type(saved).__name__}")
    return dict(saved)


def _is_ours(directory: pathlib.Path) -> bool:
    """True when every entry of ``directory`` is a name this module writes."""
    return all(_OURS.match(entry.name) for entry in directory.iterdir())


def read_manifest(directory) -> dict:
    """The manifest of an adapter directory, validated for format, version and checksum."""
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise AdapterError(f"no adapter at {directory} (not a directory)")
    try:
        text = path.read_text()
    except FileNotFoundError:
        format_1 = (directory / "metadata" / "metadata").is_file()
        peft = (directory / "adapter_config.json").is_file()
        hint = ("it was written by gpart-jax 0.1 (format 1, orbax), which this version does not read: "
                "load it with 0.1 and save theta, its method and saved modules with this version"
                if format_1 else "it is a reference (PEFT) adapter: convert it with `gpart-jax peft import`"
                if peft else "was it written by gpart_jax.save_adapter?")
        raise AdapterError(f"{directory} is not a gpart-jax adapter (no {MANIFEST}); {hint}") from None
    except PermissionError as e:
        raise AdapterError(f"cannot read {path}: permission denied ({e.strerror}); fix the "
                           f"permissions") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AdapterCorruptError(f"cannot read {path}: {e}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdapterCorruptError(f"{path} is not valid JSON ({e}): the adapter is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AdapterError(f"{directory} is not a gpart-jax adapter (format "
                           f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("manifest_sha256") != _manifest_sha256(manifest):
        raise AdapterCorruptError(f"{path} does not match its sha256: the adapter was edited or "
                                  f"damaged")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdapterError(f"{directory} has adapter format {version!r}, newer than this gpart-jax "
                           f"reads ({FORMAT_VERSION}); upgrade gpart-jax")
    missing = [k for k in ("method", "tensors", "trainable", "saved") if k not in manifest]
    if missing:
        raise AdapterCorruptError(f"{path} lacks {missing}: the adapter is incomplete")
    invalid = _invalid_fields(manifest)
    if invalid:
        raise AdapterCorruptError(f"{path}: {invalid}, which save_adapter never writes: the manifest "
                                  f"was edited or written by another tool; save the adapter again")
    return manifest


_TENSORS = re.compile(r"^tensors-[0-9a-f]{32}\.safetensors$")


def _invalid_fields(manifest: dict) -> str | None:
    """What in a manifest (whose checksum verifies) is not of the form ``save_adapter`` writes."""
    if not isinstance(manifest["method"], dict):
        return f"its method is {type(manifest['method']).__name__}, not a JSON object"
    if not isinstance(manifest["tensors"], str) or not _TENSORS.match(manifest["tensors"]):
        return f"its tensors file name {manifest['tensors']!r} is not tensors-<32 hex>.safetensors"
    for group in ("trainable", "saved"):
        entries = manifest[group]
        if not isinstance(entries, list):
            return f"its {group} is {type(entries).__name__}, not a list"
        for i, e in enumerate(entries):
            fields = {"path": str, "shape": list, "dtype": str, "sha256": str}
            if not isinstance(e, dict) or any(not isinstance(e.get(k), t) for k, t in fields.items()):
                return f"its {group}[{i}] is not {{path, shape, dtype, sha256}}"
            if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in e["shape"]):
                return f"its {group}[{i}] has shape {e['shape']!r}"
    return None


def _write_tensors(target: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to the new file ``target`` (safetensors) and flush it to disk.

    safetensors' writer (0.8) writes through a temporary file of its own (``.tmpXXXXXX``) next
    to the file it is given, which a kill leaves behind; in the adapter's directory that would
    be a file no save may remove. So it writes in a staging directory of ours,
    ``.tensors-<id>.tmp/``, which a killed save leaves and the next save removes.
    """
    from safetensors.numpy import save_file

    staging = target.with_name(f".{target.stem}.tmp")
    staging.mkdir()
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(staging / target.name),
                  metadata={"format": FORMAT})
        os.chmod(staging / target.name, files.umask_mode(0o666))  # safetensors' temp is 0600
        os.rename(staging / target.name, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        files.fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_tensors(source: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(source), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise AdapterCorruptError(f"adapter {source.parent}: its tensors file {source.name} is "
                                  f"missing (the adapter is incomplete)") from None
    except PermissionError as e:
        raise AdapterError(f"cannot read {source}: permission denied ({e.strerror}); fix the "
                           f"permissions") from None
    except Exception as e:  # safetensors raises its own error type for a damaged header
        raise AdapterCorruptError(f"cannot read the arrays of adapter {source.parent}: "
                                  f"{type(e).__name__}: {str(e)[:200]}; the file is truncated or "
                                  f"damaged") from None


def _verified(manifest: dict, directory: pathlib.Path) -> tuple[list, list]:
    """The stored arrays, each checked against its recorded shape, dtype and sha256."""
    tensors = _read_tensors(directory / manifest["tensors"])
    out = []
    for group in ("trainable", "saved"):
        arrays = []
        for i, entry in enumerate(manifest[group]):
            name = entry["path"] or "(root)"
            if f"{group}/{i}" not in tensors:
                raise AdapterCorruptError(f"adapter {directory}: {group} array {name!r} is "
                                          f"missing from {manifest['tensors']}")
            x = np.asarray(tensors[f"{group}/{i}"])
            if (list(x.shape) != entry["shape"] or str(x.dtype) != entry["dtype"]
                    or _sha256(x) != entry["sha256"]):
                raise AdapterCorruptError(f"adapter {directory}: {group} array {name!r} does "
                                          f"not match its recorded shape, dtype or sha256 (damaged)")
            if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
                raise AdapterCorruptError(f"adapter {directory}: {group} array {name!r} holds "
                                          f"non-finite values")
            arrays.append((entry["path"], x))
        out.append(arrays)
    return out[0], out[1]


def save_adapter(directory, method: Method, trainable, *, saved: Mapping[str, Any] | None = None,
                 base_params=None, extra: dict | None = None, overwrite: bool = False) -> dict:
    """Write ``trainable`` (and the ``saved`` modules) of ``method`` to ``directory``.

    Args:
      directory: the adapter directory; its parent must exist.
      method: the method the trainable belongs to (a ``GPart``, a baseline).
      trainable: the method's trainable pytree (theta for GPart); checked against
        ``method.init``'s structure, shapes and dtypes, and for finite values.
      saved: modules trained in full, ``{path: array}`` (``gpart_jax.saved_modules``).
      base_params: optional; checked to fit the method and the saved modules, and their dtypes
        are recorded.
      extra: JSON-able fields stored as they are.
      overwrite: replace an existing adapter (never a directory that is not an adapter).

    Returns the manifest. Raises before anything is written on bad input.
    """
    if not isinstance(method, Method):
        raise TypeError(f"method must be a gpart_jax method (GPart, LoRA, ...), got "
                        f"{type(method).__name__}")
    _check_trainable(method, trainable)
    saved = _check_saved(saved)
    check_disjoint(method, saved)
    trainable_arrays = _host_arrays(trainable, "trainable")
    saved_arrays = _host_arrays(saved, "saved") if saved else []
    if base_params is not None:
        flat = leaves_with_paths(base_params)[0]
        check_params([_entry(p, s) for p, s in method.adapted], flat, f"this {method.name}")
        join(saved, base_params)  # shapes of the saved modules
    try:
        extra_json = json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as e:
        raise TypeError(f"extra must be JSON-able: {e}") from None
    directory = pathlib.Path(directory).absolute()
    if not directory.parent.is_dir():
        raise AdapterError(f"the parent directory {directory.parent} does not exist; create it first")
    if directory.exists() and not directory.is_dir():
        raise AdapterError(f"{directory} exists and is a file, not an adapter; nothing was written: "
                           f"choose another path")
    if directory.is_dir():
        _refuse_foreign(directory, overwrite)
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": _package_version(),
        "method": method.spec(), "tensors": f"tensors-{uuid.uuid4().hex}.safetensors",
        "trainable": _describe(trainable_arrays), "saved": _describe(saved_arrays),
        "extra": extra_json,
    }
    if base_params is not None:
        flat = dict(leaves_with_paths(base_params)[0])
        manifest["base_dtypes"] = {p: str(flat[p].dtype) for p in method.target_paths}
    manifest["manifest_sha256"] = _manifest_sha256(manifest)
    directory.mkdir(exist_ok=True)
    try:
        with files.PathLock(directory / LOCK, f"adapter {directory}"):
            _publish(directory, manifest, trainable_arrays, saved_arrays, overwrite)
    except files.LockedError as e:
        raise AdapterLockedError(str(e.strerror)) from None
    return manifest


def _entry(path, shape):
    from gpart_jax.layout import LayoutEntry

    return LayoutEntry(path, tuple(shape))


def _refuse_foreign(directory: pathlib.Path, overwrite: bool) -> None:
    """Raise unless ``directory`` is empty, an adapter we may replace, or our own leftovers."""
    if (directory / MANIFEST).exists():
        read_manifest(directory)  # refuses another format, as its own error says
        if not overwrite:
            raise AdapterError(f"{directory} holds an adapter; pass overwrite=True to replace it, "
                               f"or choose another directory")
    if not _is_ours(directory):
        foreign = sorted(e.name for e in directory.iterdir() if not _OURS.match(e.name))
        raise AdapterError(f"{directory} holds files that are not an adapter's ({foreign[:3]}); "
                           f"nothing was written, and nothing is ever written over them: choose "
                           f"another directory")


def _publish(directory: pathlib.Path, manifest: dict, trainable_arrays, saved_arrays,
             overwrite: bool) -> None:
    """Under the lock: new tensors, verified, then the manifest, then the old tensors go."""
    _refuse_foreign(directory, overwrite)  # again, now that no other writer can change it
    target = directory / manifest["tensors"]
    arrays = {f"trainable/{i}": x for i, (_, x) in enumerate(trainable_arrays)}
    arrays |= {f"saved/{i}": x for i, (_, x) in enumerate(saved_arrays)}
    try:
        _write_tensors(target, arrays)
        _verified(manifest, directory)  # read back: what was written is what was given
        files.fsync_tree(target)  # on disk before the manifest names it
        files.write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    except BaseException as e:
        _remove(target)
        if files.disk_full(e):
            raise AdapterError(f"the disk is full: adapter {directory} was not written (the previous "
                               f"one, if any, is intact); free some space and save again") from None
        if files.os_errno(e) in (errno.EACCES, errno.EPERM):
            raise AdapterError(f"cannot write adapter {directory}: permission denied "
                               f"({os.strerror(files.os_errno(e))}); fix the permissions or choose "
                               f"another directory") from None
        raise
    for entry in directory.iterdir():  # the old tensors and any leftovers of killed saves
        if _OURS.match(entry.name) and entry.name not in (MANIFEST, LOCK, manifest["tensors"]):
            _remove(entry)


def _remove(path: pathlib.Path) -> None:
    """Delete a file or directory this module wrote, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def load_adapter(directory, *, base_params=None, method: Method | None = None) -> Adapter:
    """Read an adapter written by ``save_adapter``, verify it and rebuild its method.

    Every array is checked against its recorded sha256 (a flipped byte is
    ``AdapterCorruptError``, not wrong numbers) and for finite values. The method is rebuilt from
    the recorded spec; with ``base_params`` it is rebuilt on them, so that a base whose adapted
    paths or shapes differ is a ``LayoutMismatchError`` naming the first differences, and the
    saved modules are checked to fit it. With ``method``, the stored method must be that one
    (same spec), else ``AdapterError``.
    """
    directory = pathlib.Path(directory).absolute()
    for attempt in range(3):  # a save may replace the manifest and its tensors as we read them
        manifest = read_manifest(directory)
        try:
            return _load(directory, manifest, base_params, method)
        except AdapterCorruptError:
            if attempt == 2 or read_manifest(directory) == manifest:
                raise
    raise AssertionError("unreachable")


def _load(directory: pathlib.Path, manifest: dict, base_params, method) -> Adapter:
    spec = manifest["method"]
    try:
        rebuilt = methods.from_spec(spec, base_params if base_params is not None
                                    else _shapes_of(spec))
    except (LayoutMismatchError, TargetError):  # the base does not fit: said as such
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # the manifest verifies (its sha256 was recomputed), but its method record is not one
        # that save_adapter writes: edited by hand or written by another tool
        raise AdapterCorruptError(f"{directory / MANIFEST}: the method description is incomplete "
                                  f"or invalid ({type(e).__name__}: {e}); the manifest was edited "
                                  f"or written by another tool: save the adapter again") from None
    if method is not None and method.spec() != rebuilt.spec():
        raise AdapterError(f"adapter {directory} was written by {_describe_spec(spec)}, not by the "
                           f"given {_describe_spec(method.spec())}")
    trainable_arrays, saved_arrays = _verified(manifest, directory)
    treedef = jax.tree_util.tree_structure(rebuilt.trainable_shapes())
    want = [p for p, _ in leaves_with_paths(rebuilt.trainable_shapes())[0]]
    if want != [p for p, _ in trainable_arrays]:
        raise AdapterCorruptError(f"adapter {directory}: its arrays {[p for p, _ in trainable_arrays][:3]} "
                                  f"are not the trainable leaves of its method ({want[:3]})")
    trainable = jax.tree_util.tree_unflatten(treedef, [x for _, x in trainable_arrays])
    try:
        _check_trainable(rebuilt, trainable)
    except (TypeError, ValueError) as e:  # a file whose arrays do not fit its own method
        raise AdapterCorruptError(f"adapter {directory}: {e}; the manifest was edited or is "
                                  f"inconsistent") from None
    saved = dict(saved_arrays)
    if base_params is not None and saved:
        join(saved, base_params)
    return Adapter(method if method is not None else rebuilt, trainable, saved, manifest)


def _describe_spec(spec: dict) -> str:
    keys = [k for k in ("d", "r", "seed", "scheme", "isometric") if k in spec]
    return f"{spec.get('method')} (" + ", ".join(f"{k}={spec[k]}" for k in keys) + ")"


def _shapes_of(spec: dict) -> dict:
    """A nested dict of ``jax.ShapeDtypeStruct``s with the adapted leaves a spec records."""
    items = ([(e[0], e[1]) for e in spec.get("layout", [])] or
             [(p, s) for p, s in spec.get("adapted", [])])
    tree: dict = {}
    for path, shape in items:
        node = tree
        *parents, leaf = str(path).split("/")
        for p in parents:
            node = node.setdefault(p, {})
        dims = tuple(int(s) for s in shape)
        if any(n < 0 for n in dims):
            raise ValueError(f"adapted leaf {path} has shape {dims}")
        node[leaf] = jax.ShapeDtypeStruct(dims, np.float32)
    return tree


def directory_size(directory) -> int:
    """Bytes of the files in a directory tree (an adapter's size on disk), without the writers'
    lock file, whose few bytes (the last writer's process id and host) are not the adapter."""
    total = 0
    for root, _, names in os.walk(directory):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in names if f != LOCK)
    return total


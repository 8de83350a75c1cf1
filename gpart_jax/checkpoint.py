"""Adapter files and training-run checkpoints, written with orbax.

**Adapter** (``save_adapter`` / ``load_adapter``): a directory holding

* ``tensors/``: the adapter's arrays (for GPart, ``theta``: about ``4 d`` bytes) and the saved
  modules' arrays, in orbax's format (OCDBT, zstd);
* ``metadata/``: JSON with the format version, the package version, the method's description
  (for GPart: ``d``, ``seed``, ``scheme``, ``isometric``, ``scope`` and the layout itself, the
  ordered list of adapted paths and shapes, with its fingerprint), the base dtypes (for
  information), and the shape, dtype and sha256 of every stored array.

Loading verifies every sha256, so a flipped byte is an error rather than wrong numbers, and
wraps orbax's failures on truncated or damaged files into ``AdapterCorruptError``. Loading onto
base params whose layout differs raises ``LayoutMismatchError`` naming the first paths that differ.

**Training runs** (``RunCheckpointer``): an orbax ``CheckpointManager`` that keeps the last ``k``
steps and the best step by a metric (both at once), stores the whole training state (trainable,
optimizer state, RNG) plus JSON (data position, metrics, a config fingerprint), and resumes from
the latest step. orbax writes each step into a temporary directory and renames it when complete,
so a save killed half-way never damages an earlier checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from gpart_jax.core import GPart, LayoutMismatchError
from gpart_jax.layout import flatten_with_paths

FORMAT = "gpart-jax-adapter"
FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter directory that cannot be used (missing, wrong format, wrong model)."""


class AdapterCorruptError(AdapterError):
    """An adapter whose files are truncated or whose bytes differ from their recorded sha256."""


class LoadedAdapter(NamedTuple):
    trainable: dict  # {"adapter": ..., "saved": {path: array}}
    metadata: dict
    gpart: GPart | None  # rebuilt on base_params when the adapter is a GPart and they were given


def _package_version() -> str:
    from gpart_jax import __version__

    return __version__


def _sha256(x) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x)).tobytes()).hexdigest()


def _describe(entries: list[tuple[str, Any]]) -> list[dict]:
    return [{"path": p, "shape": list(np.shape(x)), "dtype": str(np.asarray(x).dtype),
             "sha256": _sha256(x)} for p, x in entries]


def _gpart_of(method) -> GPart | None:
    if isinstance(method, GPart):
        return method
    return getattr(method, "gpart", None)


def _metadata_sha256(metadata: dict) -> str:
    body = {k: v for k, v in metadata.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_adapter(directory, method, trainable: dict, *, base_params=None, extra: dict | None = None,
                 overwrite: bool = False) -> dict:
    """Write ``trainable`` (``{"adapter", "saved"}``) and its metadata to ``directory``.

    ``method``: the ``Method`` (or ``GPart``) that built the adapter. ``base_params`` (optional)
    records the base dtypes of the adapted leaves. ``extra``: JSON-able fields stored as is.
    Refuses to overwrite an existing directory unless ``overwrite=True``. Returns the metadata.
    """
    directory = pathlib.Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise AdapterError(f"{directory} exists; pass overwrite=True or choose another directory")
    adapter_entries, _ = flatten_with_paths(trainable["adapter"])
    saved = dict(trainable["saved"])
    gp = _gpart_of(method)
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "method": method.metadata() if hasattr(method, "metadata") else {"method": "gpart"},
        "gpart": gp.spec() if gp is not None else None,
        "adapter": _describe(adapter_entries),
        "saved": _describe(list(saved.items())),
        "extra": extra or {},
    }
    if base_params is not None:
        flat = dict(flatten_with_paths(base_params)[0])
        targets = getattr(method, "target_paths", None) or (
            [e.path for e in gp.layout] if gp is not None else [])
        metadata["base_dtypes"] = {p: str(flat[p].dtype) for p in targets if p in flat}
    # A checksum of the metadata itself: an edited seed or layout must not pass silently.
    metadata["metadata_sha256"] = _metadata_sha256(metadata)
    tensors = {"adapter": {f"a{i}": np.asarray(x) for i, (_, x) in enumerate(adapter_entries)},
               "saved": {f"s{i}": np.asarray(x) for i, x in enumerate(saved.values())}}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        ckpt.save(directory, ocp.args.Composite(tensors=ocp.args.StandardSave(tensors),
                                                metadata=ocp.args.JsonSave(metadata)),
                  force=overwrite)
    return metadata


def read_adapter_metadata(directory) -> dict:
    """The metadata JSON of an adapter directory, validated for format and version."""
    directory = pathlib.Path(directory).absolute()
    path = directory / "metadata" / "metadata"
    if not directory.is_dir():
        raise AdapterError(f"no adapter at {directory} (not a directory)")
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"{directory} is not a gpart-jax adapter (no metadata/metadata); "
                           f"was it written by save_adapter?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterCorruptError(f"adapter metadata {path} is corrupted: {e}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise AdapterError(f"{directory} is not a gpart-jax adapter (format "
                           f"{metadata.get('format') if isinstance(metadata, dict) else None!r})")
    if metadata.get("metadata_sha256") != _metadata_sha256(metadata):
        raise AdapterCorruptError(f"adapter metadata {path} does not match its sha256 (edited or "
                                  f"corrupted)")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise AdapterError(f"{directory} has adapter format {metadata['format_version']}, newer than "
                           f"this gpart-jax ({FORMAT_VERSION}); upgrade gpart-jax to read it")
    return metadata


def _check_method(metadata: dict, method) -> None:
    stored = metadata["method"]
    current = method.metadata() if hasattr(method, "metadata") else None
    gp = _gpart_of(method)
    if gp is not None and metadata.get("gpart") is not None:
        spec = metadata["gpart"]
        if spec["fingerprint"] != gp.fingerprint:
            from gpart_jax.core import layout_diff
            from gpart_jax.layout import LayoutEntry

            stored_layout = tuple(LayoutEntry.from_json(e) for e in spec["layout"])
            diff = layout_diff(stored_layout, gp.layout)
            raise LayoutMismatchError(
                "adapter and GPart differ: " + ("; ".join(diff) if diff else
                                                f"d/scheme/scope differ (adapter d={spec['d']}, "
                                                f"scheme={spec['scheme']}, scope={spec['scope']})"))
        if int(spec["seed"]) != gp.seed or bool(spec["isometric"]) != gp.isometric:
            raise AdapterError(f"adapter has seed {spec['seed']} and isometric={spec['isometric']}, "
                               f"the GPart has seed {gp.seed} and isometric={gp.isometric}")
    elif current is not None and current != stored:
        raise AdapterError(f"adapter was written by method {stored}, not {current}")


def load_adapter(directory, *, method=None, base_params=None) -> LoadedAdapter:
    """Read an adapter written by ``save_adapter`` and verify it.

    Give ``method`` (the ``Method``/``GPart`` to use it with) to check that it matches and to
    restore the adapter's pytree structure; or ``base_params`` to rebuild a GPart adapter's plan
    on them (its layout must match: else ``LayoutMismatchError`` names the first paths that
    differ). Without either, a multi-leaf adapter comes back as ``{path: array}``.
    """
    directory = pathlib.Path(directory).absolute()
    metadata = read_adapter_metadata(directory)
    gp = None
    if method is not None:
        _check_method(metadata, method)
        gp = _gpart_of(method)
    elif base_params is not None and metadata.get("gpart") is not None:
        gp = GPart.from_spec(base_params, metadata["gpart"])
    abstract = {
        "adapter": {f"a{i}": jax.ShapeDtypeStruct(tuple(e["shape"]), np.dtype(e["dtype"]))
                    for i, e in enumerate(metadata["adapter"])},
        "saved": {f"s{i}": jax.ShapeDtypeStruct(tuple(e["shape"]), np.dtype(e["dtype"]))
                  for i, e in enumerate(metadata["saved"])},
    }
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
            restored = ckpt.restore(directory, ocp.args.Composite(
                tensors=ocp.args.StandardRestore(abstract)))
        tensors = restored.tensors
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise AdapterCorruptError(f"cannot read the arrays of adapter {directory}: "
                                  f"{type(e).__name__}: {str(e)[:300]}; the files may be truncated "
                                  f"or corrupted") from e
    arrays = {}
    for group, key in (("adapter", "a"), ("saved", "s")):
        for i, entry in enumerate(metadata[group]):
            x = np.asarray(tensors[group][f"{key}{i}"])
            if list(x.shape) != entry["shape"] or str(x.dtype) != entry["dtype"] or \
                    _sha256(x) != entry["sha256"]:
                raise AdapterCorruptError(f"adapter {directory}: {group} array {entry['path']!r} "
                                          f"does not match its recorded sha256 (corrupted file)")
            arrays[(group, entry["path"])] = x
    adapter_entries = [arrays[("adapter", e["path"])] for e in metadata["adapter"]]
    if method is not None and hasattr(method, "adapter_shapes"):
        treedef = jax.tree_util.tree_structure(method.adapter_shapes())
        adapter = jax.tree_util.tree_unflatten(treedef, adapter_entries)
    elif len(metadata["adapter"]) == 1 and metadata["adapter"][0]["path"] == "":
        adapter = adapter_entries[0]
    else:
        adapter = {e["path"]: x for e, x in zip(metadata["adapter"], adapter_entries, strict=True)}
    saved = {e["path"]: arrays[("saved", e["path"])] for e in metadata["saved"]}
    return LoadedAdapter({"adapter": adapter, "saved": saved}, metadata, gp)


def directory_size(directory) -> int:
    """Bytes of all files under ``directory`` (what an adapter takes on disk)."""
    total = 0
    for root, _, files in os.walk(directory):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


# --------------------------------------------------------------------------- training runs

class RunCheckpointer:
    """Checkpoints of a training run: keep the last ``keep_last`` and the best by ``best_metric``.

    ``state`` is any pytree of arrays (trainable, optimizer state, ``jax.random.key_data`` of the
    RNG, step counters); ``info`` is JSON (data position, metrics, anything needed to resume).
    A ``config_fingerprint`` is stored with each step; ``restore`` refuses a directory written
    by another config, so results of different configs are never mixed.
    """

    def __init__(self, directory, *, keep_last: int = 2, best_metric: str | None = None,
                 best_mode: str = "max", config_fingerprint: str | None = None):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = pathlib.Path(directory).absolute()
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.config_fingerprint = config_fingerprint
        policies = [ocm.LatestN(n=keep_last)]
        if best_metric is not None:
            policies.append(ocm.BestN(get_metric_fn=lambda m: m[best_metric],
                                      reverse=best_mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False))
        # best_fn makes orbax write each step's metrics to disk: without it they live in memory
        # only, and a resumed run (a new manager) would forget the best step and delete it.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            best_fn=None if best_metric is None else (lambda m: m[best_metric]),
            best_mode=best_mode, enable_async_checkpointing=False, create=True)
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "info"),
                                              options=options)

    def save(self, step: int, state, info: dict | None = None, metrics: dict | None = None) -> None:
        """Save ``state`` and ``info`` as ``step`` (metrics rank it for the best-N policy)."""
        info = dict(info or {})
        info["config_fingerprint"] = self.config_fingerprint
        if metrics is not None:
            info["metrics"] = metrics
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), info=ocp.args.JsonSave(info)),
            metrics=metrics, force=True)
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (None without a metric or metrics)."""
        if self.best_metric is None:
            return None
        scored = []
        for step in self.all_steps():
            info = self._manager.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore())).info
            value = (info.get("metrics") or {}).get(self.best_metric)
            if value is not None:
                scored.append((value, step))
        if not scored:
            return None
        return (max(scored) if self.best_mode == "max" else min(scored))[1]

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict]:
        """``(state, info)`` of ``step`` (default: the latest). ``abstract_state`` gives the tree
        structure, shapes and dtypes (e.g. ``jax.eval_shape`` of the initial state)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        info = self._manager.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore())).info
        if info.get("config_fingerprint") != self.config_fingerprint:
            raise AdapterError(f"{self.directory} holds a run of another config (fingerprint "
                               f"{info.get('config_fingerprint')}, this one "
                               f"{self.config_fingerprint}); use another directory")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored.state, info

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

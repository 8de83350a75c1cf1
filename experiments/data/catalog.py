"""``load(name, split)``: one entry point for the offline sources and the TFDS catalog.

An offline name (:data:`OFFLINE_NAMES`) is built from local files into array_record on first
use (seconds; Fashion-MNIST about a minute) under the data directory, ``$GPART_JAX_DATA`` or
``~/.cache/gpart-jax/tfds``. Any other name (``"glue/sst2"``, ``"mnist"``, or
``"gpart_data/digits"``) goes through ``tfds.builder``: it loads if already prepared there in
array_record format, and otherwise raises :class:`DataUnavailableError` unless
``download=True`` (which needs network access and fails with the same error offline).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from experiments.data.sources import OFFLINE_NAMES, SOURCES, DataUnavailableError

# Catalog datasets name their text feature differently; the first present becomes "text".
CATALOG_TEXT_KEYS = ("text", "sentence", "content", "document", "review")


def default_data_dir() -> Path:
    """``$GPART_JAX_DATA`` if set, else ``~/.cache/gpart-jax/tfds``."""
    env = os.environ.get("GPART_JAX_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpart-jax" / "tfds"


def _tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataUnavailableError(
            "tensorflow-datasets is not installed; install it with `pip install tensorflow-datasets==4.9.10`"
        ) from None
    return tfds


class Source(Sequence[dict[str, Any]]):
    """Random access to one split: ``len(src)``, ``src[i]``, ``src[i:j]``, ``src.column("label")``.

    Examples are dicts of Python/numpy values: text features as ``str``, class labels as ``int``,
    images as ``uint8`` arrays. The object also satisfies grain's ``RandomAccessDataSource``.

    Attributes:
        name: the name given to :func:`load`.
        split: the split given to :func:`load`.
        label_names: class names indexed by label, or ``None`` without a ``label`` feature.
        info: the ``tfds.core.DatasetInfo`` of the builder.
    """

    def __init__(self, name: str, split: str, data_source: Sequence[Any], info: Any) -> None:
        self.name, self.split, self.info = name, split, info
        self._data = data_source
        tfds = _tfds()
        features = info.features
        self._text = {k for k, f in features.items() if isinstance(f, tfds.features.Text)}
        self._rename = {}
        if "text" not in features:
            key = next((k for k in CATALOG_TEXT_KEYS if k in self._text), None)
            if key is not None:
                self._rename[key] = "text"
        label = features["label"] if "label" in features else None
        self.label_names: tuple[str, ...] | None = (
            tuple(label.names) if isinstance(label, tfds.features.ClassLabel) else None
        )

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or ``None`` without a class label."""
        return None if self.label_names is None else len(self.label_names)

    def __len__(self) -> int:
        return len(self._data)

    def _decode(self, example: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in example.items():
            if key in self._text:
                value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            elif isinstance(value, np.generic):
                value = value.item()
            out[self._rename.get(key, key)] = value
        return out

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return self.__getitems__(range(*index.indices(len(self))))
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return self._decode(self._data[index % len(self)])

    def __getitems__(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """Several examples in one read (what grain calls for a batch)."""
        indices = [int(i) for i in indices]
        if hasattr(self._data, "__getitems__"):
            return [self._decode(ex) for ex in self._data.__getitems__(indices)]
        return [self._decode(self._data[i]) for i in indices]

    def column(self, key: str) -> list[Any]:
        """All values of one feature, in index order (``"text"`` of every example, say)."""
        return [ex[key] for ex in self.__getitems__(range(len(self)))]

    def __repr__(self) -> str:
        return f"Source({self.name!r}, split={self.split!r}, n={len(self)}, labels={self.num_classes})"


def builder(name: str, data_dir: str | Path | None = None) -> Any:
    """The TFDS builder of an offline name (a ``GpartData`` config), of a TFDS dataset directory
    (a path with ``/`` that exists: ``tfds.builder_from_directory``) or of a catalog name."""
    tfds = _tfds()
    if "/" in name and Path(name).is_dir():
        try:
            return tfds.builder_from_directory(name)
        except Exception as e:
            raise DataUnavailableError(f"{name} is not a TFDS dataset directory (one holding "
                                       f"dataset_info.json, as tfds writes it): {e}") from None
    data_dir = str(data_dir or default_data_dir())
    if name in SOURCES:
        from experiments.data.builder import GpartData

        return GpartData(config=name, data_dir=data_dir, file_format="array_record")
    if name.startswith("gpart_data/"):
        import experiments.data.builder  # noqa: F401  (registers gpart_data in the catalog)
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataUnavailableError(
            f"{name!r} is neither an offline source ({', '.join(OFFLINE_NAMES)}) nor a usable TFDS "
            f"catalog name: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def prepare(name: str, data_dir: str | Path | None = None, download: bool = False) -> Any:
    """Builds ``name`` into ``data_dir`` if needed and returns its prepared builder.

    Offline sources are always built (from local files). A catalog dataset is downloaded and
    built only with ``download=True``.

    Raises:
        DataUnavailableError: a package or file is missing, or a catalog dataset is not prepared.
    """
    b = builder(name, data_dir)
    if b.is_prepared():
        return b
    if name in SOURCES or name.startswith("gpart_data/"):
        b.download_and_prepare(file_format="array_record")
        return b
    where = b.data_dir
    if not download:
        raise DataUnavailableError(
            f"TFDS dataset {name!r} is not prepared in {where}; prepare it once with network access "
            f"(load({name!r}, split, download=True), or `tfds build {name} --data_dir "
            f"{data_dir or default_data_dir()} --file_format array_record`), or use an offline source: "
            f"{', '.join(OFFLINE_NAMES)}"
        )
    try:
        b.download_and_prepare(file_format="array_record")
    except Exception as e:
        raise DataUnavailableError(
            f"could not download and prepare TFDS dataset {name!r} into {where} (offline?): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return b


def load(name: str, split: str, *, data_dir: str | Path | None = None, download: bool = False) -> Source:
    """Random-access examples of ``split`` of an offline source or a TFDS catalog dataset.

    Args:
        name: an offline source (``"rotten_tomatoes"``, ``"r8"``, ``"r52"``, ``"20newsgroups"``,
            ``"election_tweets"``, ``"fashion_mnist"``, ``"mnist5k"``, ``"digits"``,
            ``"gsm_symbolic"``, ``"gsm8k"``) or a TFDS catalog name (``"glue/sst2"``, ``"mnist"``).
        split: ``"train"``, ``"validation"`` or ``"test"`` (what the dataset has; TFDS slicing
            such as ``"train[:10%]"`` works too).
        data_dir: where prepared datasets live (default :func:`default_data_dir`).
        download: let a catalog dataset download (network needed); offline sources never download.

    Returns:
        A :class:`Source`: text sources give ``{"text", "label"}``, images ``{"image", "label"}``
        (``uint8 (H, W, 1)``), math ``{"question", "answer", "solution"}``.

    Raises:
        DataUnavailableError: the data cannot be found or built here; the message says how to fix it.
    """
    b = prepare(name, data_dir, download)
    available = list(b.info.splits.keys())
    base = split.split("[")[0].split("+")[0]
    if base not in available:
        raise ValueError(f"{name!r} has no split {split!r}; available: {', '.join(available)}")
    return Source(name, split, b.as_data_source(split=split), b.info)

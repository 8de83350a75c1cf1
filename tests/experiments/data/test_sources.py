"""experiments/data/sources.py: the offline sources, their fixed hash splits, GSM answers, and the
fixed training subsets the runs cut from them (``experiments.tasks.subset_indices``)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from experiments import data
from experiments.data import sources
from experiments.data.report import RESULTS, split_fingerprint
from tests.experiments.data.conftest import prepared
from tests.installed import require_fashion_mnist

COMMITTED = json.loads(RESULTS.read_text())["sources"]
SPLITS = {name: spec.splits for name, spec in sources.SOURCES.items()}


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


def test_example_key_is_text_image_bytes_or_question() -> None:
    image = np.arange(4, dtype=np.uint8).reshape(2, 2, 1)
    assert sources.example_key({"text": "café", "label": 0}) == "café".encode()
    assert sources.example_key({"image": image, "label": 0}) == image.tobytes()
    assert sources.example_key({"question": "q?", "answer": "1"}) == b"q?"


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
    with pytest.raises(data.DataUnavailableError, match="reinstall it with `pip install x`"):
        sources.locate_package_file("numpy", "no/such/file.csv", "pip install x")
    monkeypatch.setenv("GPART_JAX_FASHION_MNIST_DIR", "/nonexistent")
    with pytest.raises(data.DataUnavailableError, match="apt-get install -y dataset-fashion-mnist"):
        sources.read_fashion_mnist("train")


def test_unknown_source_lists_the_offline_names() -> None:
    with pytest.raises(KeyError, match="known: rotten_tomatoes, 20newsgroups"):
        sources.prepare("no_such_source")


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


# ----------------------------------------------------------------------------- fixed subsets

# The experiments' fixed training subsets (configs: Rotten Tomatoes 5,632 of 10,243, R8 2,048 of
# 4,898, 20 Newsgroups 2,048 of 10,138, GSM-symbolic 512 of 8,884, GSM8K 200 of 1,319) come from
# numpy's default_rng permutation, whose stream numpy may change in a new version. These digests
# lock the cuts that the committed results used: if one fails, a numpy upgrade changed which
# examples every run trains on, and the results are no longer comparable.
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
    assert np.all(np.diff(indices) > 0)  # sorted: the subset keeps the split's order
    digest = hashlib.sha256(np.asarray(indices, "<i8").tobytes()).hexdigest()[:16]
    assert digest == SUBSET_DIGESTS[total, n], "numpy's default_rng stream changed the fixed subset"
    assert np.array_equal(subset_indices(total, 0), np.arange(total))
    assert np.array_equal(subset_indices(total, total + 5), np.arange(total))


def test_committed_subset_sizes_are_the_configs() -> None:
    """The digests above are of the cuts the configs make (sizes of the prepared splits)."""
    from experiments.config import load_config

    cuts = {}
    for config in ("configs/minilm.py:task=rt", "configs/minilm.py:task=r8",
                   "configs/minilm.py:task=20ng", "configs/smollm2_gsm.py:scale=cpu"):
        t = load_config(config).task
        cuts[t.dataset] = (len(prepared(t.dataset).splits[t.train_split]), t.train_examples)
        if t.test_dataset:
            cuts[t.test_dataset] = (len(prepared(t.test_dataset).splits[t.test_split]), t.test_examples)
    assert set(cuts.values()) == set(SUBSET_DIGESTS)

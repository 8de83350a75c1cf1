"""experiments/data/arrays.py: shuffled, resumable batches of fixed-shape arrays (the images)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data.arrays import ArrayBatches
from experiments.data.text import Position


def _arrays(n: int = 10) -> dict[str, np.ndarray]:
    return {"image": np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2, 1),
            "label": np.arange(n, dtype=np.int32)}


def test_every_example_once_an_epoch_with_padding_rows() -> None:
    batches = ArrayBatches(_arrays(), batch_size=4, seed=3)
    assert len(batches) == 3 and batches.num_examples == 10
    seen = []
    for batch in batches.epoch(0):
        rows = batch["weight"] > 0
        assert batch["image"].shape == (4, 2, 2, 1) and batch["image"].dtype == np.float32
        np.testing.assert_array_equal(batch["index"][rows], batch["label"][rows])
        np.testing.assert_array_equal(batch["image"][rows, 0, 0, 0], 4 * batch["label"][rows])
        assert (batch["index"][~rows] == -1).all() and not batch["image"][~rows].any()
        seen += batch["label"][rows].tolist()
    assert sorted(seen) == list(range(10)) and seen != list(range(10))


def test_order_is_the_seed_and_epoch_permutation_or_index_order() -> None:
    batches = ArrayBatches(_arrays(), batch_size=4, seed=3)
    want = np.random.default_rng([3, 1]).permutation(10)
    np.testing.assert_array_equal(np.concatenate(batches.plan(1)), want)
    assert [b.tolist() for b in batches.plan(1)] != [b.tolist() for b in batches.plan(2)]
    plain = ArrayBatches(_arrays(), batch_size=4, shuffle=False)
    assert [b.tolist() for b in plain.plan(7)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_stream_resumes_where_it_stopped() -> None:
    batches = ArrayBatches(_arrays(), batch_size=4, seed=0)
    stream = batches.stream()
    run = [next(stream) for _ in range(8)]
    assert [p for p, _ in run[:4]] == [Position(0, 0), Position(0, 1), Position(0, 2), Position(1, 0)]
    for k in (2, 3, 5):
        resumed = batches.stream(run[k][0])
        for pos, batch in run[k:]:
            pos2, batch2 = next(resumed)
            assert pos2 == pos
            np.testing.assert_array_equal(batch2["label"], batch["label"])
    assert next(batches.stream(Position(0, 3)))[0] == Position(1, 0)  # step == len: next epoch


def test_arrays_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        ArrayBatches({"image": np.zeros((3, 2)), "label": np.zeros(4)}, batch_size=2)
    with pytest.raises(ValueError, match="non-empty"):
        ArrayBatches({"image": np.zeros((0, 2))}, batch_size=2)

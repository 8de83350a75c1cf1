"""experiments/data/text.py: the WordPiece tokenizer, length-bucketed resumable batches
(``BucketedBatches``) and the causal LM's batches with a loss mask (``LMBatches``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import data
from experiments.data.report import RESULTS
from experiments.data.text import (
    BucketedBatches,
    LMBatches,
    Position,
    WordPieceTokenizer,
    bucket_length,
    text_batches,
)


def test_tokenizer_frames_and_truncates(tokenizer: WordPieceTokenizer) -> None:
    ids = tokenizer.encode(["Hello world!", "word " * 500])
    assert ids[0].tolist() == [101, 7592, 2088, 999, 102]  # [CLS] hello world ! [SEP]
    assert len(ids[1]) == 128 and ids[1][0] == tokenizer.cls_id and ids[1][-1] == tokenizer.sep_id
    assert tokenizer.pad_id == 0 and tokenizer.vocab_size == 30522
    assert tokenizer.decode(ids[0]) == "hello world!"


def test_encode_padded_pads_to_max_length_or_longest(tokenizer: WordPieceTokenizer) -> None:
    short = WordPieceTokenizer(tokenizer.path, max_length=8)
    fixed = short.encode_padded(["Hello world!", "a b c d e f g h i j"])
    assert fixed["input_ids"].shape == (2, 8) and fixed["input_ids"].dtype == np.int32
    assert fixed["input_ids"][0].tolist() == [101, 7592, 2088, 999, 102, 0, 0, 0]
    assert fixed["attention_mask"][0].tolist() == [1] * 5 + [0] * 3
    assert fixed["input_ids"][1, -1] == short.sep_id and fixed["attention_mask"][1].all()
    longest = short.encode_padded("Hello world!", padding="longest")
    assert longest["input_ids"].shape == (1, 5) and not longest["token_type_ids"].any()
    with pytest.raises(ValueError, match="padding must be"):
        short.encode_padded("x", padding="right")


def _toy(n: int = 203, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 120, size=n)
    return [np.arange(1, k + 1, dtype=np.int32) for k in lengths], rng.integers(0, 5, size=n)


def test_bucket_length() -> None:
    assert [bucket_length(n, (16, 32)) for n in (1, 16, 17, 32)] == [16, 16, 32, 32]
    with pytest.raises(ValueError, match="exceeds the largest bucket 32"):
        bucket_length(33, (16, 32))


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
    with pytest.raises(ValueError, match="labels for"):
        BucketedBatches(seqs, labels[:3], batch_size=16)
    with pytest.raises(ValueError, match="no full batch"):
        BucketedBatches(seqs[:3], batch_size=16, drop_remainder=True)


def test_lm_batches_mask_the_answer_tokens_only() -> None:
    seqs = [np.arange(1, k + 1, dtype=np.int32) for k in (5, 9, 3)]
    prompts = [2, 6, 1]
    batches = LMBatches(seqs, prompts, batch_size=4, shuffle=False, buckets=(8, 16), pad_id=0)
    (batch,) = list(batches.epoch(0))
    assert "label" not in batch and batch["loss_mask"].dtype == np.float32
    assert batch["input_ids"].shape == (4, 16)
    for row, i in enumerate(batch["index"]):
        want = np.zeros(16, np.float32)
        if i >= 0:
            want[prompts[i]:len(seqs[i])] = 1
        np.testing.assert_array_equal(batch["loss_mask"][row], want)
    assert batch["loss_mask"].sum() == (5 - 2) + (9 - 6) + (3 - 1)


def test_text_batches_buckets_end_at_the_tokenizer_length(tokenizer: WordPieceTokenizer) -> None:
    short = WordPieceTokenizer(tokenizer.path, max_length=40)
    rows = [{"text": "word " * n, "label": n % 2} for n in range(1, 60)]
    batches = text_batches(rows, short, batch_size=8, seed=0)
    assert batches.buckets == (16, 32, 40)
    assert batches.lengths.max() == 40 and batches.labels.tolist() == [n % 2 for n in range(1, 60)]
    unlabelled = text_batches(rows, short, batch_size=8, label_key=None, buckets=(40,))
    assert unlabelled.labels is None and unlabelled.buckets == (40,)


def test_rotten_tomatoes_bucketing_saves_padding(data_dir: Path, tokenizer: WordPieceTokenizer) -> None:
    train = data.load("rotten_tomatoes", "train", data_dir=data_dir)
    batches = text_batches(train, tokenizer, batch_size=32, seed=0, window=50)
    stats = batches.padding_stats(0)
    assert stats["real_tokens"] <= stats["longest_in_batch_slots"] <= stats["bucketed_slots"]
    assert stats["bucketed_slots"] < stats["fixed_slots"] / 2
    committed = json.loads(RESULTS.read_text())["padding_rotten_tomatoes"]["sorted_windows"]
    assert stats | {"window_batches": 50} == committed

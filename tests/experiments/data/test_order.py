"""experiments/data/order.py: a fixed example order read from a file, and the batchers that follow it
(``BucketedBatches(order=...)``, ``ArrayBatches(order=...)``, ``task.order_file``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.data.arrays import ArrayBatches
from experiments.data.order import ExampleOrder, OrderError
from experiments.data.text import BucketedBatches, Position


def test_read_one_index_a_line_or_json(tmp_path: Path) -> None:
    lines = tmp_path / "order.txt"
    lines.write_text("3\n0\n\n4\n1\n2\n")
    order = ExampleOrder.read(lines, 5)
    assert len(order.epochs) == 1 and order.epochs[0].tolist() == [3, 0, 4, 1, 2]
    assert order.source == str(lines)
    flat = tmp_path / "order.json"
    flat.write_text(json.dumps([3, 0, 4, 1, 2]))
    assert ExampleOrder.read(flat, 5).epochs[0].tolist() == [3, 0, 4, 1, 2]
    per_epoch = tmp_path / "epochs.json"
    per_epoch.write_text(json.dumps([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]]))
    two = ExampleOrder.read(per_epoch, 5)
    # epoch e follows list e mod 2; batches are cut in that order, the last one short
    assert [b.tolist() for b in two.plan(0, 2)] == [[0, 1], [2, 3], [4]]
    assert [b.tolist() for b in two.plan(1, 2)] == [[4, 3], [2, 1], [0]]
    assert [b.tolist() for b in two.plan(2, 2)] == [[0, 1], [2, 3], [4]]
    assert [b.tolist() for b in two.plan(3, 5)] == [[4, 3, 2, 1, 0]]


@pytest.mark.parametrize(("content", "why"), [
    ("0\n1\n2\n3\n", "epoch 0 lists 4 indices, not each of the 5"),          # one missing
    ("0\n1\n2\n3\n4\n4\n", "epoch 0 lists 6 indices"),                         # one twice, more
    ("0\n1\n2\n3\n3\n", "epoch 0 lists 5 indices, not each of the 5"),       # one twice, one missing
    ("0\n1\n2\n3\n5\n", "not each of the 5 training examples exactly once"),   # out of range
    ("-1\n1\n2\n3\n4\n", "not each of the 5 training examples exactly once"),  # negative
    ("[[0, 1, 2, 3, 4], [0, 1, 2, 3]]", "epoch 1 lists 4 indices"),           # a later epoch
    ("0\n1\nx\n", "neither JSON nor one integer per line"),
    ('{"order": [0, 1, 2, 3, 4]}', "expected a list of indices or a list of lists"),
    ("[[0, 1, 2, 3, 4], 5]", "expected a list of indices or a list of lists"),
    ("[]", "no order given"),
])
def test_a_file_that_does_not_list_every_example_once_is_refused(tmp_path: Path, content: str,
                                                                  why: str) -> None:
    path = tmp_path / "order.txt"
    path.write_text(content)
    with pytest.raises(OrderError, match=why):
        ExampleOrder.read(path, 5)


def test_unreadable_file_names_the_config_key(tmp_path: Path) -> None:
    with pytest.raises(OrderError, match=r"task.order_file .*missing.txt: cannot read it"):
        ExampleOrder.read(tmp_path / "missing.txt", 5)
    assert issubclass(OrderError, ValueError)


def test_bucketed_batches_follow_the_order_every_epoch() -> None:
    seqs = [np.arange(1, k + 1, dtype=np.int32) for k in (3, 20, 5, 40, 7, 9, 2)]
    labels = np.arange(7)
    epochs = [np.array([6, 5, 4, 3, 2, 1, 0]), np.array([0, 2, 4, 6, 1, 3, 5])]
    batches = BucketedBatches(seqs, labels, batch_size=3, order=ExampleOrder(epochs), seed=1,
                              window=50)
    for epoch in range(4):
        want = epochs[epoch % 2]
        got = [b["index"][b["index"] >= 0] for b in batches.epoch(epoch)]
        # no shuffling and no sorting by length: the batches are the order cut in threes
        assert [g.tolist() for g in got] == [want[i:i + 3].tolist() for i in range(0, 7, 3)]
    last = list(batches.epoch(1))[-1]
    assert last["weight"].tolist() == [1, 0, 0] and last["label"][0] == 5
    # each batch is still padded to its longest example's bucket
    assert [b["input_ids"].shape[1] for b in batches.epoch(0)] == [16, 64, 16]
    # a resumed stream follows the same order
    pos, batch = next(batches.stream(Position(1, 2)))
    assert pos == Position(1, 2) and batch["index"][0] == 5


def test_array_batches_follow_the_order() -> None:
    arrays = {"image": np.arange(7, dtype=np.float32)[:, None], "label": np.arange(7, dtype=np.int32)}
    order = ExampleOrder([np.array([6, 0, 5, 1, 4, 2, 3])])
    batches = ArrayBatches(arrays, batch_size=4, order=order, seed=5)
    got = [b["label"][b["weight"] > 0].tolist() for b in batches.epoch(3)]
    assert got == [[6, 0, 5, 1], [4, 2, 3]]


def test_order_file_orders_the_run_training_batches(tmp_path: Path) -> None:
    """``task.order_file`` indexes the training split as the run reads it (a user's CSV here):
    ``build_task`` cuts the training batches in its order; an order of another size is refused."""
    from experiments.config import load_config
    from experiments.tasks import build_task

    rows = tmp_path / "all.csv"
    rows.write_text("text,label,split\n" + "".join(
        f"text {i},{'neg' if i % 2 else 'pos'},{'train' if i < 6 else 'validation' if i < 8 else 'test'}\n"
        for i in range(10)))
    order = tmp_path / "order.txt"
    order.write_text("5\n4\n3\n2\n1\n0\n")
    overrides = ["--config.task.dataset=files", f"--config.task.files.train={rows}",
                 "--config.task.split_column=split", "--config.model.num_layers=1",
                 "--config.train.batch_size=4", f"--config.task.order_file={order}"]
    task = build_task(load_config("configs/minilm.py", overrides))
    assert task.info["examples"] == {"train": 6, "validation": 2, "test": 2}
    for epoch in (0, 1):
        assert [b.tolist() for b in task.splits["train"].plan(epoch)] == [[5, 4, 3, 2], [1, 0]]
    assert [b["label"][:2].tolist() for b in task.splits["train"].epoch(0)] == [[0, 1], [0, 1]]
    order.write_text("0\n1\n2\n3\n4\n5\n6\n")
    with pytest.raises(OrderError, match="epoch 0 lists 7 indices, not each of the 6"):
        build_task(load_config("configs/minilm.py", overrides))

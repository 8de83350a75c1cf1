"""A fixed order of training examples, read from a file: to reproduce a published recipe.

The file lists example indices (0-based, into the training split as the run reads it, after any
``train_examples`` cut), one per line, or as JSON: a list (the same order every epoch) or a list
of lists (epoch ``e`` uses list ``e mod len``). Every epoch must list every example exactly once.
Batches are cut in that order (the last one filled with padding rows); the usual shuffling and
length bucketing of the order are skipped (each batch is still padded to its longest example's
bucket).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class OrderError(ValueError):
    """An order file that does not list every example once; the message says what is wrong."""


class ExampleOrder:
    """The example order of every epoch (``plan(epoch, batch_size)``)."""

    def __init__(self, epochs: list[np.ndarray], source: str = "order"):
        if not epochs:
            raise OrderError(f"{source}: no order given")
        self.epochs = epochs
        self.source = source

    @classmethod
    def read(cls, path: str | Path, num_examples: int) -> ExampleOrder:
        """Read ``path`` and check every epoch against ``num_examples``."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise OrderError(f"task.order_file {path}: cannot read it ({e.strerror})") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            try:
                doc = [int(line) for line in text.split() if line.strip()]
            except ValueError:
                raise OrderError(f"task.order_file {path}: neither JSON nor one integer per line") from None
        if doc and all(isinstance(x, int) for x in doc):
            doc = [doc]
        if not isinstance(doc, list) or not all(isinstance(e, list) for e in doc):
            raise OrderError(f"task.order_file {path}: expected a list of indices or a list of lists")
        epochs = []
        for k, indices in enumerate(doc):
            order = np.asarray(indices, dtype=np.int64)
            if len(order) != num_examples or not np.array_equal(np.sort(order), np.arange(num_examples)):
                raise OrderError(f"task.order_file {path}: epoch {k} lists {len(order)} indices, not "
                                 f"each of the {num_examples} training examples exactly once")
            epochs.append(order)
        return cls(epochs, str(path))

    def plan(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        order = self.epochs[epoch % len(self.epochs)]
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

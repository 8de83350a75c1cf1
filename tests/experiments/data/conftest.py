"""What the data tests share: each source prepared once, one TFDS data directory, the tokenizer."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from experiments.data import sources


@functools.cache
def prepared(name: str) -> sources.Prepared:
    """``sources.prepare(name)``, once per test session (reading a source takes seconds)."""
    return sources.prepare(name)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty TFDS data directory for the session: the offline sources are built into it."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def tokenizer():
    from experiments.data.text import WordPieceTokenizer

    return WordPieceTokenizer.minilm(max_length=128)


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs are named relative to the repository root (``configs/minilm.py``)."""
    monkeypatch.chdir(Path(__file__).resolve().parents[3])

"""The model tests load configs named relative to the repository root (``configs/minilm.py``)."""

import pathlib

import pytest


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[3])

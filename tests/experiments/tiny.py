"""Tiny runs for the trainer's tests: MiniLM cut to one layer, 64 training examples of 16
tokens, GPart with d = 512, batch 16 (4 steps an epoch, 2 epochs), on one device.

Every run of a test module shares one persistent XLA compilation cache (``compilation_cache``
in-process, ``env(cache)`` for a ``python -m experiments`` subprocess): a program compiled once
is loaded by the next process, bit for bit the same executable.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "configs/minilm.py:task=rt,method=gpart"
TINY = ("--config.model.num_layers=1", "--config.task.train_examples=64",
        "--config.task.validation_examples=32", "--config.task.test_examples=32",
        "--config.task.max_length=16", "--config.task.buckets=(16,)", "--config.train.batch_size=16",
        "--config.train.eval_batch_size=16", "--config.method.d=512", "--config.train.epochs=2",
        "--config.devices=1", "--config.progress=false")
STEPS, PER_EPOCH = 8, 4


def overrides(workdir, *extra: str) -> list[str]:
    """The tiny overrides with ``workdir`` and ``extra`` (later ones win)."""
    return [*TINY, f"--config.workdir={workdir}", *extra]


def config(workdir, *extra: str):
    from experiments.config import load_config

    return load_config(str(ROOT / CONFIG), overrides(workdir, *extra))


def train_command(workdir, *extra: str) -> list[str]:
    """``python -m experiments train`` of the tiny config (run it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", "experiments", "train", "--config", CONFIG,
            *overrides(workdir, *extra)]


_CACHE_FLAGS = {"jax_compilation_cache_dir": "JAX_COMPILATION_CACHE_DIR",
                "jax_persistent_cache_min_compile_time_secs": "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                "jax_persistent_cache_min_entry_size_bytes": "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"}


def env(cache: pathlib.Path | None) -> dict[str, str]:
    """The environment of a subprocess run: this one's (8 host devices, CPU), with ``cache`` as
    its persistent compilation cache."""
    out = dict(os.environ, PYTHONUNBUFFERED="1")
    if cache is not None:
        out |= {"JAX_COMPILATION_CACHE_DIR": str(cache),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return out


@contextlib.contextmanager
def compilation_cache(directory: pathlib.Path):
    """In this process, compile through the persistent cache at ``directory``."""
    saved = {n: getattr(jax.config, n) for n in _CACHE_FLAGS}
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset_cache()
    try:
        yield directory
    finally:
        for n, v in saved.items():
            jax.config.update(n, v)
        _reset_cache()


def _reset_cache() -> None:
    """Make jax read the cache settings again (it decides once per process otherwise)."""
    with contextlib.suppress(ImportError, AttributeError):
        from jax._src import compilation_cache as cc

        cc.reset_cache()


def assert_trees_equal(a, b) -> None:
    """Same structure, and every leaf bit for bit."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def adapter(workdir: pathlib.Path):
    """``(trainable, saved, extra)`` of a run's ``best_adapter`` (verified on load)."""
    import gpart_jax as gj

    loaded = gj.load_adapter(pathlib.Path(workdir) / "best_adapter")
    return loaded.trainable, loaded.saved, loaded.metadata["extra"]


def one_line(err: str) -> str:
    """The single line of an error output (asserted to be one line, without a traceback)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def error_line(err: str) -> str:
    """The one error line of a command that had started to work (its progress lines before it),
    asserted to be one line, without a traceback."""
    lines = [line for line in err.splitlines() if line.startswith("python -m experiments")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def flip_bytes(path: pathlib.Path, offset: int | None = None, count: int = 4) -> None:
    """Invert ``count`` bytes of ``path`` at ``offset`` (default: its middle)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))

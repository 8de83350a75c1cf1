"""A process that writes or reads adapters, for the tests that need a second process.

    python -m tests.gpart_jax.saver loop DIR START        save payload(START), START+1, ... forever
    python -m tests.gpart_jax.saver die DIR K PHASE       save payload(K), SIGKILLed at PHASE
    python -m tests.gpart_jax.saver hold DIR K            save payload(K), pausing inside the
                                                          write until a line arrives on stdin
    python -m tests.gpart_jax.saver load OUT DIR...       load each adapter and write its method's
                                                          spec and its arrays to OUT.npz

Every adapter written here is ``payload(k)``: theta and the saved head all equal to ``k``, so a
reader can tell which save it came from and that it is whole.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys

import numpy as np

import gpart_jax as gj
from gpart_jax import adapters, files
from gpart_jax.paths import leaves_with_paths

SHAPE, HEAD, D = (512, 512), (512, 4), 100_000
BASE = {"params": {"layer": {"kernel": np.zeros(SHAPE, np.float32)},
                   "head": {"kernel": np.zeros(HEAD, np.float32)}}}
PHASES = ("tensors-partly-written", "tensors-written", "manifest-temp-written", "manifest-replaced")


def method() -> gj.GPart:
    return gj.GPart.create(BASE, d=D, seed=3, targets=("layer/kernel",), scheme="balanced")


def payload(k: int):
    """``(theta, saved)`` of save number ``k``."""
    return np.full(D, k, np.float32), {"params/head/kernel": np.full(HEAD, k, np.float32)}


def which(loaded: gj.Adapter) -> int:
    """The ``k`` of a loaded payload, checking that theta and the head agree (a whole save)."""
    theta, head = np.asarray(loaded.trainable), loaded.saved["params/head/kernel"]
    k = theta[0]
    assert np.all(theta == k) and np.all(head == k), "theta and head come from different saves"
    return int(k)


def save(directory, gp: gj.GPart, k: int) -> None:
    theta, saved = payload(k)
    gj.save_adapter(directory, gp, theta, saved=saved, overwrite=True)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_at(phase: str) -> None:
    """Install a hook that kills this process at ``phase`` of the next save."""
    if phase == "tensors-partly-written":  # killed while the new tensors file is written
        real_tensors = adapters._write_tensors

        def tensors_half_then_die(target, arrays):
            real_tensors(target, arrays)
            with open(target, "r+b") as f:  # what a kill half-way leaves: the start of the file
                f.truncate(target.stat().st_size // 2)
            _die()
        adapters._write_tensors = tensors_half_then_die
    elif phase == "tensors-written":  # new tensors complete, manifest still the old one
        real_tensors = adapters._write_tensors

        def tensors_then_die(target, arrays):
            real_tensors(target, arrays)
            _die()
        adapters._write_tensors = tensors_then_die
    elif phase == "manifest-temp-written":  # the new manifest flushed to a temporary file
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith(adapters.MANIFEST):
                _die()
            return real_replace(src, dst, *args, **kwargs)
        os.replace = replace
    elif phase == "manifest-replaced":  # the new manifest in place, old tensors not yet removed
        real_write = files.write_atomic

        def write_then_die(path, data):
            real_write(path, data)
            _die()
        files.write_atomic = write_then_die
    else:
        raise SystemExit(f"unknown phase {phase!r}; one of {PHASES}")


def hold_inside_write() -> None:
    """Pause the next save inside its tensor write (holding the lock) until stdin has a line."""
    real_tensors = adapters._write_tensors

    def tensors_after_go(target, arrays):
        print("writing", flush=True)
        sys.stdin.readline()
        real_tensors(target, arrays)
    adapters._write_tensors = tensors_after_go


def load(out: str, directories: list[str]) -> None:
    arrays = {}
    for i, directory in enumerate(directories):
        loaded = gj.load_adapter(directory)
        arrays[f"{i}/spec"] = np.asarray(json.dumps(loaded.method.spec(), sort_keys=True))
        for path, leaf in leaves_with_paths(loaded.trainable)[0]:
            arrays[f"{i}/trainable/{path}"] = np.asarray(leaf)
        for path, leaf in loaded.saved.items():
            arrays[f"{i}/saved/{path}"] = np.asarray(leaf)
    np.savez(out, **arrays)


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "load":
        load(argv[1], argv[2:])
        return
    directory, k = argv[1], int(argv[2])
    gp = method()
    if mode == "loop":
        print("ready", flush=True)
        for step in itertools.count(k):
            save(directory, gp, step)
            print(f"saved {step}", flush=True)
    elif mode == "die":
        die_at(argv[3])
        save(directory, gp, k)
        print("survived", flush=True)
    elif mode == "hold":
        hold_inside_write()
        save(directory, gp, k)
        print("saved", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

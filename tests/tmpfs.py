"""A small tmpfs: a real full disk for the tests that need one.

Mounting needs root on Linux (CI runs as root). Where the machine does not allow it, the test is
skipped with the reason; the tests that inject ``ENOSPC`` at each write cover the same paths.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest


class Tmpfs:
    """A mounted tmpfs at ``path``: ``resize`` it, ``fill`` it up, ``free`` what the filler took."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def resize(self, kib: int) -> None:
        _mount("-o", f"remount,size={kib}k", str(self.path))

    def fill(self, leave_kib: int = 0) -> None:
        """Write a filler file until the disk is full, then give back ``leave_kib`` of it."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        size = self.filler.stat().st_size
        os.truncate(self.filler, max(0, size - leave_kib * 1024))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=True)


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, kib: int) -> Iterator[Tmpfs]:
    """A tmpfs of ``kib`` KiB mounted at ``path`` (created) for the block; skips where none can
    be mounted."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a tmpfs, which only root can mount (CI runs as root); "
                    "the injected-ENOSPC tests cover the same writes")
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path))
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot mount a tmpfs here ({e.stderr.strip()}); the injected-ENOSPC tests "
                    f"cover the same writes")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)

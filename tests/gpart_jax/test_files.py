"""The write path's building blocks: atomic files, per-path locks, atomic directory publication."""

import errno
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest
from safetensors import SafetensorError

from gpart_jax import files
from tests.tmpfs import tmpfs

FILES_PY = pathlib.Path(files.__file__)


def leftovers(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- write_atomic

def test_write_atomic_writes_and_replaces(tmp_path):
    target = tmp_path / "f.json"
    assert files.write_atomic(target, "one") == target
    assert target.read_text() == "one"
    files.write_atomic(target, b"\x00two")
    assert target.read_bytes() == b"\x00two"
    assert leftovers(tmp_path) == []


def test_write_atomic_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_atomic(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0o600


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_atomic_failure_leaves_the_old_file(tmp_path, monkeypatch, failing):
    target = tmp_path / "f"
    target.write_text("old")

    def enospc(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, failing, enospc)
    with pytest.raises(OSError) as info:
        files.write_atomic(target, "new" * 1000)
    monkeypatch.undo()
    assert files.disk_full(info.value)
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []  # the temporary file is gone


def test_write_atomic_interrupted_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_text("old")

    def interrupt(*_args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_disk_full():
    assert files.disk_full(OSError(errno.ENOSPC, "full"))
    assert files.disk_full(OSError(errno.EDQUOT, "quota"))
    assert not files.disk_full(OSError(errno.EACCES, "denied"))
    assert not files.disk_full(ValueError("no"))
    # safetensors' writer reports the OS error in its text (found on a real full tmpfs)
    assert files.disk_full(SafetensorError("Error while serializing: I/O error: No space left on "
                                           f"device (os error {errno.ENOSPC})"))
    assert files.os_errno(SafetensorError(f"I/O error: Permission denied (os error {errno.EACCES})")) \
        == errno.EACCES
    assert files.os_errno(SafetensorError("header too large")) is None


# --------------------------------------------------------------------------- PathLock

def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    lock_file = tmp_path / ".lock"
    with files.PathLock(lock_file, "thing T") as first:
        assert json.loads(lock_file.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        # flock locks belong to an open file, so a second PathLock conflicts even in this process
        with pytest.raises(files.LockedError) as info:
            files.PathLock(lock_file, "thing T").acquire()
        message = str(info.value)
        assert "thing T is being written by another process" in message
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert info.value.errno == errno.EWOULDBLOCK
        assert first.holder() == f"pid {os.getpid()} on host {socket.gethostname()}"
    with files.PathLock(lock_file, "thing T"):  # released: free again
        pass
    assert lock_file.exists()  # kept (remove=False)


def test_a_lock_on_a_full_disk_still_excludes(tmp_path):
    """Only the holder's name needs space; the lock itself holds (found on a real full tmpfs,
    where taking a new lock file raised ENOSPC)."""
    with tmpfs(tmp_path / "disk", kib=64) as disk:
        disk.fill()
        lock_file = disk.path / ".out.lock"
        with files.PathLock(lock_file, "output O", remove=True):
            with pytest.raises(files.LockedError, match=r"output O is being written by another "
                                                        r"process \(an unknown process\)"):
                files.PathLock(lock_file, "output O").acquire()
        assert not lock_file.exists()


def test_holder_of_an_unreadable_lock_file(tmp_path):
    lock_file = tmp_path / ".lock"
    lock_file.write_text("not json")
    assert files.PathLock(lock_file, "x").holder() == "an unknown process"
    assert files.PathLock(tmp_path / "missing", "x").holder() == "an unknown process"


def test_remove_deletes_the_lock_file_and_the_next_writer_makes_a_new_one(tmp_path):
    lock_file = tmp_path / ".out.lock"
    first = files.PathLock(lock_file, "out", remove=True).acquire()
    with pytest.raises(files.LockedError):
        files.PathLock(lock_file, "out", remove=True).acquire()
    first.release()
    assert not lock_file.exists()
    first.release()  # releasing twice is harmless
    with files.PathLock(lock_file, "out", remove=True):
        assert lock_file.exists()
    assert not lock_file.exists()


HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
lock = files.PathLock(sys.argv[2], "adapter X").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path):
    lock_file = tmp_path / ".lock"
    # files.py imports only the standard library: the child loads it alone, without jax
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(FILES_PY), str(lock_file)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(files.LockedError, match=f"pid {proc.pid} on host"):
            files.PathLock(lock_file, "adapter X").acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with files.PathLock(lock_file, "adapter X"):  # the kernel released it with the process
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


# --------------------------------------------------------------------------- publish_dir

def make_dir(path, content):
    path.mkdir()
    (path / "file").write_text(content)
    return path


def test_publish_dir_to_a_new_path(tmp_path):
    new = make_dir(tmp_path / ".new.tmp", "new")
    files.publish_dir(new, tmp_path / "out")
    assert (tmp_path / "out" / "file").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_publish_dir_replaces_an_existing_directory(tmp_path, monkeypatch, exchange):
    old = make_dir(tmp_path / "out", "old")
    (old / "only-in-old").write_text("x")
    new = make_dir(tmp_path / ".new.tmp", "new")
    if not exchange:  # a platform or file system without renameat2
        monkeypatch.setattr(files, "_renameat2_exchange", lambda a, b: False)
    files.publish_dir(new, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file"]
    assert (tmp_path / "out" / "file").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing aside, no temporary


def test_renameat2_exchange_swaps_two_directories(tmp_path):
    a, b = make_dir(tmp_path / "a", "A"), make_dir(tmp_path / "b", "B")
    if not files._renameat2_exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (a / "file").read_text() == "B" and (b / "file").read_text() == "A"
    with pytest.raises(OSError):  # a real error (not "unsupported") is raised, not hidden
        files._renameat2_exchange(tmp_path / "missing", b)

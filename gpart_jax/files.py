"""The write path: atomic publication and per-path locks.

Every file the library writes goes through ``write_atomic``: the bytes go to a temporary
sibling, are flushed to disk, then renamed over the target, so a kill at any moment leaves the
old file or the new one, never a mix, and a full disk leaves the old file as it was. Writers of
one path take ``PathLock`` first: a second writer gets ``LockedError`` naming the holder's
process id and host instead of racing it. The lock is ``fcntl.flock`` on a lock file, released
by the kernel when its holder exits, so a killed writer never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import re
import socket
import tempfile
from collections.abc import Iterator


class LockedError(OSError):
    """Another process holds the lock; the message names it (pid and host)."""


def fsync_dir(directory: pathlib.Path) -> None:
    """Flush a directory's entries (a rename in it) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: pathlib.Path) -> None:
    """Flush every file and directory under ``root``, and ``root``'s own entry, to disk.

    What another library wrote (orbax's tensors) is made durable before a manifest points at it,
    so that a crash of the machine cannot leave a manifest naming files that never reached disk.
    """
    for directory, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(pathlib.Path(directory))
    fsync_dir(root.parent)


def umask_mode(mode: int) -> int:
    """``mode`` less the process's umask: the permissions an ordinary new file would get."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Write ``data`` to ``path`` through a flushed temporary sibling and ``os.replace``.

    On any error (a full disk, a permission problem, an interrupt) the temporary file is removed
    and ``path`` is left as it was.
    """
    path = pathlib.Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def json_sha256(doc: dict, without: str) -> str:
    """sha256 of ``doc`` as canonical JSON (sorted keys, no spaces), leaving out the key
    ``without`` where the document keeps its own checksum: an adapter's manifest, a run
    checkpoint's JSON. A changed value that still parses is found by it."""
    body = {k: v for k, v in doc.items() if k != without}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and what caused it, outermost first."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def disk_full(error: BaseException) -> bool:
    """True for the error of a full disk or exhausted quota, as an ``OSError`` or as a native
    writer reports it (see ``os_errno``)."""
    return os_errno(error) in (errno.ENOSPC, errno.EDQUOT)


# The OS error number in the text of native writers' errors: safetensors (Rust) ends its
# message in "(os error N)", tensorstore (orbax's array writer) in "[os_error_code='N']".
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)|\[os_error_code='(\d+)'\]")


def os_errno(error: BaseException) -> int | None:
    """The operating system's error number behind ``error``, or ``None``.

    An ``OSError`` carries it. safetensors' ``SafetensorError`` and tensorstore's ``ValueError``
    carry it only in their text, so that a full disk under them would otherwise look like a bug.
    """
    if isinstance(error, OSError):
        return error.errno
    match = _OS_ERROR_TEXT.search(str(error))
    return int(match.group(1) or match.group(2)) if match else None


class PathLock:
    """An exclusive, non-blocking lock on ``lock_file`` (created if needed).

    ``with PathLock(path / ".lock", what="adapter X"):`` raises ``LockedError`` naming the
    holder when another process holds it. The holder's pid and host are written into the lock
    file so that the error can name them. With ``remove=True`` the lock file is deleted on
    release (for locks kept next to what they guard); a process that locked a file just
    deleted this way notices (the path no longer names the file it locked) and tries again.
    """

    def __init__(self, lock_file: str | os.PathLike, what: str, remove: bool = False):
        self.lock_file = pathlib.Path(lock_file)
        self.what = what
        self.remove = remove
        self._fd: int | None = None

    def acquire(self) -> PathLock:
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise LockedError(errno.EWOULDBLOCK, f"{self.what} is being written by another "
                                  f"process ({self.holder()}); wait for it to finish, or stop it",
                                  str(self.lock_file)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed this file as we locked it: lock the new one
        # The holder's name, for a second writer's error. The flock alone excludes: on a full
        # disk the lock still holds, and only its holder goes unnamed ("an unknown process").
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> str:
        """``"pid P on host H"`` of the process that wrote the lock file last."""
        try:
            doc = json.loads(self.lock_file.read_text() or "{}")
            return f"pid {doc['pid']} on host {doc['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    def release(self) -> None:
        if self._fd is not None:
            if self.remove:
                with contextlib.suppress(OSError):
                    os.unlink(self.lock_file)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PathLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _renameat2_exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where the
    platform or file system does not offer it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), str(b))


def publish_dir(new: pathlib.Path, target: pathlib.Path) -> None:
    """Put the complete directory ``new`` (a sibling of ``target``) at ``target``.

    A missing ``target`` is created by one rename. An existing one is swapped with ``new`` in one
    atomic step where Linux's ``renameat2`` allows it, then deleted; elsewhere it is renamed
    aside first, which leaves a moment in which ``target`` is missing (its old contents are then
    in ``.<name>.old.tmp`` next to it).
    """
    import shutil

    if not target.exists():
        os.rename(new, target)
    elif _renameat2_exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)
    else:
        aside = target.with_name(f".{target.name}.old.tmp")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        os.rename(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(target.parent)

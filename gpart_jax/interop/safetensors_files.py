"""Reading safetensors files with clear errors, and writing PEFT adapter directories safely.

A reference adapter directory is written whole or not at all: its files go into a temporary
sibling directory, which is renamed into place (or, with ``overwrite``, whose files replace
those of an existing PEFT adapter directory one by one, each atomically). A directory that is
not a PEFT adapter is never written into, and a second writer of the same directory gets an
error naming the first (``gpart_jax.files.PathLock``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from gpart_jax import files
from gpart_jax.errors import InteropError
from gpart_jax.interop.config import CONFIG_NAME, WEIGHTS_NAME


def safetensors_module():
    """The ``safetensors`` package (with its numpy API), or an error that says how to install it."""
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise InteropError("reading and writing PEFT adapters needs the safetensors package: "
                           "pip install 'safetensors>=0.4'") from None
    return safetensors


def _open(path: Path, what: str):
    if not path.is_file():
        raise InteropError(f"{what} {path} does not exist" if not path.exists() else
                           f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise InteropError(f"cannot read {what} {path}: permission denied; fix its permissions")
    return safetensors_module().safe_open(str(path), framework="np")


def read_safetensors(path: Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, or a clear ``InteropError``."""
    try:
        with _open(Path(path), what) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except InteropError:
        raise
    except Exception as e:  # safetensors raises its own error type, numpy others
        raise InteropError(f"{path}: cannot read {what} as safetensors ({e}); the file is "
                           f"truncated or damaged: download or save it again") from None
    return tensors, metadata


def safetensors_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors of a safetensors file, read from its header only."""
    try:
        with _open(Path(path), what) as f:
            return {k: tuple(int(s) for s in f.get_slice(k).get_shape()) for k in f.keys()}
    except InteropError:
        raise
    except Exception as e:
        raise InteropError(f"{path}: cannot read {what} as safetensors ({e}); the file is "
                           f"truncated or damaged") from None


def check_output_file(out: Path, inputs: Mapping[str, Path], overwrite: bool) -> Path:
    """Refuse an output that is one of the inputs, a directory, or exists without ``overwrite``."""
    out = Path(out)
    for name, path in inputs.items():
        if Path(path).exists() and out.exists() and os.path.samefile(out, path):
            raise InteropError(f"--out {out} is the {name}; never written over an input: choose "
                               f"another file")
        if out.resolve() == Path(path).resolve():
            raise InteropError(f"--out {out} is the {name}; choose another file")
    if out.is_dir():
        raise InteropError(f"--out {out} is a directory; give a file name (merged.safetensors)")
    if out.exists() and not overwrite:
        raise InteropError(f"--out {out} exists; nothing was written: pass --overwrite "
                           f"(overwrite=True) to replace it, or choose another file")
    if not out.parent.is_dir():
        raise InteropError(f"the directory {out.parent} of --out does not exist; create it first")
    return out


def write_file(out: Path, write: Callable[[Path], None]) -> Path:
    """Write ``out`` with ``write(path)`` in a staging directory beside it, then rename it into place.

    The staging directory, ``.<name>.<random>.tmp/``, holds whatever the writer makes besides its
    file: safetensors' writer (0.8) goes through a ``.tmpXXXXXX`` file of its own next to its
    target, which a kill would otherwise leave in the user's folder. A kill at any moment leaves
    the old ``out`` (or none) and at most that one staging directory, named as ours.
    """
    out = Path(out)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        tmp = staging / out.name
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, files.umask_mode(0o666))
        os.replace(tmp, out)
    except BaseException as e:
        if files.disk_full(e):
            raise InteropError(f"the disk is full: {out} was not written (an existing file is "
                               f"intact); free some space and run again") from None
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    files.fsync_dir(out.parent)
    return out


def write_adapter_dir(out_dir: Path, contents: Mapping[str, Callable[[Path], None]],
                      overwrite: bool) -> Path:
    """Write a PEFT adapter directory (``contents``: file name -> writer) whole or not at all.

    The files are written into a temporary sibling directory, which then takes ``out_dir``'s
    place (``gpart_jax.files.publish_dir``). An existing ``out_dir`` is replaced only with
    ``overwrite`` and only when it holds nothing but a PEFT adapter's two files.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InteropError(f"output {out_dir} exists and is not a directory; choose another path")
    if not out_dir.parent.is_dir():
        raise InteropError(f"parent directory {out_dir.parent} of the output does not exist")
    lock = files.PathLock(out_dir.with_name(f".{out_dir.name}.lock"),
                          f"adapter directory {out_dir}", remove=True)
    try:
        with lock:
            existing = sorted(e.name for e in out_dir.iterdir()) if out_dir.is_dir() else []
            if existing and not overwrite:
                raise InteropError(f"output directory {out_dir} exists and is not empty; choose "
                                   f"another directory or pass overwrite=True (--overwrite)")
            foreign = [n for n in existing if n not in (CONFIG_NAME, WEIGHTS_NAME)]
            if foreign:
                raise InteropError(f"output directory {out_dir} holds files that are not a PEFT "
                                   f"adapter's ({foreign[:3]}); nothing is written over them: "
                                   f"choose another directory")
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp",
                                        dir=out_dir.parent))
            try:
                for name, write in contents.items():
                    write(tmp / name)
                    with open(tmp / name, "rb+") as f:
                        os.fsync(f.fileno())
                    os.chmod(tmp / name, files.umask_mode(0o666))
                os.chmod(tmp, files.umask_mode(0o777))
                files.publish_dir(tmp, out_dir)
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if files.disk_full(e):
                    raise InteropError(f"the disk is full: {out_dir} was not written (an existing "
                                       f"adapter there is intact); free some space") from None
                raise
    except files.LockedError as e:
        raise InteropError(str(e.strerror)) from None
    return out_dir


__all__ = ["check_output_file", "read_safetensors", "safetensors_module", "safetensors_shapes",
           "write_adapter_dir", "write_file"]

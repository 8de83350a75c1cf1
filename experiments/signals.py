"""SIGTERM as Ctrl-C, for commands that must lose nothing when stopped.

``kill``, ``timeout`` and a cluster scheduler's preemption send SIGTERM, which by default ends
Python at once: the steps since the last checkpoint are lost and the suite log says nothing.
Inside ``sigterm_as_interrupt()`` the first SIGTERM raises ``KeyboardInterrupt`` instead, so a
run checkpoints its last completed step (``experiments.train.train``), the suite logs the run as
interrupted, and the command exits with 130, as after Ctrl-C. A second SIGTERM takes the
previous handler's action (by default: end now). A background job of a non-interactive shell
ignores SIGINT, so SIGTERM is the way to stop one cleanly.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM raises ``KeyboardInterrupt``; the previous handler is
    back after the block (and after that first signal). Off the main thread, where Python cannot
    set handlers, the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

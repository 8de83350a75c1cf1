"""Stopping a run without losing anything: SIGTERM and Ctrl-C become a request, honoured between steps.

``kill``, ``timeout`` and a cluster scheduler's preemption send SIGTERM; Ctrl-C sends SIGINT.
Python's default reactions end the process at once or raise ``KeyboardInterrupt`` wherever the
interpreter happens to be, which may be inside XLA's compilation or a callback from another
thread (a crash, not a clean stop). Inside ``stop_requests()`` both signals only set a flag;
the trainer looks at it between steps (and between evaluation batches), checkpoints the last
completed step and raises ``KeyboardInterrupt`` itself, so the command exits with 130 and the
next run resumes. A second signal takes the previous handler's action (by default: end now).
A background job of a non-interactive shell ignores SIGINT, so SIGTERM is the way to stop one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether a stop was asked for (``bool(request)``), and by which signal."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was asked for (call at a safe point)."""
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {signal.Signals(self.signum).name}")


NEVER = StopRequest()  # for callers outside stop_requests()


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, the first SIGTERM or SIGINT sets the yielded request instead of
    interrupting; the previous handlers are back after the block (and after that first
    signal, so a second one acts at once). Off the main thread the block runs unchanged."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum, frame):
        request.signum = signum
        for s, h in previous.items():
            signal.signal(s, h)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

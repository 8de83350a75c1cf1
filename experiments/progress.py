"""A one-line progress bar for training: epoch, step/total, loss (EMA), last validation metric,
examples/s and ETA, redrawn with ``\\r`` on a terminal (stderr), one line every ``every`` steps
otherwise (a log file then reads as a table)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` for a duration in seconds (``?`` when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """Training progress on one line.

    ``update(step, epoch, loss, examples)`` after each step: ``loss`` enters an exponential
    moving average (``ema`` weight of the new value); speed and ETA come from the steps done in
    this process, so a resumed run's ETA is not skewed by its first, restored steps.
    """

    def __init__(self, total_steps: int, *, metric_name: str = "metric", enabled: bool = True,
                 every: int = 10, ema: float = 0.1, stream: TextIO | None = None, width: int = 20):
        self.total = max(int(total_steps), 1)
        self.metric_name = metric_name
        self.enabled = enabled
        self.every = max(int(every), 1)
        self.ema = ema
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.loss: float | None = None
        self.metric: float | None = None
        self._start_step: int | None = None
        self._start_time = 0.0
        self._examples = 0.0
        self._last_len = 0

    def set_metric(self, value: float | None) -> None:
        """The last validation value shown on the bar."""
        self.metric = value

    def update(self, step: int, epoch: int, loss: float, examples: float) -> None:
        """Record step ``step`` (1-based count of steps done) and redraw."""
        now = time.perf_counter()
        if self._start_step is None:
            # the first step of a process includes compilation: time from its end
            self._start_step, self._start_time = step, now
        else:
            self._examples += examples
        self.loss = loss if self.loss is None else (1 - self.ema) * self.loss + self.ema * loss
        if self.enabled and (self.tty or step % self.every == 0 or step == self.total):
            self._draw(step, epoch, now)

    def line(self, step: int, epoch: int, now: float | None = None) -> str:
        """The text of the bar at ``step``."""
        now = time.perf_counter() if now is None else now
        done = step - (self._start_step or step)
        elapsed = now - self._start_time
        rate = done / elapsed if done and elapsed > 0 else float("nan")
        speed = self._examples / elapsed if done and elapsed > 0 else float("nan")
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        filled = int(self.width * step / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        metric = "-" if self.metric is None else f"{self.metric:.4f}"
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        speed_text = "-" if speed != speed else f"{speed:.1f}"
        return (f"epoch {epoch + 1} [{bar}] {step}/{self.total} loss {loss} "
                f"val {self.metric_name} {metric} {speed_text} ex/s ETA {format_duration(eta)}")

    def _draw(self, step: int, epoch: int, now: float) -> None:
        text = self.line(step, epoch, now)
        if self.tty:
            pad = " " * max(self._last_len - len(text), 0)
            self.stream.write("\r" + text + pad)
            self._last_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (an evaluation result) without breaking the bar."""
        if not self.enabled:
            return
        if self.tty and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()
            self._last_len = 0

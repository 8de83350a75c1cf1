"""The training progress bar (experiments/progress.py): a line every ``every`` steps in a log
file, one redrawn line on a terminal."""

from __future__ import annotations

import io

from experiments.progress import ProgressBar, format_duration


def test_progress_bar_lines_in_a_log_file():
    stream = io.StringIO()
    bar = ProgressBar(20, metric_name="accuracy", every=5, stream=stream)
    for step in range(1, 21):
        bar.update(step, 0, 0.5, 32)
    bar.set_metric(0.75)
    bar.message("evaluated")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1] == "evaluated"  # not a tty: one line every 5 steps
    assert "20/20" in lines[-2] and "loss 0.5000" in lines[-2] and "ex/s" in lines[-2]
    assert "ETA" in lines[-2] and lines[0].startswith("epoch 1 [#####")


def test_progress_bar_redraws_one_line_on_a_terminal():
    tty = io.StringIO()
    tty.isatty = lambda: True
    bar = ProgressBar(3, stream=tty, every=100)
    for step in range(1, 4):
        bar.update(step, 0, 1.0, 8)
    bar.close()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("\n")


def test_a_disabled_bar_writes_nothing():
    stream = io.StringIO()
    bar = ProgressBar(3, enabled=False, stream=stream, every=1)
    bar.update(1, 0, 1.0, 8)
    bar.message("x")
    bar.close()
    assert stream.getvalue() == ""


def test_format_duration():
    assert format_duration(3723) == "1:02:03" and format_duration(123) == "2:03"
    assert format_duration(float("nan")) == "?" and format_duration(-1) == "?"

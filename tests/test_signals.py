"""SIGTERM stops the suite and ``gpart-jax`` as Ctrl-C does (experiments/signals.py)."""

from __future__ import annotations

import os
import signal

import pytest

from experiments import cli as C
from experiments import suite as S
from experiments.signals import sigterm_as_interrupt


class Unhandled(Exception):
    pass


def _terminate_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not interrupt")  # the handler raises before this line


@pytest.fixture()
def guard():
    """A SIGTERM that no command handles raises ``Unhandled`` (a failed test) instead of ending
    pytest itself."""
    def unhandled(signum, frame):
        raise Unhandled("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_first_sigterm_raises_keyboard_interrupt_and_the_handler_is_restored(guard):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_as_interrupt():
        _terminate_self()
    assert signal.getsignal(signal.SIGTERM) is before
    with sigterm_as_interrupt():  # a block without a signal leaves nothing behind either
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_takes_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
            try:
                _terminate_self()
            finally:  # as while a run saves its checkpoint after the first signal
                os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_suite_command_exits_130_on_sigterm(guard, monkeypatch, capsys):
    monkeypatch.setattr(S, "run_suite", _terminate_self)
    assert S.main(["configs/suites/stage_a.py"]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err


def test_train_command_exits_130_on_sigterm(guard, monkeypatch, capsys):
    monkeypatch.setattr(C, "cmd_train", _terminate_self)
    assert C.main(["train", "--config", "configs/minilm_rt_gpart.py"]) == 130
    assert "the last completed step is checkpointed" in capsys.readouterr().err

"""SIGTERM and Ctrl-C become a stop request honoured between steps (experiments/signals.py), and
the ``train`` command exits 130 on one."""

from __future__ import annotations

import os
import signal

import pytest

from experiments import cli
from experiments.signals import NEVER, StopRequest, stop_requests


class Unhandled(Exception):
    pass


@pytest.fixture()
def guard():
    """A SIGTERM that no stop request takes raises ``Unhandled`` (a failed test) instead of ending
    pytest itself."""
    def unhandled(signum, frame):
        raise Unhandled("SIGTERM reached the previous handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_sets_the_request_and_check_raises_keyboard_interrupt(guard, sig):
    with stop_requests() as stop:
        assert not stop
        stop.check()  # nothing asked: no-op
        os.kill(os.getpid(), sig)  # delivered before the next bytecode: no exception here
        assert stop and stop.signum == sig
        with pytest.raises(KeyboardInterrupt, match=sig.name):
            stop.check()
    assert signal.getsignal(signal.SIGTERM) is guard  # the previous handlers are back


def test_a_second_signal_takes_the_previous_handler(guard):
    with stop_requests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop
        with pytest.raises(Unhandled):  # as while a run saves its checkpoint after the first
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_block_without_a_signal_leaves_nothing_behind(guard):
    int_before = signal.getsignal(signal.SIGINT)
    with stop_requests():
        assert signal.getsignal(signal.SIGTERM) is not guard
    assert signal.getsignal(signal.SIGTERM) is guard and signal.getsignal(signal.SIGINT) is int_before


def test_off_the_main_thread_the_handlers_are_untouched(guard):
    import threading

    seen = []

    def body():
        with stop_requests() as stop:
            seen.append((signal.getsignal(signal.SIGTERM), bool(stop)))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(guard, False)]


def test_never_is_never_set():
    assert not NEVER and isinstance(NEVER, StopRequest)
    NEVER.check()


def test_train_command_exits_130_on_sigterm(guard, monkeypatch, capsys):
    def train(cfg, stop):
        os.kill(os.getpid(), signal.SIGTERM)
        stop.check()  # what the trainer does between steps
        raise AssertionError("the stop was not honoured")

    monkeypatch.setattr(cli, "cmd_train", train)
    assert cli.main(["train", "--config", "configs/minilm.py"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; the last completed step is checkpointed: run the same command again" in err
    assert signal.getsignal(signal.SIGTERM) is guard

"""Several JAX processes for one run: ``jax.distributed``, configured by ``cfg.distributed``.

* ``coordinator``, ``num_processes``, ``process_id``: start the run's process ``process_id`` of
  ``num_processes``, all talking to the coordinator (``host:port``, served by process 0);
* no coordinator (the default): JAX's cluster auto-detection (a TPU pod slice, SLURM, Open MPI)
  fills them in, and finding no cluster means one process. ``auto=False`` skips the detection.
  A caller that already ran JAX computations in this process (``train(cfg)`` from Python) is
  one process unless it started ``jax.distributed`` itself: the detection must come first.

On CPU the processes exchange data through gloo (``jax_cpu_collectives_implementation``). The
partition needs no communication: every process hashes the same positions with the same seed.
``initialize`` must run before anything else touches JAX's backends. A process that dies takes
the others down within ``HEARTBEAT_S`` seconds (JAX's default heartbeat waits 100 s).

Every decision a run makes from its files (its status, where it resumes, whether its workdir lock
was taken) is made by process 0 and broadcast (``agree``): a process that took another branch
would wait in a collective the others never enter. A stop (SIGTERM from a scheduler) is agreed
on through JAX's preemption sync point (``stop_agreed``), so every process stops at one step.
"""

from __future__ import annotations

import jax
import numpy as np

INIT_TIMEOUT_S = 60
HEARTBEAT_S = 10
SHUTDOWN_S = 10
_STARTED = False


def initialize(settings=None) -> bool:
    """Start ``jax.distributed`` as ``settings`` (``cfg.distributed``) say; True when several
    processes run. Calling it again (a suite of runs in one process) changes nothing."""
    global _STARTED
    if settings is None or _STARTED:
        return jax.process_count() > 1 if _STARTED else False
    given = bool(settings.get("coordinator"))
    if not (given or settings.get("auto", True)):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeouts = dict(initialization_timeout=INIT_TIMEOUT_S, heartbeat_timeout_seconds=HEARTBEAT_S,
                    shutdown_timeout_seconds=SHUTDOWN_S)
    if given:
        jax.distributed.initialize(settings.coordinator, num_processes=settings.num_processes,
                                   process_id=settings.process_id, **timeouts)
    else:
        try:
            jax.distributed.initialize(**timeouts)
        except ValueError as e:  # no cluster detected: one process
            if "coordinator_address should be defined" not in str(e):
                raise
            return False
        except RuntimeError as e:  # JAX ran before (an in-process caller): too late to detect
            if "must be called before" not in str(e):
                raise
            return jax.process_count() > 1
    _STARTED = True
    return jax.process_count() > 1


def agree(value: int) -> int:
    """Process 0's ``value`` (an int), on every process; ``value`` itself with one process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def stop_agreed(step: int) -> bool:
    """True on every process at the same step once JAX's preemption notifier (a SIGTERM to any
    process) asked the run to stop; always False with one process (``experiments.signals``)."""
    if jax.process_count() == 1:
        return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))


def is_primary() -> bool:
    """True in the process that writes the run's files (process 0)."""
    return jax.process_index() == 0

"""Several JAX processes for one run: ``jax.distributed``, configured by ``cfg.distributed``.

* empty (the default): one process;
* ``coordinator``, ``num_processes``, ``process_id``: start the run's process ``process_id`` of
  ``num_processes``, all talking to the coordinator (``host:port``, served by process 0);
* ``auto``: JAX's cluster auto-detection (a TPU pod slice, SLURM, Open MPI) fills them in.

On CPU the processes exchange data through gloo (``jax_cpu_collectives_implementation``). The
partition needs no communication: every process hashes the same positions with the same seed.
``initialize`` must run before anything else touches JAX's backends.
"""

from __future__ import annotations

import jax

_STARTED = False


def initialize(settings=None) -> bool:
    """Start ``jax.distributed`` as ``settings`` (``cfg.distributed``) say; True when several
    processes run. Calling it again (a suite of runs in one process) changes nothing."""
    global _STARTED
    if settings is None or _STARTED:
        return jax.process_count() > 1 if _STARTED else False
    given = bool(settings.get("coordinator"))
    if not (given or settings.get("auto")):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if given:
        jax.distributed.initialize(settings.coordinator, num_processes=settings.num_processes,
                                   process_id=settings.process_id)
    else:
        jax.distributed.initialize()
    _STARTED = True
    return jax.process_count() > 1


def is_primary() -> bool:
    """True in the process that writes the run's files (process 0)."""
    return jax.process_index() == 0

"""Checkpoints of a training run, written with orbax and verified on every restore.

``RunCheckpointer`` wraps orbax's ``CheckpointManager``: it keeps the last ``keep_last`` steps and
the best step by a metric (both at once), stores the whole training state (trainable pytree,
saved modules, optimizer state, step) plus JSON (data position, metrics, the loss window, a
config fingerprint), and resumes from the latest step. orbax writes each step into a temporary
directory and renames it when complete, so a save killed half-way never damages an earlier one.

Integrity, as for adapter files: every saved array's sha256 is recorded in the step's JSON, the
JSON's own sha256 in it too, both checked on restore, and non-finite parameters are refused at
save and at load. A damaged latest step makes ``restore_latest`` fall back to the newest earlier
step that verifies, and say so; a damaged step asked for by number is a
``CheckpointCorruptError``. (Damaged steps are moved aside, into ``damaged_checkpoints/``, as
they are found: the run redoes them.) A step that cannot be read because of permissions or I/O
is an ``OSError``, never taken for damage.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gpart_jax import files
from gpart_jax.paths import leaves_with_paths

DAMAGED = "damaged_checkpoints"  # next to the checkpoints directory: steps that did not verify


class CheckpointCorruptError(ValueError):
    """A run checkpoint whose files are damaged or whose arrays differ from their sha256."""


class CheckpointConfigError(ValueError):
    """A checkpoint directory written by another config."""


def _sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def digests(state) -> list[str]:
    """sha256 of every leaf of ``state`` (host arrays), in pytree order."""
    return [_sha256(np.asarray(x)) for x in jax.tree_util.tree_leaves(state)]


def info_digest(info: dict) -> str:
    """sha256 of a step's JSON, without its own ``info_sha256`` (as an adapter's manifest)."""
    return files.json_sha256(info, without="info_sha256")


def non_finite(tree) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` that hold NaN or inf."""
    bad = []
    for path, leaf in leaves_with_paths(tree)[0]:
        x = np.asarray(leaf)
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            bad.append(path or "(root)")
    return bad


def _raise_if_unreadable(error: BaseException, step: int, directory: pathlib.Path) -> None:
    """Re-raise as ``OSError`` when ``error`` (or what caused it) is a permission or I/O error:
    a file that cannot be read now is not a damaged file, and must not be moved aside."""
    for seen in files.error_chain(error):
        if isinstance(seen, OSError) and not isinstance(seen, (FileNotFoundError, IsADirectoryError,
                                                               NotADirectoryError)):
            raise OSError(seen.errno, f"checkpoint {step} in {directory} cannot be read "
                          f"({seen.strerror or seen}); fix the permissions or the storage, then "
                          f"run again: nothing was moved or deleted", seen.filename) from error


class RunCheckpointer:
    """Checkpoints of a training run: keep the last ``keep_last`` and the best by ``best_metric``.

    ``state`` is a pytree of host arrays (``jax.device_get`` of the training state); ``info`` is
    JSON (data position, metrics, anything needed to resume). ``best_mode`` (``"max"`` or
    ``"min"``) must be given with ``best_metric``: a loss is minimized, an accuracy maximized.
    A ``config_fingerprint`` is stored with each step; restoring refuses a directory written by
    another config.
    """

    def __init__(self, directory, *, keep_last: int = 2, best_metric: str | None = None,
                 best_mode: str | None = None, config_fingerprint: str | None = None):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as ocm

        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an integer >= 1, got {keep_last!r}")
        if best_metric is not None and best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min' with best_metric={best_metric!r} "
                             f"(a loss is minimized, an accuracy maximized), got {best_mode!r}")
        self.directory = pathlib.Path(directory).absolute()
        self.best_metric, self.best_mode = best_metric, best_mode
        self.config_fingerprint = config_fingerprint
        policies = [ocm.LatestN(n=keep_last)]
        if best_metric is not None:
            policies.append(ocm.BestN(get_metric_fn=lambda m: m[best_metric],
                                      reverse=best_mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False))
        # best_fn makes orbax write each step's metrics to disk: without it they live in memory
        # only, and a resumed run (a new manager) would forget the best step and delete it.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            best_fn=None if best_metric is None else (lambda m: m[best_metric]),
            best_mode=best_mode or "max", enable_async_checkpointing=False, create=True)
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "info"),
                                              options=options)

    def save(self, step: int, state, info: dict | None = None, metrics: dict | None = None) -> None:
        """Save ``state`` and ``info`` as ``step`` (``metrics`` rank it for the best-N policy).

        Refuses (``FloatingPointError``) a state with non-finite parameters: a diverged run keeps
        its last good checkpoint.
        """
        bad = non_finite(state)
        if bad:
            raise FloatingPointError(f"refusing to checkpoint step {step}: {', '.join(bad[:3])} hold "
                                     f"NaN or inf (the run diverged; lower the learning rates)")
        info = dict(info or {})
        info["config_fingerprint"] = self.config_fingerprint
        info["state_sha256"] = digests(state)
        if metrics is not None:
            info["metrics"] = metrics
        info["info_sha256"] = info_digest(info)
        ocp = self._ocp
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), info=ocp.args.JsonSave(info)),
                metrics=metrics, force=True)
            self._manager.wait_until_finished()
        except Exception as e:
            # orbax's writer threads may still be at work on this step: let them end (and log)
            # before the error goes up, so that nothing of the failed save runs after it
            with contextlib.suppress(Exception):
                self._manager.wait_until_finished()
            full = next((x for x in files.error_chain(e) if files.disk_full(x)), None)
            if full is None:
                raise
            # orbax's array writer says ValueError("RESOURCE_EXHAUSTED ... [os_error_code='28']")
            raise OSError(files.os_errno(full), f"the disk is full: checkpoint {step} was not "
                          f"written (the step stays unpublished, earlier steps are intact); free "
                          f"some space and run again", str(self.directory)) from e

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def _info(self, step: int) -> dict:
        ocp = self._ocp
        try:
            info = self._manager.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore())).info
        except Exception as e:  # orbax raises many types for damaged files
            _raise_if_unreadable(e, step, self.directory)
            raise CheckpointCorruptError(f"checkpoint {step} in {self.directory}: its JSON cannot be "
                                         f"read ({type(e).__name__}: {str(e)[:160]})") from None
        if not isinstance(info, dict):
            raise CheckpointCorruptError(f"checkpoint {step} in {self.directory}: its JSON is not an "
                                         f"object")
        if info.get("info_sha256") != info_digest(info):
            raise CheckpointCorruptError(f"checkpoint {step} in {self.directory}: its JSON differs "
                                         f"from its recorded sha256 (damaged)")
        if info.get("config_fingerprint") != self.config_fingerprint:
            raise CheckpointConfigError(f"{self.directory} holds a run of another config (fingerprint "
                                        f"{str(info.get('config_fingerprint'))[:12]}, this one "
                                        f"{str(self.config_fingerprint)[:12]}); use another directory")
        return info

    def restore(self, abstract_state, step: int) -> tuple[Any, dict]:
        """``(state, info)`` of ``step``, verified (``CheckpointCorruptError`` if damaged).

        ``abstract_state`` gives the tree structure, shapes and dtypes (``jax.eval_shape`` of the
        initial state).
        """
        info = self._info(step)
        ocp = self._ocp
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))).state
        except Exception as e:
            _raise_if_unreadable(e, step, self.directory)
            raise CheckpointCorruptError(f"checkpoint {step} in {self.directory}: its arrays cannot be "
                                         f"read ({type(e).__name__}: {str(e)[:160]})") from None
        state = jax.device_get(state)
        recorded = info.get("state_sha256")
        if recorded is None or recorded != digests(state):
            raise CheckpointCorruptError(f"checkpoint {step} in {self.directory}: its arrays differ from "
                                         f"their recorded sha256 (damaged)")
        bad = non_finite(state)
        if bad:
            raise CheckpointCorruptError(f"checkpoint {step} in {self.directory}: {bad[:3]} hold NaN or "
                                         f"inf")
        return state, info

    def restore_latest(self, abstract_state, warn: Callable[[str], None] = print
                       ) -> tuple[Any, dict] | None:
        """The newest step that verifies, ``None`` if there is none. Each damaged newer step is
        reported through ``warn`` and moved aside, into ``damaged_checkpoints/`` next to the
        checkpoints (the run redoes those steps from the good one; nothing is deleted). A step
        that cannot be read for a reason other than damage (permissions, I/O) stops the resume
        with ``OSError`` and moves nothing."""
        for step in reversed(self.all_steps()):
            try:
                return self.restore(abstract_state, step)
            except CheckpointCorruptError as e:
                moved = self.move_aside(step)
                warn(f"{e}; moved to {moved}, and the run resumes from the previous checkpoint")
        return None

    def move_aside(self, step: int) -> pathlib.Path:
        """Rename step ``step``'s directory out of the manager's sight; returns where it went."""
        source = self.directory / str(step)
        if not source.is_dir():
            raise CheckpointCorruptError(f"checkpoint {step} in {self.directory} has no directory "
                                         f"{source.name} to move aside")
        aside = self.directory.parent / DAMAGED
        aside.mkdir(exist_ok=True)
        target = aside / str(step)
        n = 1
        while target.exists():  # an earlier damaged copy of the same step is kept too
            target, n = aside / f"{step}.{n}", n + 1
        source.rename(target)
        self._manager.reload()
        return target

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

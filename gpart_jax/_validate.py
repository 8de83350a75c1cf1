"""Argument checks: one validator per kind of argument, each naming the argument and the fix.

Every public function of the library checks its arguments with these, so that a bad value is a
``TypeError`` (wrong kind) or ``ValueError`` (right kind, out of range) that says which argument
and what to pass instead, raised before anything is computed or written.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

import jax
import numpy as np

MASK64 = (1 << 64) - 1


def _is_tracer(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def integer(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]``; a traced value is refused (it must be static)."""
    if _is_tracer(value):
        raise TypeError(f"{name} must be a concrete Python integer, got a traced value inside "
                        f"jit/vmap; pass it as a static argument (static_argnums / "
                        f"static_argnames, or a closure) rather than as an array")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def positive_int(value, name: str) -> int:
    """``value`` as a Python int >= 1."""
    return integer(value, name, low=1)


def uint64(value, name: str) -> int:
    """``value`` as a Python int in ``[0, 2**64)`` (seeds, positions)."""
    if _is_tracer(value) or not (isinstance(value, (int, np.integer)) and not isinstance(
            value, (bool, np.bool_))):
        return integer(value, name)  # raises with the right message
    if not 0 <= int(value) <= MASK64:
        raise ValueError(f"{name} must be in [0, 2**64), got {int(value)}")
    return int(value)


def real(value, name: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite Python float in the given interval (open ends where asked)."""
    if _is_tracer(value):
        raise TypeError(f"{name} must be a concrete number, got a traced value; pass it as a "
                        f"static argument")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value:g}")
    return value


def choice(value, name: str, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def boolean(value, name: str) -> bool:
    """``value`` as a Python bool (Python or numpy bools only: 0 and 1 are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def float_vector(value, name: str, length: int) -> None:
    """A float32 array of shape ``(length,)`` (a tracer is checked by its shape and dtype only)."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{name} must be a float32 array of shape ({length},), got "
                        f"{type(value).__name__}; convert it with jnp.asarray(x, jnp.float32)")
    if tuple(shape) != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(shape)}; use jax.vmap "
                         f"to apply several at once")
    if np.dtype(dtype) != np.float32:
        raise TypeError(f"{name} must be float32, got {np.dtype(dtype)}; cast it with "
                        f"x.astype(jnp.float32)")

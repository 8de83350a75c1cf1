"""The library's exceptions: one type per condition, each a ``ValueError`` (bad input).

* ``TargetError``: a filter selected no parameter, or parameters a method cannot adapt.
* ``LayoutMismatchError``: params whose adapted paths, shapes or dtypes differ from what a
  method (or an adapter file) was built for.
* ``AdapterError``: an adapter directory that cannot be used as asked (missing, another
  format, another method, an output that exists); ``AdapterCorruptError``: one whose bytes
  differ from their recorded sha256 or that is truncated; ``AdapterLockedError``: another
  process is writing it.
* ``IncompatibleAdaptersError``: thetas on different partitions, compared or combined.
* ``InteropError``: a reference (PEFT) adapter, base or argument that cannot be used.
"""

from __future__ import annotations


class TargetError(ValueError):
    """A selection that matched nothing, or leaves a method cannot adapt."""


class LayoutMismatchError(ValueError):
    """Params whose adapted paths, shapes or dtypes differ from a method's or an adapter's."""


class AdapterError(ValueError):
    """An adapter directory that cannot be used as asked; the message says why and what to do."""


class AdapterCorruptError(AdapterError):
    """An adapter whose files are truncated or whose bytes differ from their recorded sha256."""


class AdapterLockedError(AdapterError):
    """Another process holds the lock of an adapter path (its pid and host are in the message)."""


class IncompatibleAdaptersError(ValueError):
    """Adapters built on different partitions: their coordinates are not comparable."""


class InteropError(ValueError):
    """An adapter, base or argument of the reference format that cannot be used as asked."""

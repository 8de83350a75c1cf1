"""Selecting leaves of a parameter pytree: one vocabulary for every selection in the library.

The same filters choose the weights a method adapts (``targets``), the modules trained in full
(``saved`` modules, PEFT's ``modules_to_save``) and the modules a reference (PEFT) adapter
targets. ``to_predicate(filter)`` turns any filter into ``(path, leaf) -> bool`` over the
canonical paths of ``gpart_jax.paths``; ``select(params, filter)`` lists the matching paths or
says, with the closest paths, why nothing matched.

Filters:

* **a string**: a regular expression matched against whole path components. It selects a leaf
  when it matches (``re.fullmatch``) a run of consecutive components that ends at the leaf
  (``"kernel"``, ``"query/kernel"``, ``r"fc\\d/kernel"``, a whole path) or at a module above it
  (``"query"``, ``"attention/query"``, ``r"layer_\\d+"``). A *module* match selects, for adapter
  targets (``modules="weights"``), the weights directly in that module, i.e. its floating-point
  leaves of rank 2 or more other than a ``bias`` (a DenseGeneral bias is 2-D) (PEFT's
  ``target_modules=["query", "value"]`` adapts the query and value kernels); for modules
  trained in full (``modules="all"``) every leaf under it (PEFT's
  ``modules_to_save=["classifier"]`` trains the head's kernel and bias).
* ``"all-linear"``: ``AllLinear()``, every Dense or DenseGeneral ``kernel`` outside the heads.
* **a list or tuple**: any of its filters.
* **a type** (``nnx.Param``, any ``nnx.Variable`` subclass): leaves held by such a Variable.
* **a callable** ``(path, leaf) -> bool``; on nnx state or an nnx Module, ``leaf`` is the
  ``Variable`` (``isinstance(leaf, nnx.Param)`` works; ``.shape`` and ``.dtype`` are its array's).
* ``True`` / ``False``: every leaf / none.
* **combinators**: ``Any(*filters)``, ``All(*filters)``, ``Not(filter)``, and
  ``Layers(indices, pattern)`` (leaves of those transformer blocks).

Examples::

    select(params, ("query", "value"))                 # q, v kernels (module names)
    select(params, All("all-linear", Layers([4, 5])))  # every linear kernel of blocks 4 and 5
    select(state, All(nnx.Param, "kernel"))            # nnx: Param kernels only
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gpart_jax import paths as tree_paths
from gpart_jax.errors import TargetError

Predicate = Callable[[str, typing.Any], bool]
Filter = typing.Any  # str | type | Callable | bool | Sequence[Filter] | FilterBase
MODULE_MATCHES = ("weights", "all")
DEFAULT_HEADS = ("classifier", "lm_head", "head", "score")


def is_float(leaf) -> bool:
    """True for a leaf (array, ShapeDtypeStruct or nnx Variable) of a floating-point dtype."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def rank(leaf) -> int:
    return len(getattr(leaf, "shape", ()))


def is_weight(leaf) -> bool:
    """A floating-point leaf of rank 2 or more: a kernel, an embedding table, a conv kernel."""
    return is_float(leaf) and rank(leaf) >= 2


class FilterBase:
    """A compiled filter: ``matches(path, leaf, modules)`` with ``modules`` in ``MODULE_MATCHES``."""

    def matches(self, path: str, leaf: typing.Any, modules: str) -> bool:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Pattern(FilterBase):
    """A regex over runs of whole path components (see the module docstring)."""

    regex: str

    def __post_init__(self):
        try:
            object.__setattr__(self, "_rx", re.compile(self.regex))
        except re.error as e:
            raise TargetError(f"{self.regex!r} is not a valid regular expression: {e}") from None

    def matches(self, path: str, leaf: typing.Any, modules: str) -> bool:
        parts = path.split("/")
        rx = self._rx
        n = len(parts)
        if any(rx.fullmatch("/".join(parts[i:])) for i in range(n)):
            return True
        if modules == "weights":
            return (is_weight(leaf) and parts[-1] != "bias"
                    and any(rx.fullmatch("/".join(parts[i:n - 1])) for i in range(n - 1)))
        return any(rx.fullmatch("/".join(parts[i:j])) for j in range(1, n) for i in range(j))

    def __repr__(self) -> str:
        return repr(self.regex)


@dataclasses.dataclass(frozen=True)
class AllLinear(FilterBase):
    """Every ``kernel`` of rank 2 (Dense) or 3 (DenseGeneral, as in flax attention) outside the
    modules named in ``exclude`` (the classifier / LM heads by default).

    A rank-3 kernel of a 1-D convolution cannot be told from a DenseGeneral one by its shape:
    exclude such modules by name. Rank-4 (2-D convolution) kernels are never selected.
    """

    exclude: tuple[str, ...] = DEFAULT_HEADS

    def matches(self, path: str, leaf: typing.Any, modules: str) -> bool:
        if tree_paths.leaf_name(path) != "kernel" or rank(leaf) not in (2, 3) or not is_float(leaf):
            return False
        parents = path.split("/")[:-1]
        for name in self.exclude:
            want = name.strip("/").split("/")
            if any(parents[i:i + len(want)] == want for i in range(len(parents) - len(want) + 1)):
                return False
        return True

    def __repr__(self) -> str:
        return "'all-linear'" if self.exclude == DEFAULT_HEADS else f"AllLinear({self.exclude!r})"


@dataclasses.dataclass(frozen=True)
class Layers(FilterBase):
    """Leaves of the transformer blocks ``indices`` (by ``gpart_jax.paths.layer_index``)."""

    indices: tuple[int, ...]
    pattern: str = tree_paths.DEFAULT_LAYER_PATTERN

    def __init__(self, indices, pattern: str = tree_paths.DEFAULT_LAYER_PATTERN):
        if isinstance(indices, int):
            indices = (indices,)
        object.__setattr__(self, "indices", tuple(int(i) for i in indices))
        object.__setattr__(self, "pattern", pattern)

    def matches(self, path: str, leaf: typing.Any, modules: str) -> bool:
        found = tree_paths.layer_index(path, self.pattern)
        return found is not None and found[0] in self.indices


class Any(FilterBase):
    """Leaves any of the filters selects."""

    def __init__(self, *filters):
        self.filters = tuple(compile_filter(f) for f in filters)

    def matches(self, path, leaf, modules):
        return any(f.matches(path, leaf, modules) for f in self.filters)

    def __repr__(self):
        return f"Any({', '.join(map(repr, self.filters))})"


class All(FilterBase):
    """Leaves every filter selects."""

    def __init__(self, *filters):
        if not filters:
            raise TargetError("All() needs at least one filter")
        self.filters = tuple(compile_filter(f) for f in filters)

    def matches(self, path, leaf, modules):
        return all(f.matches(path, leaf, modules) for f in self.filters)

    def __repr__(self):
        return f"All({', '.join(map(repr, self.filters))})"


class Not(FilterBase):
    """Leaves the filter does not select."""

    def __init__(self, filter):
        self.filter = compile_filter(filter)

    def matches(self, path, leaf, modules):
        return not self.filter.matches(path, leaf, modules)

    def __repr__(self):
        return f"Not({self.filter!r})"


@dataclasses.dataclass(frozen=True)
class _Callable(FilterBase):
    fn: Callable[[str, typing.Any], bool]

    def matches(self, path, leaf, modules):
        return bool(self.fn(path, leaf))

    def __repr__(self):
        return getattr(self.fn, "__name__", repr(self.fn))


@dataclasses.dataclass(frozen=True)
class _OfType(FilterBase):
    type: type

    def matches(self, path, leaf, modules):
        return isinstance(leaf, self.type)

    def __repr__(self):
        return self.type.__name__


@dataclasses.dataclass(frozen=True)
class _Constant(FilterBase):
    value: bool

    def matches(self, path, leaf, modules):
        return self.value

    def __repr__(self):
        return repr(self.value)


def compile_filter(filter: Filter) -> FilterBase:
    """The ``FilterBase`` of any filter literal (see the module docstring)."""
    if isinstance(filter, FilterBase):
        return filter
    if isinstance(filter, bool):
        return _Constant(filter)
    if isinstance(filter, str):
        if filter == "all-linear":
            return AllLinear()
        if not filter:
            raise TargetError("an empty string selects nothing; name a module or leaf "
                              "('query', 'kernel') or pass False")
        return Pattern(filter)
    if isinstance(filter, (list, tuple)):
        if not filter:
            raise TargetError("an empty list selects nothing; name at least one module or leaf, "
                              "or pass False")
        return Any(*filter)
    if isinstance(filter, type):
        return _OfType(filter)
    if callable(filter):
        return _Callable(filter)
    raise TargetError(f"a filter is a string (module or leaf names, a regex), 'all-linear', a list "
                      f"of filters, a type (nnx.Param), a callable (path, leaf) -> bool or a "
                      f"combinator (Any, All, Not, Layers); got {type(filter).__name__} {filter!r}")


def to_predicate(filter: Filter, modules: str = "weights") -> Predicate:
    """``(path, leaf) -> bool`` of ``filter``; ``modules`` says what a module name selects:
    ``"weights"`` (adapter targets: the module's own weights) or ``"all"`` (every leaf under it)."""
    if modules not in MODULE_MATCHES:
        raise ValueError(f"modules must be one of {MODULE_MATCHES}, got {modules!r}")
    compiled = compile_filter(filter)
    return lambda path, leaf: compiled.matches(path, leaf, modules)


def _matches(predicate: Predicate, path: str, leaf) -> bool:
    try:
        return bool(predicate(path, leaf))
    except Exception:  # a user's predicate that cannot judge a stand-in: no hint from it
        return False


def _suggestions(flat: dict[str, typing.Any], filter: Filter, limit: int = 4) -> str:
    """The paths closest to what ``filter`` names (for a string), or the first few paths."""
    words = [f for f in (filter if isinstance(filter, (list, tuple)) else [filter])
             if isinstance(f, str)]
    runs: dict[str, str] = {}
    for path in sorted(flat, key=lambda q: not is_weight(flat[q])):  # name a weight's path first
        parts = path.split("/")
        for i in range(len(parts)):
            for j in range(i + 1, len(parts) + 1):
                runs.setdefault("/".join(parts[i:j]), path)
    close = []
    for word in words:
        for run in difflib.get_close_matches(word, list(runs), n=limit, cutoff=0.6):
            if run not in close:
                close.append(run)
    if close:
        return "; closest: " + ", ".join(f"{r!r} (in {runs[r]})" for r in close[:limit])
    shown = [f"{p} {tuple(getattr(leaf, 'shape', ()))}" for p, leaf in list(flat.items())[:limit]]
    return f"; paths look like: {', '.join(shown)}" + (" ..." if len(flat) > limit else "")


def select(params, filter: Filter, *, modules: str = "weights", what: str = "targets") -> list[str]:
    """Paths of the leaves of ``params`` that ``filter`` selects, in pytree order.

    ``what`` names the argument in the error raised (``TargetError``) when nothing matches; the
    error lists the closest paths.
    """
    flat = tree_paths.holders(params)
    if not flat:
        raise TypeError(f"the parameter pytree (base_params) is {'None' if params is None else 'empty'}; "
                        f"pass the model's parameters (e.g. model.init(...) or the loaded checkpoint)")
    predicate = to_predicate(filter, modules)
    chosen = [path for path, leaf in flat.items() if predicate(path, leaf)]
    if not chosen:
        as_float = {path: jax.ShapeDtypeStruct(getattr(leaf, "shape", ()), jnp.float32)
                    for path, leaf in flat.items() if not is_float(leaf)}
        near = [path for path, leaf in as_float.items() if _matches(predicate, path, leaf)]
        if near:
            dtypes = sorted({str(getattr(flat[path], "dtype", "?")) for path in near})
            raise TargetError(f"{what} {filter!r} matched only leaves that are not floating point "
                              f"({', '.join(near[:3])}{' ...' if len(near) > 3 else ''}: "
                              f"{', '.join(dtypes)}); adapted weights must be float: cast the "
                              f"params (e.g. jax.tree.map(lambda x: x.astype(jnp.float32), params))")
        raise TargetError(f"{what} {filter!r} matched no parameter{_suggestions(flat, filter)}")
    return chosen


__all__ = ["All", "AllLinear", "Any", "Filter", "Layers", "Not", "Pattern", "Predicate",
           "compile_filter", "is_weight", "select", "to_predicate"]

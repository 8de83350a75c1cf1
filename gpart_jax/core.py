"""GPart: global parameter partitioning and the pure map ``theta -> params``.

The adapted weights of a model, flattened in the layout's global order, form ``w0`` of length
``N``. A partition assigns every position ``i`` to one of ``d`` groups, ``g(i)``, with sizes
``n_j = |{i : g(i) = j}|``. GPart trains ``theta`` of length ``d`` and sets

    w = w0 + P theta,    (P theta)_i = theta_{g(i)} / sqrt(n_{g(i)})

so ``P^T P = I_d`` (the columns of ``P`` have disjoint supports and unit norm): distances, inner
products and weight decay on ``theta`` are those of the weight update. Gradients are
``grad_theta = P^T grad_w``, i.e. ``grad_theta_j = sum_{i : g(i) = j} grad_w_i / sqrt(n_j)``.
With ``isometric=False`` the scales are 1 and ``P^T P = diag(n_1, ..., n_d)`` (the paper's
ablation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gpart_jax import hashing
from gpart_jax.layout import (
    DEFAULT_EXCLUDE,
    DEFAULT_LAYER_PATTERN,
    LayoutEntry,
    Targets,
    build_layout,
    describe_mismatch,
    fingerprint,
    flatten_with_paths,
    layer_index,
    natural_key,
    select_targets,
)

SCHEMES = ("stateless", "balanced")


class LayoutMismatchError(ValueError):
    """Params whose adapted paths, shapes or order differ from an adapter's layout."""


def layout_diff(expected, actual, limit: int = 5) -> list[str]:
    """The first differences between two layouts, entry by entry, as readable lines."""
    out = []
    for i in range(max(len(expected), len(actual))):
        a = expected[i] if i < len(expected) else None
        b = actual[i] if i < len(actual) else None
        if a == b:
            continue
        if a is None:
            out.append(f"entry {i}: unexpected {b.path} {b.shape}")
        elif b is None:
            out.append(f"entry {i}: missing {a.path} {a.shape}")
        elif a.path != b.path:
            out.append(f"entry {i}: expected {a.path}, found {b.path}")
        else:
            out.append(f"{a.path}: expected shape {a.shape} ({a.element_order}), found {b.shape} "
                       f"({b.element_order})")
        if len(out) >= limit:
            break
    return out
SCOPES = ("global", "transformer_block")
ADAPTED_DTYPES = ("float32", "base")
COUNT_CHUNK = 2**20


@dataclasses.dataclass(frozen=True)
class Block:
    """One independent partition: ``d`` groups owning ``theta[theta_offset : theta_offset + d]``.

    ``scope="global"`` has one block; ``"transformer_block"`` one per transformer block, seeded
    ``seed + k`` with positions restarting at 0, as the reference implementation builds it.
    """

    prefix: str
    theta_offset: int
    d: int
    seed: int
    num_positions: int


class _Plan:
    """Host-side, identity-hashed static part of a GPart (its pytree aux data)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


@functools.partial(jax.jit, static_argnums=2)
def _chunk_ids(hi, lo, d):
    return hashing.stateless_ids_jax(jnp.arange(COUNT_CHUNK, dtype=jnp.uint32), (hi, lo), d)


def _count_stateless(block: Block) -> np.ndarray:
    """Group sizes of one stateless block: one chunked counting pass over its positions."""
    if block.num_positions <= COUNT_CHUNK:  # small: numpy, no compilation
        ids = hashing.group_ids(0, block.num_positions, block.d, block.seed)
        return np.bincount(ids, minlength=block.d).astype(np.int64)
    counts = np.zeros(block.d, dtype=np.int64)
    for start in range(0, block.num_positions, COUNT_CHUNK):
        base = (start + block.seed + hashing.GOLDEN_GAMMA) & hashing.MASK64
        ids = np.asarray(_chunk_ids(np.uint32(base >> 32), np.uint32(base & 0xFFFFFFFF), block.d))
        valid = min(COUNT_CHUNK, block.num_positions - start)
        counts += np.bincount(ids[:valid], minlength=block.d)
    return counts


def _scales(sizes: np.ndarray, isometric: bool) -> np.ndarray:
    """``1 / sqrt(max(n_j, 1))`` in float32, IEEE sqrt then IEEE division (never rsqrt)."""
    if not isometric:
        return np.ones(sizes.shape, dtype=np.float32)
    n = np.maximum(sizes, 1).astype(np.float32)
    return np.float32(1) / np.sqrt(n)


def _local_index(entry: LayoutEntry):
    """``uint32`` array of the leaf's shape holding each element's local index.

    Native order: the row-major flat index. Torch order (2-D kernels stored ``(in, out)``):
    element ``(a, b)`` has index ``b * in + a`` (row-major in the PyTorch ``(out, in)`` weight).
    """
    shape = entry.shape
    if entry.element_order == "torch":
        a = lax.broadcasted_iota(jnp.uint32, shape, 0)
        b = lax.broadcasted_iota(jnp.uint32, shape, 1)
        return b * np.uint32(shape[0]) + a
    local = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        local = local + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    return local


@jax.tree_util.register_pytree_node_class
class GPart:
    """A built partition of a parameter pytree: the plan behind ``reparam``.

    Build it with ``GPart.create``. It is a pytree whose leaves are the per-group ``scales``,
    the balanced scheme's small walk tables and, with ``materialize=True``, the per-leaf ``int32``
    group ids; everything else is static. Pass it as an argument of a jitted function (rather
    than closing over it) when it holds materialized ids, so that they are not compiled in as
    constants.
    """

    def __init__(self, plan: _Plan, scales, tables, ids):
        self._plan = plan
        self.scales = scales
        self._tables = tables
        self._ids = ids

    # ------------------------------------------------------------------ pytree
    def tree_flatten(self):
        return (self.scales, self._tables, self._ids), self._plan

    @classmethod
    def tree_unflatten(cls, plan, children):
        return cls(plan, *children)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        base_params,
        *,
        d: int,
        seed: int = 42,
        targets: Targets = ("query/kernel", "value/kernel"),
        scheme: str = "stateless",
        isometric: bool = True,
        materialize: bool = False,
        scope: str = "global",
        element_order: str = "native",
        bias: bool = False,
        order: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        layer_pattern: str | None = None,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        adapted_dtype: str = "float32",
        warn_empty: bool = True,
    ) -> GPart:
        """Plan a GPart over ``base_params`` (arrays or ``jax.ShapeDtypeStruct``; only shapes are read).

        Args:
          base_params: the frozen parameter pytree (flax linen dict or nnx state).
          d: number of groups, the length of ``theta`` (the budget); ``1 <= d <= N``.
          seed: partition seed in ``[0, 2**64)``.
          targets: which leaves are adapted: a regex (full match on the path), a list/tuple of
            path suffixes matched on whole components (``("query/kernel", "value/kernel")``), a
            callable ``(path, leaf) -> bool``, or ``"all-linear"`` (every 2-D float ``kernel``
            not under a name in ``exclude``).
          scheme: ``"stateless"`` (reference-compatible SplitMix64 ids, multinomial sizes) or
            ``"balanced"`` (keyed permutation, sizes ``floor/ceil(N/d)``); see ``hashing``.
          isometric: scale group ``j`` by ``1/sqrt(n_j)`` (``P^T P = I``); else by 1.
          materialize: store ``int32`` ids per adapted leaf instead of recomputing them.
          scope: ``"global"`` (one partition) or ``"transformer_block"`` (one per block, d split
            by divmod, block ``k`` seeded ``seed + k``, as the reference does).
          element_order: ``"native"`` or ``"torch"`` (2-D kernels enumerated as the PyTorch
            ``(out, in)`` weight; see ``LayoutEntry``).
          bias: also adapt each targeted kernel's own ``bias``, its elements following the
            kernel's (the reference's ``bias="gpart_only"``).
          order: explicit global order of the targeted paths (default: natural order).
          layers: only adapt leaves in these layer indices (by ``layer_pattern``).
          layer_pattern: regex whose match on a path component (or two joined by ``/``) gives
            the layer index; default ``(layers|layer|h|block|blocks)[_/]?(\\d+)``.
          exclude: names skipped by ``"all-linear"``.
          adapted_dtype: ``"float32"`` (adapted leaves returned in float32: exact, the default)
            or ``"base"`` (cast back to each leaf's dtype: lean, but a bf16 base keeps only 8
            significant bits, so small updates are rounded away).
          warn_empty: warn when some groups are empty (stateless scheme only).
        """
        d = hashing._check_d(d)
        seed = hashing.check_uint64(seed, "seed")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if adapted_dtype not in ADAPTED_DTYPES:
            raise ValueError(f"adapted_dtype must be one of {ADAPTED_DTYPES}, got {adapted_dtype!r}")

        flat, _ = flatten_with_paths(base_params)
        chosen = select_targets(flat, targets, exclude=exclude, layers=layers,
                                layer_pattern=layer_pattern)
        layout = build_layout(flat, chosen, order=order, element_order=element_order, bias=bias)
        n_total = sum(e.size for e in layout)
        if d > n_total:
            raise ValueError(f"d = {d} exceeds N = {n_total}, the number of adapted weights; "
                             f"choose d <= {n_total} or target more parameters")

        # Blocks: which partition each layout entry belongs to, and its position offset there.
        pattern = layer_pattern or DEFAULT_LAYER_PATTERN
        if scope == "global":
            prefixes = ["" for _ in layout]
        else:
            prefixes = []
            for e in layout:
                li = layer_index(e.path, pattern)
                if li is None:
                    raise ValueError(f"scope='transformer_block': targeted leaf {e.path} is in no "
                                     f"transformer block (layer_pattern {pattern!r})")
                prefixes.append(li[1])
        block_names = sorted(set(prefixes), key=natural_key)
        if d < len(block_names):
            raise ValueError(f"d = {d} is smaller than the number of transformer blocks "
                             f"({len(block_names)}); every block needs at least one group")
        base_d, extra = divmod(d, len(block_names))
        blocks, theta_offset = [], 0
        leaf_block, leaf_offset = [0] * len(layout), [0] * len(layout)
        for k, name in enumerate(block_names):
            pos = 0
            for i, e in enumerate(layout):
                if prefixes[i] == name:
                    leaf_block[i], leaf_offset[i] = k, pos
                    pos += e.size
            d_k = base_d + (1 if k < extra else 0)
            if d_k > pos:
                raise ValueError(f"block {name!r} has {pos} adapted weights but {d_k} groups; "
                                 f"lower d")
            blocks.append(Block(name, theta_offset, d_k, (seed + k) & hashing.MASK64, pos))
            theta_offset += d_k

        if scheme == "stateless":
            sizes = np.concatenate([_count_stateless(b) for b in blocks])
            keys = tuple(None for _ in blocks)
            tables = tuple(None for _ in blocks)
        else:
            sizes = np.concatenate([hashing.balanced_group_sizes(b.num_positions, b.d)
                                    for b in blocks])
            keys = tuple(hashing.BalancedKeys(b.num_positions, b.seed) for b in blocks)
            tables = tuple(jnp.asarray(hashing.walk_table(k)) for k in keys)
        num_empty = int(np.sum(sizes == 0))
        if num_empty and warn_empty:
            warnings.warn(f"GPart: {num_empty} of {d} groups are empty (expected about "
                          f"d * exp(-N/d) = {d * math.exp(-n_total / d):.1f}); their scale is "
                          f"clamped to 1 and their theta entries stay unused", stacklevel=2)

        plan = _Plan(
            layout=layout, d=d, seed=seed, scheme=scheme, isometric=bool(isometric),
            scope=scope, materialize=bool(materialize), adapted_dtype=adapted_dtype,
            blocks=tuple(blocks), leaf_block=tuple(leaf_block), leaf_offset=tuple(leaf_offset),
            keys=keys, group_sizes=sizes, num_adapted=n_total, num_empty_groups=num_empty,
            layer_pattern=layer_pattern,
            fingerprint=fingerprint(layout, d, scheme, scope), variants={},
        )
        gp = cls(plan, jnp.asarray(_scales(sizes, isometric)), tables, None)
        if materialize:
            gp._ids = jax.jit(GPart._all_recomputed_ids)(gp)
        return gp

    # ------------------------------------------------------------------ properties
    d = property(lambda self: self._plan.d, doc="Number of groups (length of theta).")
    seed = property(lambda self: self._plan.seed, doc="Partition seed.")
    scheme = property(lambda self: self._plan.scheme, doc="'stateless' or 'balanced'.")
    isometric = property(lambda self: self._plan.isometric, doc="Scales 1/sqrt(n_j) or 1.")
    scope = property(lambda self: self._plan.scope, doc="'global' or 'transformer_block'.")
    materialize = property(lambda self: self._plan.materialize, doc="Ids stored, not recomputed.")
    adapted_dtype = property(lambda self: self._plan.adapted_dtype,
                             doc="'float32' or 'base': dtype of the adapted leaves.")
    layout = property(lambda self: self._plan.layout,
                      doc="Ordered tuple of LayoutEntry(path, shape, element_order, is_bias).")
    blocks = property(lambda self: self._plan.blocks, doc="The independent partitions (Block).")
    num_adapted = property(lambda self: self._plan.num_adapted, doc="N, the adapted weights.")
    group_sizes = property(lambda self: self._plan.group_sizes,
                           doc="numpy int64 array of length d: n_j before clamping.")
    num_empty_groups = property(lambda self: self._plan.num_empty_groups,
                                doc="Groups with n_j = 0 (stateless only).")
    fingerprint = property(lambda self: self._plan.fingerprint,
                           doc="sha256 of the canonical JSON of (layout, d, scheme, scope).")

    def spec(self) -> dict:
        """JSON-able description from which ``GPart.from_spec`` rebuilds this plan on a base.

        Big integers (the seed) are written as decimal strings so that no JSON reader rounds them.
        """
        return {"d": self.d, "seed": str(self.seed), "scheme": self.scheme,
                "isometric": self.isometric, "scope": self.scope,
                "layer_pattern": self._plan.layer_pattern, "adapted_dtype": self.adapted_dtype,
                "materialize": self.materialize,
                "layout": [e.to_json() for e in self.layout], "fingerprint": self.fingerprint}

    @classmethod
    def from_spec(cls, base_params, spec: dict, **overrides) -> GPart:
        """Rebuild a plan from ``spec()`` on ``base_params``; its layout must match exactly.

        Raises ``LayoutMismatchError`` naming the first paths that differ (missing, other shape).
        ``overrides`` may change ``materialize`` or ``adapted_dtype`` (not the partition).
        """
        layout = tuple(LayoutEntry.from_json(item) for item in spec["layout"])
        problems = describe_mismatch(layout, flatten_with_paths(base_params)[0])
        if problems:
            raise LayoutMismatchError("the base params do not have the layout this adapter was "
                                      "trained on: " + "; ".join(problems))
        kernels = [e.path for e in layout if not e.is_bias]
        wanted = set(kernels)
        options = dict(
            d=int(spec["d"]), seed=int(spec["seed"]), scheme=spec["scheme"],
            isometric=bool(spec["isometric"]), scope=spec["scope"],
            layer_pattern=spec.get("layer_pattern"), materialize=bool(spec.get("materialize")),
            adapted_dtype=spec.get("adapted_dtype", "float32"),
            element_order="torch" if any(e.element_order == "torch" for e in layout) else "native",
            bias=any(e.is_bias for e in layout), order=kernels, warn_empty=False)
        options.update(overrides)
        gp = cls.create(base_params, targets=lambda path, leaf: path in wanted, **options)
        if gp.layout != layout:
            raise LayoutMismatchError("rebuilt layout differs from the stored one: "
                                      + "; ".join(layout_diff(layout, gp.layout)))
        if gp.fingerprint != spec["fingerprint"]:
            raise LayoutMismatchError(f"fingerprint {gp.fingerprint} differs from the stored "
                                      f"{spec['fingerprint']}")
        return gp

    def __repr__(self) -> str:
        return (f"GPart(d={self.d}, N={self.num_adapted}, seed={self.seed}, scheme={self.scheme!r}, "
                f"isometric={self.isometric}, scope={self.scope!r}, leaves={len(self.layout)}, "
                f"materialize={self.materialize})")

    # ------------------------------------------------------------------ ids
    def _recompute_ids(self, i: int):
        """Global ``int32`` group ids of layout entry ``i``, in the leaf's own shape."""
        plan = self._plan
        entry, block = plan.layout[i], plan.blocks[plan.leaf_block[i]]
        local = _local_index(entry)
        offset = plan.leaf_offset[i]
        if plan.scheme == "stateless":
            base = (offset + block.seed + hashing.GOLDEN_GAMMA) & hashing.MASK64
            ids = hashing.stateless_ids_jax(local, base, block.d)
        else:
            k = plan.leaf_block[i]
            ids = hashing.balanced_ids_jax(local + np.uint32(offset), plan.keys[k],
                                           jnp.asarray(self._tables[k]), block.d)
        return ids + np.int32(block.theta_offset) if block.theta_offset else ids

    def _all_recomputed_ids(self) -> tuple:
        return tuple(self._recompute_ids(i) for i in range(len(self.layout)))

    def _leaf_ids(self, i: int):
        return self._ids[i] if self._ids is not None else self._recompute_ids(i)

    def global_group_ids(self) -> np.ndarray:
        """Host copy of ``g(i)`` for all ``N`` positions in global order (numpy ``int64``).

        Within a leaf the order is its element order; with ``scope="transformer_block"`` ids
        include each block's theta offset.
        """
        out = []
        all_ids = self._ids if self._ids is not None else jax.jit(GPart._all_recomputed_ids)(self)
        for entry, ids in zip(self.layout, all_ids, strict=True):
            ids = np.asarray(ids)
            ids = ids.T if entry.element_order == "torch" else ids
            out.append(ids.reshape(-1).astype(np.int64))
        return np.concatenate(out)

    def dense_projection(self, dtype=np.float64) -> np.ndarray:
        """The ``N x d`` matrix ``P`` (for tests and small examples; refuses N * d > 5e7)."""
        if self.num_adapted * self.d > 50_000_000:
            raise ValueError(f"dense_projection: N * d = {self.num_adapted * self.d} is too "
                             f"large to build densely")
        ids = self.global_group_ids()
        p = np.zeros((self.num_adapted, self.d), dtype=dtype)
        p[np.arange(self.num_adapted), ids] = np.asarray(self.scales, dtype=dtype)[ids]
        return p

    # ------------------------------------------------------------------ theta
    def init_theta(self, key=None, bound: float = 0.0):
        """Initial theta: zeros (the base model exactly), or uniform in ``[-bound, bound]``."""
        if bound == 0:
            return jnp.zeros((self.d,), jnp.float32)
        if bound < 0:
            raise ValueError(f"bound must be >= 0, got {bound}")
        if key is None:
            raise ValueError("init_theta: a PRNG key is required when bound > 0")
        return jax.random.uniform(key, (self.d,), jnp.float32, -bound, bound)

    def _check_theta(self, theta):
        shape, dtype = getattr(theta, "shape", None), getattr(theta, "dtype", None)
        if shape != (self.d,):
            raise ValueError(f"theta must have shape ({self.d},) (d = {self.d}), got {shape}; "
                             f"use jax.vmap to apply several thetas")
        if dtype != jnp.float32:
            raise TypeError(f"theta must be float32, got {dtype}; cast with "
                            f"theta.astype(jnp.float32)")

    # ------------------------------------------------------------------ reparam
    def deltas(self, theta) -> tuple:
        """``P theta`` as one float32 array per layout entry, in each leaf's own shape.

        Differentiable in ``theta`` through a custom VJP: the backward pass is one grouped,
        scaled sum ``grad_theta_j = s_j * sum_{i : g(i) = j} grad_w_i`` that recomputes the
        ids rather than saving them, so no N-sized residual is kept.
        """
        self._check_theta(theta)
        return _expand(self, theta)

    def reparam(self, theta, base_params, *, dropout: float = 0.0, key=None):
        """``w = w0 + P theta`` on the adapted leaves; every other leaf is returned as it is.

        Args:
          theta: float32 array of shape ``(d,)``.
          base_params: the frozen pytree with the layout's paths and shapes.
          dropout: probability of zeroing each element of the kernels' deltas (not of the
            biases'), as the reference's ``gpart_dropout``; survivors are scaled by
            ``1 / (1 - dropout)``. Needs ``key``.
          key: PRNG key for dropout.

        Adapted leaves are float32 (``adapted_dtype="float32"``) or cast back to the base
        leaf's dtype (``"base"``); the delta is always computed in float32.
        """
        flat, treedef = flatten_with_paths(base_params)
        index = {path: j for j, (path, _) in enumerate(flat)}
        problems = describe_mismatch(self.layout, flat)
        if problems:
            raise ValueError("base_params does not match the layout this GPart was built for "
                             "(fingerprint " + self.fingerprint[:12] + "): " + "; ".join(problems))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dropout > 0 and key is None:
            raise ValueError("reparam: dropout > 0 needs a PRNG key (key=...)")
        deltas = self.deltas(theta)
        leaves = [leaf for _, leaf in flat]
        for i, (entry, delta) in enumerate(zip(self.layout, deltas, strict=True)):
            j = index[entry.path]
            w0 = leaves[j]
            if dropout > 0 and not entry.is_bias:
                keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout, delta.shape)
                delta = jnp.where(keep, delta / (1.0 - dropout), 0.0)
            w = jnp.asarray(w0).astype(jnp.float32) + delta
            leaves[j] = w.astype(w0.dtype) if self.adapted_dtype == "base" else w
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def with_seed(self, seed: int) -> GPart:
        """The same plan with another seed, where that is well defined.

        ``balanced``: group sizes do not depend on the seed, so any seed gives a valid GPart with
        the same ``scales`` (its small walk tables are rebuilt on the host). ``stateless``: sizes
        and scales depend on the seed, so only the seed counted at init is accepted (build a new
        GPart for another seed). Materialized ids likewise belong to one seed.
        """
        seed = hashing.check_uint64(seed, "seed")
        if seed == self.seed:
            return self
        if self.scheme == "stateless" or self.materialize:
            what = "materialized ids" if self.materialize else "stateless group sizes and scales"
            raise ValueError(f"seed {seed} differs from the seed {self.seed} this GPart was "
                             f"built with, and its {what} depend on the seed; build a new GPart "
                             f"with GPart.create(..., seed={seed})")
        variants = self._plan.variants
        if seed not in variants:
            plan = _Plan(**self._plan.__dict__)
            plan.seed = seed
            plan.blocks = tuple(dataclasses.replace(b, seed=(seed + k) & hashing.MASK64)
                                for k, b in enumerate(self._plan.blocks))
            plan.keys = tuple(hashing.BalancedKeys(b.num_positions, b.seed) for b in plan.blocks)
            plan.variants = {}
            # numpy, not jax arrays: this may run while tracing, and the cache outlives the trace
            tables = tuple(hashing.walk_table(k) for k in plan.keys)
            variants[seed] = (plan, tables)
        plan, tables = variants[seed]
        return GPart(plan, self.scales, tables, None)

    def reparam_fn(self):
        """The design card's pure function ``reparam(theta, seed, base_params) -> params``.

        Returned as a ``jax.tree_util.Partial`` (a pytree holding this GPart), so it can be
        passed into ``jit``. ``seed`` is a static Python int; see ``with_seed`` for which seeds
        are accepted.
        """
        return jax.tree_util.Partial(_reparam_with_seed, self)


def _reparam_with_seed(gp: GPart, theta, seed: int, base_params):
    return gp.with_seed(seed).reparam(theta, base_params)


def reparam(theta, seed: int, base_params, *, plan: GPart):
    """Functional form: ``plan.with_seed(seed).reparam(theta, base_params)``."""
    return _reparam_with_seed(plan, theta, seed, base_params)


# --------------------------------------------------------------------------- custom VJP

def _gather(table, ids):
    """``table[ids]`` for in-range ids of any shape (no index normalisation pass)."""
    dnums = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,),
                                       start_index_map=(0,))
    return lax.gather(table, ids[..., None], dnums, slice_sizes=(1,),
                      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _scatter_add(acc, ids, updates):
    """``acc[ids] += updates`` for in-range ids of the updates' shape (no reshape or copy)."""
    dnums = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                        scatter_dims_to_operand_dims=(0,))
    return lax.scatter_add(acc, ids[..., None], updates, dnums,
                           mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _expand_impl(gp: GPart, theta):
    table = theta * gp.scales
    return tuple(_gather(table, gp._leaf_ids(i)) for i in range(len(gp.layout)))


@jax.custom_vjp
def _expand(gp: GPart, theta):
    return _expand_impl(gp, theta)


def _expand_fwd(gp, theta):
    return _expand_impl(gp, theta), gp


def _expand_bwd(gp, cotangents):
    summed = jnp.zeros((gp.d,), jnp.float32)
    for i, g in enumerate(cotangents):
        summed = _scatter_add(summed, gp._leaf_ids(i), g.astype(jnp.float32))
    gp_zero = jax.tree_util.tree_map(
        lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.floating)
        else np.zeros(x.shape, jax.dtypes.float0), gp)
    return gp_zero, summed * gp.scales


_expand.defvjp(_expand_fwd, _expand_bwd)

"""GPart: global parameter partitioning, the method ``theta -> params``.

The adapted weights of a model, flattened in the layout's global order, form ``w0`` of length
``N``. A partition assigns every position ``i`` to one of ``d`` groups, ``g(i)``, with sizes
``n_j = |{i : g(i) = j}|``. GPart trains ``theta`` of length ``d`` and sets

    w = w0 + P theta,    (P theta)_i = theta_{g(i)} s_{g(i)},    s_j = 1 / sqrt(n_j)

so ``P^T P = I_d`` (the columns of ``P`` have disjoint supports and unit norm): distances, inner
products and weight decay on ``theta`` are those of the weight update. Gradients are
``grad_theta = P^T grad_w``, i.e. ``grad_theta_j = s_j sum_{i : g(i) = j} grad_w_i``.
With ``isometric=False`` the scales are 1 and ``P^T P = diag(n_1, ..., n_d)`` (the paper's
ablation, the method named ``"gpart-noniso"``).
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
from flax import struct
from jax import lax

from gpart_jax import _validate, hashing, layout
from gpart_jax.errors import LayoutMismatchError, TargetError
from gpart_jax.filters import Filter
from gpart_jax.layout import LayoutEntry
from gpart_jax.method import ADAPTED_DTYPES, Method
from gpart_jax.paths import DEFAULT_LAYER_PATTERN, layer_index, leaves_with_paths, natural_key

SCHEMES = ("stateless", "balanced")
SCOPES = ("global", "transformer_block")
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static part of a GPart: everything but its arrays, compared by value.

    ``group_sizes`` (numpy, length d) is left out of comparisons: it is a function of the other
    fields.
    """

    layout: tuple[LayoutEntry, ...]
    d: int
    seed: int
    scheme: str
    isometric: bool
    scope: str
    layer_pattern: str | None
    materialize: bool
    adapted_dtype: str
    init_bound: float
    blocks: tuple[Block, ...]
    leaf_block: tuple[int, ...]
    leaf_offset: tuple[int, ...]
    keys: tuple[hashing.BalancedKeys | None, ...]
    fingerprint: str
    group_sizes: np.ndarray = dataclasses.field(compare=False, repr=False)

    @property
    def num_adapted(self) -> int:
        return sum(b.num_positions for b in self.blocks)


@functools.partial(jax.jit, static_argnums=2)
def _chunk_ids(hi, lo, d: int):
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


def _blocks(entries: tuple[LayoutEntry, ...], d: int, seed: int, scope: str,
            layer_pattern: str | None):
    """``(blocks, leaf_block, leaf_offset)``: each entry's partition and its position offset there."""
    pattern = layer_pattern or DEFAULT_LAYER_PATTERN
    if scope == "global":
        prefixes = ["" for _ in entries]
    else:
        prefixes = []
        for e in entries:
            found = layer_index(e.path, pattern)
            if found is None:
                raise TargetError(f"scope='transformer_block': targeted leaf {e.path} is in no "
                                  f"transformer block (layer_pattern {pattern!r})")
            prefixes.append(found[1])
    names = sorted(set(prefixes), key=natural_key)
    if d < len(names):
        raise ValueError(f"d = {d} is smaller than the number of transformer blocks "
                         f"({len(names)}); every block needs at least one group")
    base_d, extra = divmod(d, len(names))
    blocks, theta_offset = [], 0
    leaf_block, leaf_offset = [0] * len(entries), [0] * len(entries)
    for k, name in enumerate(names):
        pos = 0
        for i, e in enumerate(entries):
            if prefixes[i] == name:
                leaf_block[i], leaf_offset[i] = k, pos
                pos += e.size
        d_k = base_d + (1 if k < extra else 0)
        if d_k > pos:
            raise ValueError(f"block {name!r} has {pos} adapted weights but {d_k} groups; lower d")
        blocks.append(Block(name, theta_offset, d_k, (seed + k) & hashing.MASK64, pos))
        theta_offset += d_k
    return tuple(blocks), tuple(leaf_block), tuple(leaf_offset)


class GPart(Method):
    """GPart over a parameter pytree: ``init`` gives ``theta``, ``apply`` gives ``w0 + P theta``.

    Build it with ``GPart.create`` (or ``GPart.from_layout`` for an explicit global order, as the
    reference's numbering needs). It is a pytree whose leaves are the per-group ``scales``, the
    balanced scheme's small walk tables and, with ``materialize=True``, the per-leaf ``int32``
    group ids; the ``plan`` is static. Pass it as an argument of a jitted function (rather than
    closing over it) when it holds materialized ids, so that they are not compiled in as
    constants.
    """

    plan: Plan = struct.field(pytree_node=False)
    scales: jax.Array
    tables: tuple
    ids: tuple | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        base_params,
        *,
        d: int,
        seed: int = 42,
        targets: Filter = ("query/kernel", "value/kernel"),
        scheme: str = "stateless",
        isometric: bool = True,
        materialize: bool = False,
        adapted_dtype: str = "float32",
        init_bound: float = 0.0,
    ) -> GPart:
        """Plan GPart over the leaves of ``base_params`` that ``targets`` selects.

        Args:
          base_params: the frozen parameters: a flax linen dict, nnx state or an nnx Module, of
            arrays or ``jax.ShapeDtypeStruct`` (only shapes are read).
          d: number of groups, the length of ``theta`` (the budget); ``1 <= d <= N``.
          seed: partition seed in ``[0, 2**64)``.
          targets: a filter (``gpart_jax.filters``): module or leaf names (``("query",
            "value")``, ``"kernel"``), a regex over path components, ``"all-linear"``, a type
            (``nnx.Param``), a callable ``(path, leaf) -> bool`` or a combinator. The selected
            leaves are numbered in natural path order.
          scheme: ``"stateless"`` (reference-compatible SplitMix64 ids, multinomial sizes) or
            ``"balanced"`` (keyed permutation, sizes ``floor/ceil(N/d)``); see ``hashing``.
          isometric: scale group ``j`` by ``1/sqrt(n_j)`` (``P^T P = I``); else by 1.
          materialize: store ``int32`` ids per adapted leaf instead of recomputing them.
          adapted_dtype: ``"float32"`` (adapted leaves returned in float32: exact, the default)
            or ``"base"`` (cast back to each leaf's dtype: lean, but a bf16 base keeps only 8
            significant bits, so small updates are rounded away).
          init_bound: ``init`` draws theta uniform in ``[-init_bound, init_bound]``; 0 (the
            default) starts at zero, the base model exactly.
        """
        return cls.from_layout(layout.build(base_params, targets), d=d, seed=seed, scheme=scheme,
                               isometric=isometric, materialize=materialize,
                               adapted_dtype=adapted_dtype, init_bound=init_bound)

    @classmethod
    def from_layout(
        cls,
        entries: Sequence[LayoutEntry],  # gpart_jax.layout.build(params, targets, ...)
        *,
        d: int,
        seed: int = 42,
        scheme: str = "stateless",
        isometric: bool = True,
        scope: str = "global",
        layer_pattern: str | None = None,
        materialize: bool = False,
        adapted_dtype: str = "float32",
        init_bound: float = 0.0,
    ) -> GPart:
        """GPart over an explicit layout (``gpart_jax.layout.build``): its order numbers the weights.

        ``scope="transformer_block"`` builds one partition per transformer block, as the
        reference does: d split by divmod (the first ``d mod B`` blocks get one more), block
        ``k`` seeded ``seed + k``, positions restarting at 0; blocks are found by
        ``layer_pattern`` (default ``(layers|layer|h|block|blocks)[_/]?(\\d+)``). Other arguments
        as in ``create``.
        """
        entries = tuple(entries)
        if not entries:
            raise TargetError("the layout is empty: select at least one leaf to adapt")
        d = hashing.check_d(d)
        seed = hashing.check_uint64(seed, "seed")
        _validate.choice(scheme, "scheme", SCHEMES)
        _validate.choice(scope, "scope", SCOPES)
        _validate.choice(adapted_dtype, "adapted_dtype", ADAPTED_DTYPES)
        isometric = _validate.boolean(isometric, "isometric")
        materialize = _validate.boolean(materialize, "materialize")
        init_bound = _validate.real(init_bound, "init_bound", low=0.0)
        n_total = sum(e.size for e in entries)
        if d > n_total:
            raise ValueError(f"d = {d} exceeds N = {n_total}, the number of adapted weights; "
                             f"choose d <= {n_total} or target more parameters")
        blocks, leaf_block, leaf_offset = _blocks(entries, d, seed, scope, layer_pattern)
        if scheme == "stateless":
            sizes = np.concatenate([_count_stateless(b) for b in blocks])
            keys = tuple(None for _ in blocks)
            tables: tuple = tuple(None for _ in blocks)
        else:
            sizes = np.concatenate([hashing.balanced_group_sizes(b.num_positions, b.d)
                                    for b in blocks])
            keys = tuple(hashing.BalancedKeys(b.num_positions, b.seed) for b in blocks)
            tables = tuple(jnp.asarray(hashing.walk_table(k)) for k in keys)
        num_empty = int(np.sum(sizes == 0))
        if num_empty:
            warnings.warn(f"GPart: {num_empty} of {d} groups are empty (expected about "
                          f"d * exp(-N/d) = {d * math.exp(-n_total / d):.1f}); their scale is "
                          f"clamped to 1 and their theta entries stay unused", stacklevel=3)
        plan = Plan(entries, d, seed, scheme, isometric, scope, layer_pattern, materialize,
                    adapted_dtype, init_bound, blocks, leaf_block, leaf_offset, keys,
                    layout.fingerprint(entries, d, scheme, scope), sizes)
        gp = cls(plan, jnp.asarray(_scales(sizes, isometric)), tables, None)
        if materialize:
            ids = jax.jit(lambda gp: tuple(i.astype(jnp.int32) for i in gp._all_recomputed_ids()))
            gp = gp.replace(ids=ids(gp))
        return gp

    def spec(self) -> dict:
        """JSON-able description from which ``GPart.from_spec`` rebuilds this plan on a base.

        Big integers (the seed) are written as decimal strings so that no JSON reader rounds them.
        """
        p = self.plan
        return {"method": self.name, "d": p.d, "seed": str(p.seed), "scheme": p.scheme,
                "isometric": p.isometric, "scope": p.scope, "layer_pattern": p.layer_pattern,
                "adapted_dtype": p.adapted_dtype, "materialize": p.materialize,
                "init_bound": p.init_bound, "layout": [e.to_json() for e in p.layout],
                "fingerprint": p.fingerprint}

    @classmethod
    def from_spec(cls, spec: dict, base_params=None, **overrides) -> GPart:
        """Rebuild a plan from ``spec()``; with ``base_params`` its layout must match them.

        Raises ``LayoutMismatchError`` naming the first paths that differ (missing, another
        shape). ``overrides`` may change ``materialize`` or ``adapted_dtype`` (not the partition).
        """
        entries = tuple(LayoutEntry.from_json(item) for item in spec["layout"])
        if base_params is not None:
            layout.check_params(entries, leaves_with_paths(base_params)[0],
                                "the layout this adapter was trained on")
        options = dict(d=int(spec["d"]), seed=int(spec["seed"]), scheme=spec["scheme"],
                       isometric=bool(spec["isometric"]), scope=spec["scope"],
                       layer_pattern=spec.get("layer_pattern"),
                       materialize=bool(spec.get("materialize", False)),
                       adapted_dtype=spec.get("adapted_dtype", "float32"),
                       init_bound=float(spec.get("init_bound", 0.0)))
        unknown = sorted(set(overrides) - {"materialize", "adapted_dtype"})
        if unknown:
            raise TypeError(f"from_spec: only materialize and adapted_dtype may be overridden, "
                            f"got {unknown}")
        options.update(overrides)
        with warnings.catch_warnings():  # empty groups were reported when it was built
            warnings.simplefilter("ignore")
            gp = cls.from_layout(entries, **options)
        if gp.fingerprint != spec["fingerprint"]:
            raise LayoutMismatchError(f"the rebuilt partition's fingerprint {gp.fingerprint[:12]} "
                                      f"differs from the stored {str(spec['fingerprint'])[:12]}: "
                                      f"the description was edited or is inconsistent")
        return gp

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:  # type: ignore[override]
        return "gpart" if self.plan.isometric else "gpart-noniso"

    d = property(lambda self: self.plan.d, doc="Number of groups (length of theta).")
    seed = property(lambda self: self.plan.seed, doc="Partition seed.")
    scheme = property(lambda self: self.plan.scheme, doc="'stateless' or 'balanced'.")
    isometric = property(lambda self: self.plan.isometric, doc="Scales 1/sqrt(n_j) or 1.")
    scope = property(lambda self: self.plan.scope, doc="'global' or 'transformer_block'.")
    materialize = property(lambda self: self.plan.materialize, doc="Ids stored, not recomputed.")
    adapted_dtype = property(lambda self: self.plan.adapted_dtype,
                             doc="'float32' or 'base': dtype of the adapted leaves.")
    layout = property(lambda self: self.plan.layout,
                      doc="Ordered tuple of LayoutEntry(path, shape, element_order, is_bias).")
    blocks = property(lambda self: self.plan.blocks, doc="The independent partitions (Block).")
    group_sizes = property(lambda self: self.plan.group_sizes,
                           doc="numpy int64 array of length d: n_j before clamping.")
    num_empty_groups = property(lambda self: int(np.sum(self.plan.group_sizes == 0)),
                                doc="Groups with n_j = 0 (stateless only).")
    fingerprint = property(lambda self: self.plan.fingerprint,
                           doc="sha256 of the canonical JSON of (layout, d, scheme, scope).")

    @property
    def adapted(self):
        return tuple((e.path, e.shape) for e in self.plan.layout)

    @property
    def num_adapted(self) -> int:
        return self.plan.num_adapted

    def details(self) -> dict:
        return {"d": self.d, "N": self.num_adapted, "scheme": self.scheme, "seed": self.seed,
                "scope": self.scope, "empty groups": self.num_empty_groups}

    def __repr__(self) -> str:
        return (f"GPart(d={self.d}, N={self.num_adapted}, seed={self.seed}, scheme={self.scheme!r}, "
                f"isometric={self.isometric}, scope={self.scope!r}, leaves={len(self.layout)}, "
                f"materialize={self.materialize})")

    # ------------------------------------------------------------------ ids
    def _recompute_ids(self, i: int):
        """Global ``uint32`` group ids of layout entry ``i``, in the leaf's own shape.

        Unsigned, the hashes' own type: a signed copy would be one more leaf-sized buffer.
        """
        plan = self.plan
        entry, block = plan.layout[i], plan.blocks[plan.leaf_block[i]]
        local = _local_index(entry)
        offset = plan.leaf_offset[i]
        if plan.scheme == "stateless":
            base = (offset + block.seed + hashing.GOLDEN_GAMMA) & hashing.MASK64
            ids = hashing.stateless_ids_jax(local, base, block.d, jnp.uint32)
        else:
            k = plan.leaf_block[i]
            ids = hashing.balanced_ids_jax(local + np.uint32(offset), plan.keys[k],
                                           jnp.asarray(self.tables[k]), block.d, jnp.uint32)
        return ids + np.uint32(block.theta_offset) if block.theta_offset else ids

    def _all_recomputed_ids(self) -> tuple:
        return tuple(self._recompute_ids(i) for i in range(len(self.plan.layout)))

    def _leaf_ids(self, i: int):
        """Leaf ``i``'s ids as the grouped gather and scatter index with them: the stored ones, or
        the hash's, as ``uint16`` where ``_uint16_ids`` says so."""
        if self.ids is not None:
            return self.ids[i]
        ids = self._recompute_ids(i)
        return _as_uint16(ids) if _uint16_ids(self.d) else ids

    def global_group_ids(self) -> np.ndarray:
        """Host copy of ``g(i)`` for all ``N`` positions in global order (numpy ``int64``).

        Within a leaf the order is its element order; with ``scope="transformer_block"`` ids
        include each block's theta offset.
        """
        out = []
        all_ids = self.ids if self.ids is not None else jax.jit(GPart._all_recomputed_ids)(self)
        for entry, ids in zip(self.plan.layout, all_ids, strict=True):
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

    # ------------------------------------------------------------------ the method
    def init(self, key: jax.Array | None = None) -> jax.Array:
        """theta at the start: zeros (the base model exactly), or uniform in
        ``[-init_bound, init_bound]`` (needs ``key``) when the plan's ``init_bound`` > 0."""
        bound = self.plan.init_bound
        if bound == 0:
            return jnp.zeros((self.d,), jnp.float32)
        if key is None:
            raise ValueError(f"GPart.init: a PRNG key is required, since theta starts uniform in "
                             f"[-{bound}, {bound}] (init_bound); pass key=jax.random.key(0)")
        return jax.random.uniform(key, (self.d,), jnp.float32, -bound, bound)

    def deltas(self, theta) -> tuple:
        """``P theta`` as one float32 array per layout entry, in each leaf's own shape.

        Differentiable in ``theta`` through a custom VJP: the backward pass is one grouped,
        scaled sum ``grad_theta_j = s_j * sum_{i : g(i) = j} grad_w_i`` that recomputes the
        ids rather than saving them, so no N-sized residual is kept.
        """
        _validate.float_vector(theta, "theta", self.d)
        return _expand(self, theta, None)

    def apply(self, theta, base_params, *, dropout: float = 0.0, key: jax.Array | None = None):
        """``w = w0 + P theta`` on the adapted leaves; every other leaf is returned as it is.

        Args:
          theta: float32 array of shape ``(d,)``.
          base_params: the frozen pytree (dict, nnx state or nnx Module) with the layout's paths
            and shapes, as floating-point arrays.
          dropout: probability of zeroing each element of the kernels' deltas (not of the
            biases'), as the reference's ``gpart_dropout``; survivors are scaled by
            ``1 / (1 - dropout)``. Needs ``key``.
          key: PRNG key for dropout.

        Adapted leaves are float32 (``adapted_dtype="float32"``) or cast back to the base
        leaf's dtype (``"base"``); the delta is always computed in float32.
        """
        if base_params is None:
            raise TypeError("base_params is None; pass the frozen parameter pytree the GPart was "
                            "built on")
        flat, treedef = leaves_with_paths(base_params)
        layout.check_params(self.plan.layout, flat, f"this GPart's layout (fingerprint "
                            f"{self.fingerprint[:12]})", arrays=True)
        dropout = _validate.real(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        if dropout > 0 and key is None:
            raise ValueError("apply: dropout > 0 needs a PRNG key (key=...)")
        index = {path: j for j, (path, _) in enumerate(flat)}
        leaves = [leaf for _, leaf in flat]
        _validate.float_vector(theta, "theta", self.d)
        deltas = _expand(self, theta, _explicit_specs([leaves[index[e.path]] for e in self.plan.layout]))
        for i, (entry, delta) in enumerate(zip(self.plan.layout, deltas, strict=True)):
            j = index[entry.path]
            w0 = leaves[j]
            if dropout > 0 and not entry.is_bias:
                keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout, delta.shape)
                delta = jnp.where(keep, delta / (1.0 - dropout), 0.0)
            w = jnp.asarray(w0).astype(jnp.float32) + delta
            leaves[j] = w.astype(w0.dtype) if self.plan.adapted_dtype == "base" else w
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
        blocks = tuple(dataclasses.replace(b, seed=(seed + k) & hashing.MASK64)
                       for k, b in enumerate(self.plan.blocks))
        keys = tuple(hashing.BalancedKeys(b.num_positions, b.seed) for b in blocks)
        plan = dataclasses.replace(self.plan, seed=seed, blocks=blocks, keys=keys)
        # numpy, not jax arrays: this may run while tracing (reparam_fn with a static seed)
        return self.replace(plan=plan, tables=tuple(hashing.walk_table(k) for k in keys))

    def reparam_fn(self):
        """The pure function ``reparam(theta, seed, base_params) -> params``.

        It is ``self.with_seed(seed).apply(theta, base_params)``, returned as a
        ``jax.tree_util.Partial`` (a pytree holding this GPart), so it can be passed into
        ``jit``. ``seed`` is a static Python int; see ``with_seed`` for which seeds are accepted.
        """
        return jax.tree_util.Partial(_reparam, self)


def _reparam(gp: GPart, theta, seed: int, base_params):
    return gp.with_seed(seed).apply(theta, base_params)


# --------------------------------------------------------------------------- custom VJP

def _flat_indexing() -> bool:
    """Whether the grouped gather and scatter index flattened leaves (one device) or leaves in
    their own shape (several devices).

    Flattened, ``(N, 1)`` ids and cotangents are views of the leaves, and XLA:CPU runs the
    scatter in place on them. In the leaf's own shape XLA:CPU's scatter canonicalisation makes a
    layout copy of every cotangent (measured in experiments/benchmarks/grouped_sum). But a leaf
    sharded by columns cannot be flattened without moving it: the SPMD partitioner all-gathers
    each cotangent first (10 leaf-sized all-gathers in grouped_sum/sharding.py). With one device
    nothing is sharded, so the flat form is taken exactly then. Both forms visit the elements in
    the same (row-major) order: the gradient is bit-identical, and so are the weights, except that
    under ``vmap`` XLA may contract ``w0 + theta_g s_g`` into one FMA in one form only.
    """
    return jax.device_count() == 1


_UINT16_IDS_MAX_D = 0xFFFF  # ids < d <= this: a remainder by it is the identity (_as_uint16)


def _uint16_ids(d: int) -> bool:
    """Whether recomputed ids are indexed as ``uint16``: on CPU, when every id fits (``d <=
    0xFFFF``, the default budgets included).

    The ids are the one leaf-sized buffer that GPart's compiled forward + backward makes besides
    the adapted weights: the forward writes them, its gather and the backward's scatter read them.
    At 2 bytes a weight instead of 4 that traffic halves (measured in
    experiments/benchmarks/grouped_sum). Accelerators keep ``uint32`` ids: the narrow form was not
    measured there, and a TPU works in 32-bit words.
    """
    return d <= _UINT16_IDS_MAX_D and jax.default_backend() == "cpu"


def _as_uint16(ids):
    """``uint32`` ids below ``_UINT16_IDS_MAX_D`` as ``uint16``, converted inside the hash's own
    pass.

    The remainder by ``_UINT16_IDS_MAX_D`` is the identity on these ids; it is there for XLA's
    fusion pass.
    A bare convert is cheap, so XLA copies it into each consumer: the forward's fusion would read
    the ``uint32`` hash and a separate pass would convert it again for the scatter, writing 6 bytes
    a weight (the ``uint32`` ids and their ``uint16`` copy) instead of 2. A remainder counts as
    expensive and is not copied, so the hash's fusion ends in it and writes the ``uint16`` ids
    once.
    """
    return lax.rem(ids.astype(jnp.uint16), np.uint16(_UINT16_IDS_MAX_D))


def _gather(table, ids):
    """``table[ids]`` for in-range ids of any shape (no index normalisation pass)."""
    if _flat_indexing():
        dnums = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(),
                                           start_index_map=(0,))
        flat = lax.gather(table, ids.reshape(-1, 1), dnums, slice_sizes=(1,),
                          mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
        return flat.reshape(ids.shape)
    dnums = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,),
                                       start_index_map=(0,))
    return lax.gather(table, ids[..., None], dnums, slice_sizes=(1,),
                      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _scatter_add(acc, ids, updates):
    """``acc[ids] += updates`` for in-range ids of the updates' shape, in place."""
    if _flat_indexing():
        dnums = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(),
                                            scatter_dims_to_operand_dims=(0,))
        return lax.scatter_add(acc, ids.reshape(-1, 1), updates.reshape(-1, 1), dnums,
                               mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    dnums = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                        scatter_dims_to_operand_dims=(0,))
    return lax.scatter_add(acc, ids[..., None], updates, dnums,
                           mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _explicit_specs(bases) -> tuple | None:
    """``(mesh, specs)``: each base leaf's ``PartitionSpec`` when its mesh has Explicit axes.

    With Explicit axes (``jax.make_mesh``'s default) shardings are part of the types: a delta
    computed replicated would make its cotangent be all-gathered to match. So each delta is
    computed with its base leaf's sharding, and the grouped sum of the sharded cotangents is left
    to the partitioner (each shard's partial d-vector, then an all-reduce of d floats). ``None``
    when no base leaf is sharded over an Explicit axis.
    """
    shardings = [_sharding_of(b) for b in bases]
    meshes = {s.mesh for s in shardings if s is not None and s.mesh.explicit_axes}
    if len(meshes) != 1:
        return None
    specs = tuple(s.spec if s is not None and s.mesh in meshes else None for s in shardings)
    if not any(s is not None and any(a is not None for a in s) for s in specs):
        return None
    return meshes.pop(), specs


def _sharding_of(leaf):
    """The leaf's sharding as its type carries it; ``None`` for what JAX cannot type (an
    array-like that converts only through ``jnp.asarray``, as ``apply`` does)."""
    try:
        return getattr(jax.typeof(leaf), "sharding", None)
    except (TypeError, ValueError):
        return None


def _in_auto_mode(mesh, fun, out_sharding, *args):
    """``fun(*args)`` with the Explicit axes of ``mesh`` made Auto, results sharded as told."""
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(fun, axes=mesh.explicit_axes, out_sharding=out_sharding)(*args)


def _expand_impl(gp: GPart, theta, sharded):
    if sharded is not None:
        mesh, specs = sharded
        out = tuple(jax.sharding.PartitionSpec() if s is None else s for s in specs)
        return _in_auto_mode(mesh, lambda gp, theta: _expand_impl(gp, theta, None), out, gp, theta)
    table = theta * gp.scales
    return tuple(_gather(table, gp._leaf_ids(i)) for i in range(len(gp.plan.layout)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _expand(gp: GPart, theta, sharded):
    return _expand_impl(gp, theta, sharded)


def _expand_fwd(gp, theta, sharded):
    return _expand_impl(gp, theta, sharded), gp


def _grouped_sum(gp: GPart, cotangents) -> jax.Array:
    """``sum_i g_i`` per group: each cotangent scatter-added into one d-vector."""
    summed = jnp.zeros((gp.d,), jnp.float32)
    for i, g in enumerate(cotangents):
        summed = _scatter_add(summed, gp._leaf_ids(i), g.astype(jnp.float32))
    return summed


def _expand_bwd(sharded, gp, cotangents):
    if sharded is None:
        summed = _grouped_sum(gp, cotangents)
    else:
        summed = _in_auto_mode(sharded[0], _grouped_sum, jax.sharding.PartitionSpec(), gp, cotangents)
    gp_zero = jax.tree_util.tree_map(
        lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.floating)
        else np.zeros(x.shape, jax.dtypes.float0), gp)
    return gp_zero, summed * gp.scales


_expand.defvjp(_expand_fwd, _expand_bwd)


__all__ = ["Block", "GPart", "Plan", "SCHEMES", "SCOPES"]

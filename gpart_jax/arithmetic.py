"""Adapter arithmetic in GPart coordinates: geometry of weight updates from theta alone.

For adapters ``theta_a, theta_b`` on the same partition (same layout, d, seed, scheme and
isometric flag), their weight updates are ``P theta_a`` and ``P theta_b`` with
``P^T P = G = diag(g_j)``, ``g_j = n_j s_j^2`` (``s_j`` the group scale). So

    <P theta_a, P theta_b> = sum_j g_j theta_a_j theta_b_j

which is the plain dot product of the thetas when GPart is isometric (``g_j = 1``; 0 for an
empty group) and is weighted by the group sizes when it is not. Distances and cosines follow.
Linear combinations of thetas are linear combinations of updates (task arithmetic). Any weight
update ``u`` (a full fine-tune's ``w_ft - w0``, another method's delta) projects onto the GPart
subspace as ``theta = G^+ P^T u``, the closest point ``P theta`` to ``u``; the captured fraction
of its squared norm is ``||P theta||^2 / ||u||^2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpart_jax import _validate
from gpart_jax.core import GPart
from gpart_jax.errors import IncompatibleAdaptersError
from gpart_jax.layout import check_params
from gpart_jax.paths import leaves_with_paths


def check_compatible(a: GPart, b: GPart) -> None:
    """Raise unless ``a`` and ``b`` define the same ``P`` (layout, d, scheme, scope, seed, isometric)."""
    if a is b:
        return
    problems = []
    if a.fingerprint != b.fingerprint:
        problems.append(f"layout/d/scheme/scope differ (fingerprints {a.fingerprint[:12]} vs "
                        f"{b.fingerprint[:12]}, d {a.d} vs {b.d})")
    if a.seed != b.seed:
        problems.append(f"seeds differ ({a.seed} vs {b.seed})")
    if a.isometric != b.isometric:
        problems.append(f"isometric differs ({a.isometric} vs {b.isometric})")
    if problems:
        raise IncompatibleAdaptersError("adapters are on different partitions, so their thetas "
                                        "are not comparable: " + "; ".join(problems))


def gram_diagonal(gp: GPart) -> np.ndarray:
    """``g_j = n_j s_j^2`` in float64: the diagonal of ``P^T P``."""
    return gp.group_sizes.astype(np.float64) * np.asarray(gp.scales, np.float64) ** 2


def inner(gp: GPart, theta_a, theta_b, gp_b: GPart | None = None) -> float:
    """``<P theta_a, P theta_b>`` computed from the thetas (float64)."""
    if gp_b is not None:
        check_compatible(gp, gp_b)
    for name, t in (("theta_a", theta_a), ("theta_b", theta_b)):
        _validate.float_vector(t, name, gp.d)
    a, b = np.asarray(theta_a, np.float64), np.asarray(theta_b, np.float64)
    return float(np.sum(gram_diagonal(gp) * a * b))


def norm(gp: GPart, theta) -> float:
    """``||P theta||``."""
    return float(np.sqrt(inner(gp, theta, theta)))


def distance(gp: GPart, theta_a, theta_b, gp_b: GPart | None = None) -> float:
    """``||P theta_a - P theta_b||``."""
    if gp_b is not None:
        check_compatible(gp, gp_b)
    for name, t in (("theta_a", theta_a), ("theta_b", theta_b)):
        _validate.float_vector(t, name, gp.d)
    diff = np.asarray(theta_a, np.float64) - np.asarray(theta_b, np.float64)
    return float(np.sqrt(np.sum(gram_diagonal(gp) * diff * diff)))


def cosine(gp: GPart, theta_a, theta_b, gp_b: GPart | None = None) -> float:
    """Cosine similarity of the weight updates ``P theta_a`` and ``P theta_b``."""
    denom = norm(gp, theta_a) * norm(gp, theta_b)
    if denom == 0:
        raise ValueError("cosine of a zero update is undefined")
    return inner(gp, theta_a, theta_b, gp_b) / denom


def combine(thetas: Sequence, weights: Sequence[float]) -> jax.Array:
    """``sum_k weights_k theta_k``: the theta of ``sum_k weights_k P theta_k`` (task arithmetic)."""
    if len(thetas) != len(weights) or not thetas:
        raise ValueError(f"need as many weights as thetas (got {len(weights)} and {len(thetas)})")
    shapes = {tuple(np.shape(t)) for t in thetas}
    if len(shapes) != 1:
        raise ValueError(f"thetas have different shapes {sorted(shapes)}")
    return sum(w * jnp.asarray(t, jnp.float32) for w, t in zip(weights, thetas, strict=True))


def _update_leaves(gp: GPart, update) -> list:
    flat = leaves_with_paths(update)[0]
    check_params(gp.layout, flat, "the GPart's layout (the update must be a params-like pytree "
                 "holding at least the adapted leaves)", arrays=True)
    leaves = dict(flat)
    return [jnp.asarray(leaves[e.path], jnp.float32) for e in gp.layout]


def project(gp: GPart, update) -> tuple[jax.Array, float]:
    """``(theta, captured)``: the GPart coordinates of the update closest to ``update``.

    ``update``: a params-like pytree (e.g. ``w_ft - w0``) holding the layout's paths; other
    leaves are ignored. ``theta = G^+ P^T u`` and ``captured = ||P theta||^2 / ||u||^2``.
    """
    leaves = _update_leaves(gp, update)
    _, vjp = jax.vjp(gp.deltas, jnp.zeros((gp.d,), jnp.float32))
    pt_u = np.asarray(vjp(tuple(leaves))[0], np.float64)  # P^T u
    g = gram_diagonal(gp)
    theta = np.divide(pt_u, g, out=np.zeros_like(pt_u), where=g > 0)
    u_sq = float(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in leaves))
    captured = float(np.sum(g * theta**2) / u_sq) if u_sq > 0 else 0.0
    return jnp.asarray(theta, jnp.float32), captured

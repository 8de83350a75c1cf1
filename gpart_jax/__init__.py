"""gpart-jax: GPart (isometric fine-tuning by global parameter partitioning) for JAX and Flax.

``w = w0 + P theta`` with ``(P theta)_i = theta_{g(i)} / sqrt(n_{g(i)})``: a seed assigns every
adapted weight to one of ``d`` groups, and ``theta`` (length ``d``) is all that trains.
"""

from gpart_jax.core import Block, GPart, LayoutMismatchError, layout_diff, reparam
from gpart_jax.hashing import balanced_group_ids, balanced_group_sizes, group_ids
from gpart_jax.layout import LayoutEntry, fingerprint, key_path_to_str, natural_key, natural_sorted

__version__ = "0.1.0"

__all__ = [
    "GPart",
    "Block",
    "LayoutEntry",
    "LayoutMismatchError",
    "balanced_group_ids",
    "balanced_group_sizes",
    "fingerprint",
    "group_ids",
    "key_path_to_str",
    "layout_diff",
    "natural_key",
    "natural_sorted",
    "reparam",
    "__version__",
]

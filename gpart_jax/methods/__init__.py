"""Fine-tuning methods behind one protocol (``Method``): GPart and its baselines."""

from gpart_jax.methods.base import Method, tree_nbytes, tree_size
from gpart_jax.methods.gpart import GPartMethod

__all__ = ["GPartMethod", "Method", "tree_nbytes", "tree_size"]

"""Experiments built on gpart_jax: models, data, trainer and result writers (not part of the library)."""

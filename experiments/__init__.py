"""Experiments built on gpart_jax: data, models, trainer and result writers."""

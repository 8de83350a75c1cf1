"""Experiments built on gpart_jax: models, data, trainer, benchmarks (not part of the library)."""

"""Benchmarks of implementation choices; each directory's README names its commands."""

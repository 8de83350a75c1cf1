"""The research code built on gpart_jax: models, data, the trainer, suites and analyses.

Run from a checkout's root (``python -m experiments --help``); it is not part of the library's
wheel. ``experiments/README.md`` says where a new model, dataset, method or experiment goes.
"""

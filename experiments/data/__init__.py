"""Datasets for the experiments: offline sources behind TFDS, and text tokenization/batching.

    from experiments import data
    train = data.load("rotten_tomatoes", "train")      # random access: len, [i], .column("text")
    train[0]                                             # {"text": "...", "label": 1}

Heavy packages (tensorflow_datasets, tokenizers, reasoning_gym) are imported only when used.
"""

from experiments.data.catalog import Source, default_data_dir, load, prepare
from experiments.data.sources import (
    OFFLINE_NAMES,
    SOURCES,
    DataUnavailableError,
    final_answer,
    hash_bucket,
    normalize_number,
)

__all__ = [
    "OFFLINE_NAMES",
    "SOURCES",
    "DataUnavailableError",
    "Source",
    "default_data_dir",
    "final_answer",
    "hash_bucket",
    "load",
    "normalize_number",
    "prepare",
]

"""One TFDS builder for all offline sources, written as array_record (no TensorFlow needed).

``GpartData`` is registered in the TFDS catalog as ``gpart_data``; each offline source is one of
its configs (``gpart_data/rotten_tomatoes``, ``gpart_data/digits``, ...). Examples are written
in the order of :func:`experiments.data.sources.prepare` (``disable_shuffling``), so index
``i`` of a split is the same example on every machine. Prepared data is cached under its
version: bump ``VERSION`` whenever a source's examples or splits change.

Features:
    text:  ``{"text": Text, "label": ClassLabel}``
    image: ``{"image": uint8 Tensor (H, W, 1), zlib encoded, "label": ClassLabel}``
    math:  ``{"question": Text, "answer": Text (the final number), "solution": Text (ends "#### N")}``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from experiments.data import sources


@dataclasses.dataclass
class GpartDataConfig(tfds.core.BuilderConfig):
    """The config of one offline source: its name is a key of :data:`sources.SOURCES`."""


class GpartData(tfds.core.GeneratorBasedBuilder):
    """The offline sources of ``experiments/data/sources.py`` behind the TFDS interface."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Fixed hash splits (sha256 bucket), deduplicated training pools."}
    BUILDER_CONFIGS = [
        GpartDataConfig(name=spec.name, description=spec.description) for spec in sources.SOURCES.values()
    ]

    @property
    def spec(self) -> sources.SourceSpec:
        """The source this builder's config stands for."""
        return sources.SOURCES[self.builder_config.name]

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.spec
        if spec.kind == "text":
            label = tfds.features.ClassLabel(names=spec.label_names)
            features = {"text": tfds.features.Text(), "label": label}
        elif spec.kind == "image":
            image = tfds.features.Tensor(
                shape=spec.image_shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
            )
            features = {"image": image, "label": tfds.features.ClassLabel(names=spec.label_names)}
        else:
            features = {name: tfds.features.Text() for name in ("question", "answer", "solution")}
        supervised = ("image", "label") if spec.kind == "image" else ("text", "label")
        return self.dataset_info_from_configs(
            description=f"{spec.description} Installed by `{spec.install}`.",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=None if spec.kind == "math" else supervised,
            homepage=spec.homepage or None,
            citation=spec.citation or None,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # every file is local
        prepared = sources.prepare(self.builder_config.name)
        return {split: self._generate_examples(rows) for split, rows in prepared.splits.items()}

    def _generate_examples(self, rows: list[sources.Example]) -> Iterator[tuple[int, sources.Example]]:
        yield from enumerate(rows)

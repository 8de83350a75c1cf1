"""experiments/analyses/adapter_size.py: the committed adapter_size.json is what it measures now."""

import argparse
import json
import pathlib

from experiments.analyses import adapter_size

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_committed_result_is_current():
    doc = adapter_size.measure(argparse.Namespace(command="python -m experiments.analyses.adapter_size"))
    committed = json.loads((ROOT / "experiments" / "results" / "adapter_size.json").read_text())
    assert doc == committed
    theta, head = doc["rows"]
    assert theta["tensor_bytes"] == 4 * 23_040 and head["tensor_bytes"] == 4 * (23_040 + 384 * 2 + 2)
    for row in doc["rows"]:  # random values do not compress: every float is on disk, plus the manifest
        assert row["bytes_on_disk"] >= row["tensor_bytes"] + row["metadata_bytes"]
    assert len(adapter_size.render(doc).splitlines()) == 4

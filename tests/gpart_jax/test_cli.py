"""The gpart-jax command: info on an adapter (its adapted paths), dispatch, one-line errors."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from gpart_jax import cli

PARAMS = {"layer_0": {"query": {"kernel": jnp.ones((8, 8))}, "value": {"kernel": jnp.ones((8, 4))}},
          "head": {"kernel": jnp.ones((8, 2)), "bias": jnp.ones(2)}}
HEAD = {"head/kernel": np.ones((8, 2), np.float32), "head/bias": np.ones(2, np.float32)}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    directory = tmp_path_factory.mktemp("info") / "a"
    method = gj.GPart.create(PARAMS, d=12, seed=2**63 + 1, targets=("query", "value"), scheme="balanced")
    gj.save_adapter(directory, method, jnp.arange(12, dtype=jnp.float32), saved=HEAD)
    return directory, method


def one_line_error(capsys):
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err and "\n" not in err, err
    return err


def test_info_json_lists_the_adapted_paths(adapter, capsys):
    directory, method = adapter
    assert cli.main(["info", str(directory), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["method"], out["d"], out["seed"], out["scheme"], out["isometric"]) == (
        "gpart", 12, str(2**63 + 1), "balanced", True)
    assert (out["trainable"], out["saved"], out["adapted_weights"]) == (12, 18, 96)
    assert out["adapted"] == [["layer_0/query/kernel", [8, 8]], ["layer_0/value/kernel", [8, 4]]]
    assert out["saved_leaves"] == ["head/bias", "head/kernel"]
    assert out["fingerprint"] == method.fingerprint and out["size_on_disk_bytes"] > 48
    assert (out["package_version"], out["format_version"]) == (gj.__version__, 2)


def test_info_text_lists_the_adapted_paths(adapter, capsys):
    directory, _ = adapter
    assert cli.main(["info", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "method: gpart" in out and "d: 12" in out and "trainable: 12" in out
    assert "saved leaves (2): head/bias, head/kernel" in out
    assert "adapted leaves (2):\n  layer_0/query/kernel  (8, 8)\n  layer_0/value/kernel  (8, 4)" in out


def test_info_on_a_baseline(tmp_path, capsys):
    method = gj.methods.build("lora", PARAMS, r=2, targets=("query",))
    gj.save_adapter(tmp_path / "lora", method, method.init(jax.random.key(0)))
    assert cli.main(["info", str(tmp_path / "lora"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["method"], out["r"], out["trainable"], out["saved"]) == ("lora", 2, 2 * (8 + 8), 0)
    assert out["adapted"] == [["layer_0/query/kernel", [8, 8]]] and out["saved_leaves"] == []


def test_info_errors_are_one_line_and_exit_2(adapter, tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing")]) == 2
    assert "no adapter at" in one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert cli.main(["info", str(tmp_path / "empty")]) == 2
    assert "not a gpart-jax adapter" in one_line_error(capsys)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter.json").write_text('{"format": "gpart-jax-adap')
    assert cli.main(["info", str(broken)]) == 2
    assert "not valid JSON" in one_line_error(capsys)
    directory, _ = adapter
    edited = tmp_path / "edited"
    edited.mkdir()
    doc = json.loads((directory / "adapter.json").read_text())
    doc["method"]["d"] = 13
    (edited / "adapter.json").write_text(json.dumps(doc))
    assert cli.main(["info", str(edited)]) == 2
    assert "does not match its sha256" in one_line_error(capsys)


def test_usage(capsys):
    assert cli.main(["info"]) == 2
    assert "usage: gpart-jax info" in one_line_error(capsys)
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main([]) == 2 and "usage" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0 and "gpart-jax info ADAPTER" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "eval", "merge", "params"])
def test_experiment_commands_point_to_experiments(command, capsys):
    assert cli.main([command, "--config", "x.py"]) == 2
    assert f"python -m experiments {command}" in one_line_error(capsys)


def test_the_installed_command(adapter):
    directory, _ = adapter
    done = subprocess.run([sys.executable, "-m", "gpart_jax.cli", "info", str(directory), "--json"],
                          capture_output=True, text=True, timeout=120,
                          cwd=pathlib.Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["adapted"][0] == ["layer_0/query/kernel", [8, 8]]

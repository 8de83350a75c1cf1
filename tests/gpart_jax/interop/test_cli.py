"""``gpart-jax peft merge|import|export``: the golden merge from the command line; refused inputs
are one line on stderr, exit 2 and nothing written."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import gpart_jax as gj
from gpart_jax import cli
from gpart_jax.interop import merge_state_dict, read_reference_adapter
from gpart_jax.interop.cli import main
from gpart_jax.interop.config import THETA_KEY
from tests.gpart_jax.interop.helpers import ADAPTER, PEFT_DIR, QV, assert_same_reference_adapter, listing


def copy_adapter(tmp_path, name="adapter"):
    out = tmp_path / name
    shutil.copytree(ADAPTER, out)
    for p in out.iterdir():
        p.chmod(0o644)
    return out


def one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gpart-jax peft {command}: ") and "\n" not in err, err
    return err


def test_merge_reproduces_the_golden_weights(tmp_path, minilm_path, capsys):
    out = tmp_path / "merged.safetensors"
    rc = main(["peft", "merge", "--adapter", str(ADAPTER), "--base", str(minilm_path), "--out", str(out),
               "--prefix", "bert."])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    merged, expected = load_file(str(out)), load_file(str(PEFT_DIR / "expected_merged.safetensors"))
    assert max(np.abs(merged[m + ".weight"] - expected[f"bert.{m}.weight"]).max() for m in QV) < 1e-7
    np.testing.assert_array_equal(merged["classifier.weight"], expected["classifier.weight"])
    base = load_file(str(minilm_path))
    assert merged.keys() == base.keys() | {"classifier.weight", "classifier.bias"}
    np.testing.assert_array_equal(merged["encoder.layer.0.attention.self.key.weight"],
                                  base["encoder.layer.0.attention.self.key.weight"])
    # the top-level command dispatches to it
    assert cli.main(["peft", "merge", "--adapter", str(ADAPTER), "--base", str(minilm_path), "--out",
                     str(out), "--prefix", "bert."]) == 2
    assert "exists; nothing was written" in one_line_error(capsys, "merge")
    assert cli.main(["peft", "merge", "--adapter", str(ADAPTER), "--base", str(minilm_path), "--out",
                     str(out), "--prefix", "bert.", "--overwrite"]) == 0


def test_merge_errors_write_nothing(tmp_path, minilm_path, capsys):
    out = tmp_path / "merged.safetensors"

    def merge(adapter, base=minilm_path, *extra):
        before = listing(tmp_path)
        rc = main(["peft", "merge", "--adapter", str(adapter), "--base", str(base), "--out", str(out),
                   *extra])
        assert rc == 2 and not out.exists() and listing(tmp_path) == before
        return one_line_error(capsys, "merge")

    corrupted = copy_adapter(tmp_path, "corrupted")
    weights = corrupted / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "truncated or damaged" in merge(corrupted)

    missing = copy_adapter(tmp_path, "missing")
    t = load_file(str(missing / "adapter_model.safetensors"))
    save_file({"base_model.other": t[THETA_KEY]}, str(missing / "adapter_model.safetensors"))
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
    assert "neither 'auto', an architecture" in merge(ADAPTER, minilm_path, "--module-order", "gpt9")
    assert main(["peft", "merge", "--adapter", str(ADAPTER)]) == 2  # usage error: --base missing
    assert "required" in one_line_error(capsys, "merge")


def test_merge_never_writes_over_an_input(tmp_path, minilm_path, capsys):
    base = tmp_path / "base.safetensors"
    shutil.copy(minilm_path, base)
    before = base.read_bytes()
    adapter = copy_adapter(tmp_path)
    for out, what in ((base, "base checkpoint"), (adapter / "adapter_model.safetensors", "adapter's weights"),
                      (adapter / "adapter_config.json", "adapter's config")):
        assert main(["peft", "merge", "--adapter", str(adapter), "--base", str(base), "--out", str(out),
                     "--prefix", "bert.", "--overwrite"]) == 2
        assert f"is the {what}" in one_line_error(capsys, "merge")
    assert base.read_bytes() == before
    assert_same_reference_adapter(read_reference_adapter(adapter), read_reference_adapter(ADAPTER))


def test_import_export_round_trip(tmp_path, minilm_path, capsys):
    lib, out = tmp_path / "lib", tmp_path / "exported"
    assert main(["peft", "import", "--adapter", str(ADAPTER), "--base", str(minilm_path),
                 "--out", str(lib), "--prefix", "bert."]) == 0
    capsys.readouterr()
    # a library adapter: gj.load_adapter and `gpart-jax info` read it
    loaded = gj.load_adapter(lib)
    assert (loaded.method.d, loaded.method.seed, loaded.method.num_adapted) == (4096, 1234, 1_769_472)
    assert cli.main(["info", str(lib), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["method"], info["d"], info["seed"], info["adapted_weights"]) == (
        "gpart", 4096, "1234", 1_769_472)
    assert [p for p, _ in info["adapted"]] == [m.replace(".", "/") + "/kernel" for m in QV]
    assert info["saved_leaves"] == ["classifier/bias", "classifier/weight"]

    assert main(["peft", "export", "--adapter", str(lib), "--out", str(out)]) == 0
    back, golden = read_reference_adapter(out), read_reference_adapter(ADAPTER)
    assert [m for m, _, _ in back.modules] == ["bert." + m for m in QV]
    assert back.config == golden.config
    np.testing.assert_array_equal(back.theta, golden.theta)
    for k in golden.saved:
        np.testing.assert_array_equal(back.saved[k], golden.saved[k])
    # an existing output is replaced only with --overwrite
    assert main(["peft", "export", "--adapter", str(lib), "--out", str(out)]) == 2
    assert "exists and is not empty" in one_line_error(capsys, "export")
    assert main(["peft", "export", "--adapter", str(lib), "--out", str(out), "--overwrite"]) == 0
    assert read_reference_adapter(out).config == golden.config
    # the same for import
    assert main(["peft", "import", "--adapter", str(ADAPTER), "--base", str(minilm_path),
                 "--out", str(lib), "--prefix", "bert."]) == 2
    assert "holds an adapter; pass overwrite=True" in one_line_error(capsys, "import")


def test_export_refuses_what_was_not_imported(tmp_path, capsys):
    assert main(["peft", "export", "--adapter", str(ADAPTER), "--out", str(tmp_path / "x")]) == 2
    assert "gpart-jax peft import" in one_line_error(capsys, "export")  # a PEFT dir, not ours
    lib = tmp_path / "lib"
    params = {"q": {"kernel": np.zeros((4, 4), np.float32)}}
    method = gj.GPart.create(params, d=4, targets=("q",), scheme="balanced")
    gj.save_adapter(lib, method, method.init())
    assert main(["peft", "export", "--adapter", str(lib), "--out", str(tmp_path / "x")]) == 2
    assert "not imported from a reference adapter" in one_line_error(capsys, "export")
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
    save_file({THETA_KEY: np.ones(5, np.float32)}, str(adapter / "adapter_model.safetensors"))
    out = tmp_path / "merged.safetensors"
    argv = ["peft", "merge", "--adapter", str(adapter), "--base", str(base), "--out", str(out)]
    assert main(argv) == 2 and "module_order" in one_line_error(capsys, "merge")
    order = tmp_path / "order.txt"
    order.write_text("net.b\nnet.a\n")
    assert main([*argv, "--module-order", str(order)]) == 0
    merged = load_file(str(out))
    want = merge_state_dict(adapter, tensors, module_order=["net.b", "net.a"])
    for k in tensors:
        np.testing.assert_array_equal(merged[k], want[k])
    swapped = merge_state_dict(adapter, tensors, module_order=["net.a", "net.b"])
    assert not np.array_equal(merged["net.a.weight"], swapped["net.a.weight"])
    (tmp_path / "empty.txt").write_text("\n")
    assert main([*argv, "--overwrite", "--module-order", str(tmp_path / "empty.txt")]) == 2
    assert "lists no module names" in one_line_error(capsys, "merge")


def test_help_and_usage(capsys):
    assert main(["peft", "--help"]) == 0
    assert "merge" in capsys.readouterr().out
    assert main(["peft", "frobnicate"]) == 2
    assert "invalid choice" in one_line_error(capsys, "frobnicate")


@pytest.mark.parametrize("command", ["merge", "import"])
def test_a_missing_base_is_one_line(tmp_path, capsys, command):
    assert main(["peft", command, "--adapter", str(ADAPTER), "--base", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in one_line_error(capsys, command)
    assert listing(tmp_path) == []

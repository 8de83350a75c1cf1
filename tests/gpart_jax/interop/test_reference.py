"""The reference's adapter directory: read and validated, written whole or not at all."""

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gpart_jax import files
from gpart_jax.errors import InteropError
from gpart_jax.interop import (
    GPartConfig,
    ReferenceAdapter,
    read_reference_adapter,
    safetensors_files,
    write_reference_adapter,
)
from gpart_jax.interop.config import THETA_KEY
from tests.gpart_jax.interop.helpers import (
    ADAPTER,
    assert_nothing_written,
    assert_same_reference_adapter,
    listing,
    write_adapter,
)
from tests.tmpfs import tmpfs


def test_read_the_golden_adapter(expected):
    adapter = read_reference_adapter(ADAPTER)
    assert adapter.config.d == 4096 and adapter.path == ADAPTER
    assert adapter.theta.dtype == np.float32 and adapter.theta.shape == (4096,)
    np.testing.assert_array_equal(adapter.theta, expected["theta_d"])
    assert sorted(adapter.saved) == ["classifier.bias", "classifier.weight"]
    np.testing.assert_array_equal(adapter.saved["classifier.weight"], expected["classifier.weight"])
    assert adapter.modules is None  # the reference records no shapes


def test_write_then_read_is_the_identity(tmp_path):
    golden = read_reference_adapter(ADAPTER)
    out = write_reference_adapter(tmp_path / "copy", golden)
    assert listing(out) == ["adapter_config.json", "adapter_model.safetensors"]
    assert_same_reference_adapter(read_reference_adapter(out), golden)
    assert json.loads((out / "adapter_config.json").read_text()) == json.loads(
        (ADAPTER / "adapter_config.json").read_text())
    with_modules = dataclasses.replace(golden, modules=(("bert.encoder.layer.0.attention.self.query",
                                                         (384, 384), None),))
    again = read_reference_adapter(write_reference_adapter(tmp_path / "mods", with_modules))
    assert_same_reference_adapter(again, with_modules)
    # and another theta is another adapter: the comparison can fail
    other = dataclasses.replace(golden, theta=golden.theta + np.float32(1))
    with pytest.raises(AssertionError):
        assert_same_reference_adapter(other, golden)


def test_corrupted_files(tmp_path):
    bad = write_adapter(tmp_path)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10_000])
    with pytest.raises(InteropError, match=r"adapter_model.safetensors.*truncated or damaged"):
        read_reference_adapter(bad)
    (bad / "adapter_config.json").write_text('{"d": 4096, ')
    with pytest.raises(InteropError, match="not valid JSON"):
        read_reference_adapter(bad)


def test_missing_pieces(tmp_path):
    with pytest.raises(InteropError, match="does not exist"):
        read_reference_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InteropError, match="no adapter_config.json"):
        read_reference_adapter(tmp_path / "empty")
    pickled = write_adapter(tmp_path, name="pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(InteropError, match="torch pickle"):
        read_reference_adapter(pickled)
    (pickled / "adapter_model.bin").unlink()
    with pytest.raises(InteropError, match="no adapter_model.safetensors"):
        read_reference_adapter(pickled)


def test_missing_theta_key(tmp_path):
    bad = write_adapter(tmp_path, tensors=lambda t: {
        ("base_model.theta" if k == THETA_KEY else k): v for k, v in t.items()})
    with pytest.raises(InteropError, match=r"no tensor 'base_model.gpart_theta_d'.*base_model.theta"):
        read_reference_adapter(bad)


def test_stray_tensors_and_another_theta_dtype(tmp_path):
    stray = write_adapter(tmp_path, tensors=lambda t: t | {"lora_A": np.zeros(2, np.float32)},
                          name="stray")
    with pytest.raises(InteropError, match=r"unexpected tensors \['lora_A'\]"):
        read_reference_adapter(stray)
    half = write_adapter(tmp_path, tensors=lambda t: t | {THETA_KEY: t[THETA_KEY].astype(np.float16)},
                         name="half")
    with pytest.raises(InteropError, match="float16"):
        read_reference_adapter(half)


def test_d_disagrees_with_theta(tmp_path):
    with pytest.raises(InteropError, match=r"d = 4000 in adapter_config.json but theta .* 4096 entries"):
        read_reference_adapter(write_adapter(tmp_path, {"d": 4000}))


def test_non_finite_theta(tmp_path):
    def nan(t):
        theta = t[THETA_KEY].copy()
        theta[7] = np.nan
        return t | {THETA_KEY: theta}
    with pytest.raises(InteropError, match="1 non-finite values"):
        read_reference_adapter(write_adapter(tmp_path, tensors=nan))


def test_a_theta_that_does_not_fit_its_config():
    config = GPartConfig(d=3, target_modules=("q",))
    with pytest.raises(InteropError, match="1-D float32"):
        ReferenceAdapter(config, np.zeros(3, np.float64))
    with pytest.raises(InteropError, match="d = 3"):
        ReferenceAdapter(config, np.zeros(4, np.float32))


def test_writing_refuses_to_replace_what_is_not_an_adapter(tmp_path):
    golden = read_reference_adapter(ADAPTER)
    out = write_reference_adapter(tmp_path / "out", golden)
    with pytest.raises(InteropError, match="exists and is not empty.*overwrite"):
        write_reference_adapter(out, golden)
    changed = dataclasses.replace(golden, theta=golden.theta * 2)
    write_reference_adapter(out, changed, overwrite=True)
    np.testing.assert_array_equal(read_reference_adapter(out).theta, golden.theta * 2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(InteropError, match="not a PEFT adapter's"):
        write_reference_adapter(mine, golden, overwrite=True)
    assert listing(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InteropError, match="not a directory"):
        write_reference_adapter(tmp_path / "file", golden)
    with pytest.raises(InteropError, match="parent directory"):
        write_reference_adapter(tmp_path / "no" / "out", golden)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "out"]  # no temporaries


def test_a_failed_write_leaves_nothing_and_the_old_adapter(tmp_path, monkeypatch):
    golden = read_reference_adapter(ADAPTER)
    import safetensors.numpy

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(InteropError, match="the disk is full"):
        write_reference_adapter(tmp_path / "new", golden)
    assert_nothing_written(tmp_path, tmp_path / "new")
    monkeypatch.undo()
    out = write_reference_adapter(tmp_path / "old", golden)
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(InteropError, match="the disk is full"):
        write_reference_adapter(out, dataclasses.replace(golden, theta=golden.theta * 2), overwrite=True)
    assert_same_reference_adapter(read_reference_adapter(out), golden)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_real_full_disk_leaves_the_old_adapter(tmp_path):
    """On a tmpfs filled to the last page (safetensors' writer then raises its own error type)."""
    golden = read_reference_adapter(ADAPTER)
    with tmpfs(tmp_path / "disk", kib=1024) as disk:
        out = write_reference_adapter(disk.path / "old", golden)
        disk.fill()
        with pytest.raises(InteropError, match="the disk is full"):
            write_reference_adapter(out, dataclasses.replace(golden, theta=golden.theta * 2), overwrite=True)
        assert_same_reference_adapter(read_reference_adapter(out), golden)
        assert sorted(p.name for p in disk.path.iterdir()) == ["filler", "old"]  # no temporaries
        disk.free()
        write_reference_adapter(out, dataclasses.replace(golden, theta=golden.theta * 2), overwrite=True)
        np.testing.assert_array_equal(read_reference_adapter(out).theta, golden.theta * 2)


def test_a_second_writer_is_refused(tmp_path):
    golden = read_reference_adapter(ADAPTER)
    with files.PathLock(tmp_path / ".out.lock", "x"):
        with pytest.raises(InteropError, match="being written by another process"):
            write_reference_adapter(tmp_path / "out", golden)
    assert not (tmp_path / "out").exists()


def test_saved_modules_round_trip_in_torch_layout(tmp_path):
    config = GPartConfig(d=3, target_modules=("q",), modules_to_save=("head",))
    saved = {"head.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "head.bias": np.ones(2, np.float32)}
    out = write_reference_adapter(tmp_path / "a", ReferenceAdapter(config, np.ones(3, np.float32), saved))
    raw = load_file(str(out / "adapter_model.safetensors"))
    assert sorted(raw) == ["base_model.gpart_theta_d", "base_model.model.head.bias",
                           "base_model.model.head.weight"]
    np.testing.assert_array_equal(raw["base_model.model.head.weight"], saved["head.weight"])
    save_file(raw, str(out / "adapter_model.safetensors"))  # without metadata, as torch may write it
    back = read_reference_adapter(out)
    np.testing.assert_array_equal(back.saved["head.weight"], saved["head.weight"])


def test_a_file_write_killed_inside_the_writer_leaves_the_old_file_and_only_our_staging(tmp_path):
    """``safetensors_files.write_file`` (peft merge's output) killed while the writer is in its own
    temporary file, as safetensors' writer makes one (``.tmpXXXXXX`` beside its target): the old
    file is intact, and the only new entry in its folder is the staging directory named as ours,
    which holds the writer's temporary; the next write succeeds beside it."""
    import subprocess
    import sys

    out = tmp_path / "merged.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(out))
    before = out.read_bytes()
    code = ("import os, sys, pathlib; from gpart_jax.interop import safetensors_files as s\n"
            "def killed(path):\n"
            "    (path.parent / '.tmpAb3xYz').write_bytes(b'partial')\n"
            "    os._exit(9)\n"
            "s.write_file(pathlib.Path(sys.argv[1]), killed)\n")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, timeout=120)
    assert done.returncode == 9, done.stderr
    assert out.read_bytes() == before
    left = [p for p in tmp_path.iterdir() if p != out]
    assert len(left) == 1 and left[0].is_dir(), left
    assert left[0].name.startswith(".merged.safetensors.") and left[0].name.endswith(".tmp")
    assert sorted(p.name for p in left[0].iterdir()) == [".tmpAb3xYz"]
    safetensors_files.write_file(out, lambda p: save_file({"w": np.zeros(3, np.float32)}, str(p)))
    np.testing.assert_array_equal(load_file(str(out))["w"], np.zeros(3, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, left[0].name])

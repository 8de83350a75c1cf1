"""Adapter files: round trips for every method, verification on read, and a write path that never
loses the previous adapter (refusals, a full disk, a concurrent writer, a kill at any moment)."""

import errno
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from gpart_jax import adapters, files
from gpart_jax.paths import leaves_with_paths
from tests.gpart_jax import saver
from tests.gpart_jax.tiny_model import METHOD_OPTIONS, build, random_like, tiny_setup, trained_head
from tests.tmpfs import tmpfs

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


@pytest.fixture(scope="module")
def gpart_adapter(tiny):
    """A GPart (seed near 2**64) with a random theta and a trained head."""
    method = build("gpart", tiny[3])
    return method, random_like(method.init(jax.random.key(0))), trained_head(tiny[3])


def trainable_for(method, seed=0):
    """A trained-looking trainable of ``method`` (head-only: ``{}``)."""
    return random_like(method.init(jax.random.key(0)), seed=seed, scale=0.1)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), (_, y) in zip(leaves_with_paths(a)[0], leaves_with_paths(b)[0], strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)


def tensors_file(directory) -> pathlib.Path:
    """The adapter's tensors file (safetensors), as its manifest names it."""
    return pathlib.Path(directory) / gj.read_manifest(directory)["tensors"]


def entries(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir())


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("with_saved", [False, True], ids=["no-saved", "saved"])
@pytest.mark.parametrize("name", list(METHOD_OPTIONS))
def test_round_trip_every_method(tmp_path, tiny, name, with_saved):
    model, x, _, base = tiny
    method = build(name, base)
    trainable = trainable_for(method)
    saved = trained_head(base) if with_saved else None
    manifest = gj.save_adapter(tmp_path / "a", method, trainable, saved=saved, base_params=base,
                               extra={"task": "toy", "steps": [1, 2]})
    assert manifest["method"] == method.spec() and manifest["extra"] == {"task": "toy", "steps": [1, 2]}

    for loaded in (gj.load_adapter(tmp_path / "a", base_params=base), gj.load_adapter(tmp_path / "a")):
        assert type(loaded.method) is type(method) and loaded.method.spec() == method.spec()
        assert_trees_equal(loaded.trainable, trainable)
        assert sorted(loaded.saved) == sorted(saved or {})
        for path, value in (saved or {}).items():
            np.testing.assert_array_equal(loaded.saved[path], value)
        assert loaded.metadata == gj.read_manifest(tmp_path / "a")
        out = model.apply(gj.full_params(loaded.method, loaded.trainable, base, loaded.saved), x)
        np.testing.assert_array_equal(out, model.apply(gj.full_params(method, trainable, base, saved), x))
    # given the method itself, that very object comes back
    assert gj.load_adapter(tmp_path / "a", method=method).method is method


def test_manifest_records_the_partition_and_the_arrays(tmp_path, tiny, gpart_adapter):
    base = tiny[3]
    method, theta, head = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta, saved=head, base_params=base)
    md = gj.read_manifest(tmp_path / "a")
    assert (md["format"], md["format_version"], md["package_version"]) == (
        adapters.FORMAT, adapters.FORMAT_VERSION, gj.__version__)
    spec = md["method"]
    assert (spec["method"], spec["d"], int(spec["seed"]), spec["scheme"], spec["isometric"]) == (
        "gpart", 48, 2**64 - 3, "stateless", True)
    assert spec["seed"] == str(2**64 - 3)  # a string, so that no JSON reader rounds it
    assert spec["fingerprint"] == method.fingerprint
    assert [e[0] for e in spec["layout"]] == list(method.target_paths)
    assert md["base_dtypes"] == {p: "float32" for p in method.target_paths}
    assert md["trainable"] == [{"path": "", "shape": [48], "dtype": "float32",
                                "sha256": adapters._sha256(np.asarray(theta))}]
    assert [e["path"] for e in md["saved"]] == sorted(head)
    assert entries(tmp_path / "a") == [".lock", "adapter.json", md["tensors"]]


def test_the_files_have_the_umask_permissions(tmp_path, tiny, gpart_adapter):
    """Both files as an ordinary new file would be (safetensors' writer makes its file 0600)."""
    base = tiny[3]
    method, theta, head = gpart_adapter
    old = os.umask(0o022)
    try:
        gj.save_adapter(tmp_path / "a", method, theta, saved=head, base_params=base)
    finally:
        os.umask(old)
    tensors = gj.read_manifest(tmp_path / "a")["tensors"]
    modes = {name: (tmp_path / "a" / name).stat().st_mode & 0o777 for name in ("adapter.json", tensors)}
    assert modes == {"adapter.json": 0o644, tensors: 0o644}, modes


def test_adapter_size_is_about_4d_bytes(tmp_path):
    shapes = {"encoder": {f"layer_{i}": {m: {"kernel": jax.ShapeDtypeStruct((384, 384), jnp.float32)}
                                         for m in ("query", "value")} for i in range(6)}}
    method = gj.GPart.create(shapes, d=23040, seed=0)
    theta = jnp.asarray(np.random.default_rng(0).normal(size=23040), jnp.float32)
    gj.save_adapter(tmp_path / "a", method, theta)
    size = adapters.directory_size(tmp_path / "a")
    # theta (92,160 B) + the manifest (layout, hashes) + the tensors file's header
    assert 4 * 23040 < size < 4 * 23040 + 24_000, size


def test_reload_in_a_fresh_process_is_bit_identical(tmp_path, tiny):
    model, x, _, base = tiny
    names = ("gpart", "lora", "vera")
    written = []
    for i, name in enumerate(names):
        method = build(name, base)
        trainable, head = trainable_for(method, seed=i), trained_head(base)
        gj.save_adapter(tmp_path / name, method, trainable, saved=head)
        written.append((method, trainable, head))
    out = tmp_path / "loaded.npz"
    run_child(["load", str(out), *(str(tmp_path / n) for n in names)])
    got = np.load(out)
    for i, (method, trainable, head) in enumerate(written):
        assert json.loads(str(got[f"{i}/spec"])) == json.loads(json.dumps(method.spec()))
        arrays = {}
        for path, leaf in leaves_with_paths(trainable)[0]:
            arrays[path] = got[f"{i}/trainable/{path}"]
            assert arrays[path].dtype == np.float32
            np.testing.assert_array_equal(arrays[path], leaf)
        for path, leaf in head.items():
            np.testing.assert_array_equal(got[f"{i}/saved/{path}"], leaf)
        # so the model it gives is the one trained, to the bit
        reloaded = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(trainable),
                                                list(arrays.values()))
        saved = {p: got[f"{i}/saved/{p}"] for p in head}
        np.testing.assert_array_equal(model.apply(gj.full_params(method, reloaded, base, saved), x),
                                      model.apply(gj.full_params(method, trainable, base, head), x))


# --------------------------------------------------------------------------- damaged files

def test_a_flipped_byte_is_an_error_never_other_numbers(tmp_path, gpart_adapter):
    method, theta, head = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta, saved=head)
    victim = tensors_file(tmp_path / "a")
    size = victim.stat().st_size
    errors = loads = 0
    header = int.from_bytes(victim.read_bytes()[:8], "little") + 8  # safetensors: length, JSON, data
    positions = sorted({*range(0, header, max(1, header // 8)),
                        *range(header, size, max(1, (size - header) // 8))})
    for position in positions:
        shutil.rmtree(tmp_path / "b", ignore_errors=True)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        copy = tmp_path / "b" / victim.name
        raw = bytearray(copy.read_bytes())
        raw[position] ^= 0x10
        copy.write_bytes(bytes(raw))
        try:
            loaded = gj.load_adapter(tmp_path / "b")
        except gj.AdapterCorruptError as e:
            assert str(tmp_path / "b") in str(e)
            errors += 1
            continue
        # a flip in bytes the reader ignores (header padding) may load, but never as other numbers
        loads += 1
        np.testing.assert_array_equal(loaded.trainable, theta)
        for path, value in head.items():
            np.testing.assert_array_equal(loaded.saved[path], value)
    assert errors >= len(positions) - 2, f"only {errors} of {len(positions)} flips detected"
    assert any(p >= header for p in positions)  # the data bytes were hit too


def test_truncated_files_are_corrupt(tmp_path, gpart_adapter):
    method, theta, head = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta, saved=head)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    victim = tensors_file(tmp_path / "a")
    for keep in (victim.stat().st_size - 4, victim.stat().st_size // 3, 5):
        shutil.copytree(tmp_path / "b", tmp_path / f"cut{keep}")
        cut = tmp_path / f"cut{keep}" / victim.name
        cut.write_bytes(cut.read_bytes()[:keep])
        with pytest.raises(gj.AdapterCorruptError, match="truncated or damaged"):
            gj.load_adapter(tmp_path / f"cut{keep}")
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "b").trainable, theta)  # the uncut copy
    manifest = tmp_path / "b" / adapters.MANIFEST
    manifest.write_bytes(manifest.read_bytes()[:200])
    with pytest.raises(gj.AdapterCorruptError, match="not valid JSON"):
        gj.load_adapter(tmp_path / "b")


def test_missing_tensors_are_corrupt(tmp_path, gpart_adapter):
    method, theta, _ = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta)
    tensors_file(tmp_path / "a").unlink()
    with pytest.raises(gj.AdapterCorruptError, match="is missing"):
        gj.load_adapter(tmp_path / "a")


def rewrite_manifest(directory, edit, *, reseal: bool):
    """Edit the manifest with ``edit(doc)``; with ``reseal`` also recompute its sha256."""
    path = pathlib.Path(directory) / adapters.MANIFEST
    doc = json.loads(path.read_text())
    edit(doc)
    if reseal:
        doc["manifest_sha256"] = adapters._manifest_sha256(doc)
    path.write_text(json.dumps(doc))


def test_an_edited_manifest_is_refused(tmp_path, tiny, gpart_adapter):
    base = tiny[3]
    method, theta, _ = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")

    def other_seed(doc):  # silently another partition, if it were accepted
        doc["method"]["seed"] = "7"
    rewrite_manifest(tmp_path / "a", other_seed, reseal=False)
    with pytest.raises(gj.AdapterCorruptError, match="does not match its sha256"):
        gj.load_adapter(tmp_path / "a", base_params=base)

    def other_d(doc):  # consistent checksum, but the layout's fingerprint no longer matches
        doc["method"]["d"] = 47
    rewrite_manifest(tmp_path / "b", other_d, reseal=True)
    with pytest.raises(gj.LayoutMismatchError, match="fingerprint"):
        gj.load_adapter(tmp_path / "b")

    def other_hash(doc):  # the recorded sha256 of theta no longer matches the stored bytes
        doc["trainable"][0]["sha256"] = "0" * 64
    rewrite_manifest(tmp_path / "c", other_hash, reseal=True)
    with pytest.raises(gj.AdapterCorruptError, match="does not match its recorded"):
        gj.load_adapter(tmp_path / "c")


def test_directories_that_are_not_adapters(tmp_path, gpart_adapter):
    method, theta, _ = gpart_adapter
    with pytest.raises(gj.AdapterError, match="no adapter at"):
        gj.load_adapter(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(gj.AdapterError, match="not a gpart-jax adapter"):
        gj.load_adapter(tmp_path / "empty")
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    with pytest.raises(gj.AdapterError, match="gpart-jax peft import"):
        gj.load_adapter(peft)
    gj.save_adapter(tmp_path / "other", method, theta)
    rewrite_manifest(tmp_path / "other", lambda doc: doc.update(format="other"), reseal=True)
    with pytest.raises(gj.AdapterError, match="not a gpart-jax adapter"):
        gj.load_adapter(tmp_path / "other")
    gj.save_adapter(tmp_path / "newer", method, theta)
    rewrite_manifest(tmp_path / "newer", lambda doc: doc.update(format_version=99), reseal=True)
    with pytest.raises(gj.AdapterError, match="newer than this gpart-jax reads"):
        gj.load_adapter(tmp_path / "newer")


# --------------------------------------------------------------------------- another method or base

def test_another_base_names_the_first_differences(tmp_path, tiny, gpart_adapter):
    base = tiny[3]
    method, theta, head = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta, saved=head)
    other = jax.tree_util.tree_map(lambda v: v, base)
    other["params"]["layer_1"]["kernel"] = jnp.ones((16, 17))
    with pytest.raises(gj.LayoutMismatchError, match=r"params/layer_1/kernel: shape \(16, 17\), "
                                                     r"expected \(16, 16\)"):
        gj.load_adapter(tmp_path / "a", base_params=other)
    missing = {"params": {k: v for k, v in base["params"].items() if k != "layer_0"}}
    with pytest.raises(gj.LayoutMismatchError, match=r"params/layer_0/kernel: missing"):
        gj.load_adapter(tmp_path / "a", base_params=missing)
    five = tiny_setup(num_classes=5)[3]  # the adapted layers fit, the saved head does not
    with pytest.raises(gj.LayoutMismatchError, match=r"params/classifier/kernel: shape \(16, 3\)"):
        gj.load_adapter(tmp_path / "a", base_params=five)
    with pytest.raises(gj.LayoutMismatchError, match="params/layer_1/kernel"):
        gj.save_adapter(tmp_path / "b", method, theta, base_params=other)
    assert not (tmp_path / "b").exists()


def test_a_baseline_on_another_base(tmp_path, tiny):
    base = tiny[3]
    method = build("lora", base)
    gj.save_adapter(tmp_path / "a", method, trainable_for(method))
    other = jax.tree_util.tree_map(lambda v: v, base)
    other["params"]["layer_0"]["kernel"] = jnp.ones((9, 16))
    with pytest.raises(gj.LayoutMismatchError, match=r"params/layer_0/kernel: shape \(9, 16\)"):
        gj.load_adapter(tmp_path / "a", base_params=other)


def test_another_method_is_refused(tmp_path, tiny, gpart_adapter):
    base = tiny[3]
    method, theta, _ = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta)
    for other, what in ((build("gpart", base, seed=7), "seed=7"), (build("gpart", base, d=47), "d=47"),
                        (build("gpart-noniso", base, d=48, seed=2**64 - 3), "gpart-noniso"),
                        (build("lora", base), "lora")):
        with pytest.raises(gj.AdapterError, match=f"written by gpart .*not by the given .*{what}"):
            gj.load_adapter(tmp_path / "a", method=other)


# --------------------------------------------------------------------------- refused at save

def test_non_finite_values_are_refused_at_save(tmp_path, tiny, gpart_adapter):
    base = tiny[3]
    method, theta, head = gpart_adapter
    for bad_theta, bad_head in ((theta.at[3].set(jnp.nan), head),
                                (theta, head | {"params/classifier/bias": np.full(3, np.inf, np.float32)})):
        with pytest.raises(ValueError, match="non-finite"):
            gj.save_adapter(tmp_path / "a", method, bad_theta, saved=bad_head)
        assert not (tmp_path / "a").exists()
    lora = build("lora", base)
    bad = jax.tree_util.tree_map(lambda v: v.at[(0,) * v.ndim].set(-jnp.inf), trainable_for(lora))
    with pytest.raises(ValueError, match="non-finite"):
        gj.save_adapter(tmp_path / "a", lora, bad)
    assert not (tmp_path / "a").exists()


def test_non_finite_values_are_refused_at_load(tmp_path, gpart_adapter):
    """An adapter whose stored numbers are NaN, checksums and all (written around the save check)."""
    method, theta, _ = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta)
    directory = tmp_path / "a"
    doc = json.loads((directory / adapters.MANIFEST).read_text())
    poisoned = np.asarray(theta).copy()
    poisoned[5] = np.nan
    new = "tensors-" + "f" * 32 + ".safetensors"
    adapters._write_tensors(directory / new, {"trainable/0": poisoned})
    doc["tensors"], doc["trainable"][0]["sha256"] = new, adapters._sha256(poisoned)
    doc["manifest_sha256"] = adapters._manifest_sha256(doc)
    (directory / adapters.MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(gj.AdapterCorruptError, match="non-finite"):
        gj.load_adapter(directory)


def test_wrong_trainable_is_refused(tmp_path, tiny, gpart_adapter):
    base = tiny[3]
    method, theta, _ = gpart_adapter
    for bad, why in ((theta[:47], r"float32 \(47,\).*needs float32 \(48,\)"),
                     (theta.astype(jnp.bfloat16), r"bfloat16 \(48,\).*needs float32 \(48,\)"),
                     (np.asarray(theta, np.float64), r"float64 \(48,\).*needs float32"),
                     (theta.reshape(6, 8), r"\(6, 8\).*needs float32 \(48,\)")):
        with pytest.raises(ValueError, match=why):
            gj.save_adapter(tmp_path / "a", method, bad)
    lora = build("lora", base)
    with pytest.raises(TypeError, match="structure"):
        gj.save_adapter(tmp_path / "a", lora, theta)
    with pytest.raises(TypeError, match="not an array"):
        gj.save_adapter(tmp_path / "a", method, jax.ShapeDtypeStruct((48,), jnp.float32))
    with pytest.raises(gj.TargetError, match="overlap the adapted leaves"):
        gj.save_adapter(tmp_path / "a", method, theta,
                        saved={"params/layer_0/kernel": np.zeros((8, 16), np.float32)})
    with pytest.raises(TypeError, match="extra must be JSON-able"):
        gj.save_adapter(tmp_path / "a", method, theta, extra={"f": object()})
    assert not (tmp_path / "a").exists()


def test_a_wrong_length_trainable_in_the_file_is_corrupt(tmp_path, gpart_adapter):
    """A self-consistent manifest whose theta does not fit its method (an edited file)."""
    method, theta, _ = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta)
    directory = tmp_path / "a"
    doc = json.loads((directory / adapters.MANIFEST).read_text())
    short = np.asarray(theta)[:47]
    new = "tensors-" + "e" * 32 + ".safetensors"
    adapters._write_tensors(directory / new, {"trainable/0": short})
    doc["tensors"] = new
    doc["trainable"][0].update(shape=[47], sha256=adapters._sha256(short))
    doc["manifest_sha256"] = adapters._manifest_sha256(doc)
    (directory / adapters.MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(gj.AdapterCorruptError, match=r"\(47,\)"):
        gj.load_adapter(directory)


# --------------------------------------------------------------------------- overwrite

def test_overwrite_replaces_an_adapter_and_only_an_adapter(tmp_path, gpart_adapter):
    method, theta, head = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta, saved=head)
    first = gj.read_manifest(tmp_path / "a")["tensors"]
    with pytest.raises(gj.AdapterError, match="holds an adapter; pass overwrite=True"):
        gj.save_adapter(tmp_path / "a", method, theta * 2)
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "a").trainable, theta)
    gj.save_adapter(tmp_path / "a", method, theta * 2, overwrite=True)
    loaded = gj.load_adapter(tmp_path / "a")
    np.testing.assert_array_equal(loaded.trainable, theta * 2)
    assert loaded.saved == {}
    second = gj.read_manifest(tmp_path / "a")["tensors"]
    assert second != first and entries(tmp_path / "a") == [".lock", "adapter.json", second]


def test_overwrite_never_touches_a_foreign_directory(tmp_path, gpart_adapter):
    method, theta, _ = gpart_adapter
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub").mkdir()
    (mine / "sub" / "data.bin").write_bytes(b"\x00\x01")
    for overwrite in (False, True):
        with pytest.raises(gj.AdapterError, match=r"not an adapter's \(\['notes.txt', 'sub'\]\)"):
            gj.save_adapter(mine, method, theta, overwrite=overwrite)
    assert entries(mine) == ["notes.txt", "sub"]
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (mine / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    # an adapter directory the user put a file into: not replaced either
    gj.save_adapter(tmp_path / "a", method, theta)
    (tmp_path / "a" / "README").write_text("keep me")
    with pytest.raises(gj.AdapterError, match="README"):
        gj.save_adapter(tmp_path / "a", method, theta * 3, overwrite=True)
    assert (tmp_path / "a" / "README").read_text() == "keep me"
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "a").trainable, theta)
    # a file, and a directory holding another format's manifest
    (tmp_path / "file").write_text("data")
    with pytest.raises(gj.AdapterError, match="is a file"):
        gj.save_adapter(tmp_path / "file", method, theta, overwrite=True)
    assert (tmp_path / "file").read_text() == "data"
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(gj.AdapterError, match="not a gpart-jax adapter"):
        gj.save_adapter(other, method, theta, overwrite=True)
    assert json.loads((other / "adapter.json").read_text()) == {"format": "something-else"}
    with pytest.raises(gj.AdapterError, match="parent directory .* does not exist"):
        gj.save_adapter(tmp_path / "no" / "such", method, theta)


def test_an_empty_directory_is_written_into(tmp_path, gpart_adapter):
    method, theta, _ = gpart_adapter
    (tmp_path / "a").mkdir()
    gj.save_adapter(tmp_path / "a", method, theta)
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "a").trainable, theta)


def test_the_tensors_are_on_disk_before_the_manifest_names_them(tmp_path, monkeypatch, gpart_adapter):
    method, theta, head = gpart_adapter
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", str(dst)))
        return real_replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    gj.save_adapter(tmp_path / "a", method, theta, saved=head)
    monkeypatch.undo()
    published = events.index(("replace", str(tmp_path / "a" / adapters.MANIFEST)))
    synced = {path for kind, path in events[:published] if kind == "fsync"}
    tensors = tmp_path / "a" / gj.read_manifest(tmp_path / "a")["tensors"]
    assert str(tensors) in synced


# --------------------------------------------------------------------------- a full disk

def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["tensors", "partly-written-tensors", "tensors-without-the-head",
                                   "manifest"])
def test_a_full_disk_leaves_the_old_adapter(tmp_path, monkeypatch, gpart_adapter, where):
    method, theta, head = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta, saved=head)
    before = entries(tmp_path / "a")
    real = adapters._write_tensors
    if where == "tensors":
        monkeypatch.setattr(adapters, "_write_tensors", enospc)
    elif where == "partly-written-tensors":
        def partly(target, arrays):  # a first part of the file reached the disk, then it was full
            target.write_bytes(b"\x10" * 100)
            enospc()
        monkeypatch.setattr(adapters, "_write_tensors", partly)
    elif where == "tensors-without-the-head":
        def without_head(target, arrays):  # theta written, the disk full before the head
            real(target, {k: v for k, v in arrays.items() if k.startswith("trainable/")})
            enospc()
        monkeypatch.setattr(adapters, "_write_tensors", without_head)
    else:
        monkeypatch.setattr(files, "write_atomic", enospc)
    with pytest.raises(gj.AdapterError, match="the disk is full.*previous one, if any, is intact"):
        gj.save_adapter(tmp_path / "a", method, theta * 5, overwrite=True)
    assert entries(tmp_path / "a") == before  # the new tensors were removed
    loaded = gj.load_adapter(tmp_path / "a")
    np.testing.assert_array_equal(loaded.trainable, theta)
    np.testing.assert_array_equal(loaded.saved["params/classifier/kernel"], head["params/classifier/kernel"])
    monkeypatch.undo()
    gj.save_adapter(tmp_path / "a", method, theta * 5, overwrite=True)  # space again: it saves
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "a").trainable, theta * 5)


def test_a_real_full_disk_leaves_the_old_adapter(tmp_path, gpart_adapter):
    """On a tmpfs filled to the last page: the save fails with the disk named, the old adapter
    loads as it was, nothing of the new one is left, and once there is space the save succeeds."""
    method, theta, head = gpart_adapter
    with tmpfs(tmp_path / "disk", kib=256) as disk:
        gj.save_adapter(disk.path / "a", method, theta, saved=head)
        before = {p.name: p.read_bytes() for p in (disk.path / "a").iterdir()}
        disk.fill()
        with pytest.raises(gj.AdapterError, match="the disk is full.*previous one, if any, is intact"):
            gj.save_adapter(disk.path / "a", method, theta * 5, saved=head, overwrite=True)
        assert {p.name: p.read_bytes() for p in (disk.path / "a").iterdir()} == before
        assert sorted(p.name for p in disk.path.iterdir()) == ["a", "filler"]  # no temporary left
        loaded = gj.load_adapter(disk.path / "a")
        np.testing.assert_array_equal(loaded.trainable, theta)
        disk.free()
        gj.save_adapter(disk.path / "a", method, theta * 5, saved=head, overwrite=True)
        np.testing.assert_array_equal(gj.load_adapter(disk.path / "a").trainable, theta * 5)


def test_the_tensors_writer_leaves_nothing_of_its_own_next_to_the_adapter(tmp_path, monkeypatch,
                                                                          gpart_adapter):
    """safetensors' writer goes through a temporary file of its own (``.tmpXXXXXX``) beside the
    file it is given; a SIGKILL then left it in the adapter's directory, which refused every later
    save as "not an adapter's" (seen in the random-kill test). It now writes in a staging
    directory of ours, and what a killed save leaves there the next save removes."""
    method, theta, head = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta, saved=head)
    seen = set()
    real = adapters._write_tensors

    def watching(target, arrays):
        import safetensors.numpy

        save_file = safetensors.numpy.save_file

        def save_and_look(tensors, filename, metadata=None):
            save_file(tensors, filename, metadata=metadata)
            seen.update(os.listdir(target.parent))
        monkeypatch.setattr(safetensors.numpy, "save_file", save_and_look)
        real(target, arrays)
    monkeypatch.setattr(adapters, "_write_tensors", watching)
    gj.save_adapter(tmp_path / "a", method, theta * 2, saved=head, overwrite=True)
    assert any(n.startswith(".tensors-") and n.endswith(".tmp") for n in seen), seen
    monkeypatch.undo()
    # what a kill inside safetensors' writer leaves: our staging directory and its temporary
    leftover = tmp_path / "a" / f".tensors-{'0' * 32}.tmp"
    leftover.mkdir()
    (leftover / ".tmpAbC123").write_bytes(b"partial")
    gj.save_adapter(tmp_path / "a", method, theta * 3, saved=head, overwrite=True)
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "a").trainable, theta * 3)
    tensors = gj.read_manifest(tmp_path / "a")["tensors"]
    assert entries(tmp_path / "a") == sorted([".lock", "adapter.json", tensors])


def test_a_full_disk_on_a_first_save_leaves_a_reusable_directory(tmp_path, monkeypatch, gpart_adapter):
    method, theta, _ = gpart_adapter
    monkeypatch.setattr(adapters, "_write_tensors", enospc)
    with pytest.raises(gj.AdapterError, match="the disk is full"):
        gj.save_adapter(tmp_path / "a", method, theta)
    assert entries(tmp_path / "a") == [".lock"]
    with pytest.raises(gj.AdapterError, match="not a gpart-jax adapter"):
        gj.load_adapter(tmp_path / "a")
    monkeypatch.undo()
    gj.save_adapter(tmp_path / "a", method, theta)
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "a").trainable, theta)


def test_a_failed_verification_keeps_the_old_adapter(tmp_path, monkeypatch, gpart_adapter):
    """Bytes that come back different from what was given (a bad disk) are never published."""
    method, theta, _ = gpart_adapter
    gj.save_adapter(tmp_path / "a", method, theta)
    real = adapters._write_tensors

    def bit_rot(target, arrays):
        t = np.asarray(arrays["trainable/0"]).copy()
        t[0] += 1
        real(target, arrays | {"trainable/0": t})
    monkeypatch.setattr(adapters, "_write_tensors", bit_rot)
    with pytest.raises(gj.AdapterCorruptError):
        gj.save_adapter(tmp_path / "a", method, theta * 2, overwrite=True)
    np.testing.assert_array_equal(gj.load_adapter(tmp_path / "a").trainable, theta)
    assert len([n for n in entries(tmp_path / "a") if n.startswith("tensors-")]) == 1


# --------------------------------------------------------------------------- other processes

def child_env():
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device is enough, and starts faster
    return env


def run_child(args, timeout=120):
    done = subprocess.run([sys.executable, "-m", "tests.gpart_jax.saver", *args], env=child_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def start_child(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "tests.gpart_jax.saver", *args], env=child_env(),
                            stdout=subprocess.PIPE, text=True, cwd=REPO, **kwargs)


def wait_for_line(proc, wanted, timeout=120):
    """Read ``proc``'s stdout until a line equal to ``wanted``; the lines read."""
    lines = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == wanted:
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"the child ended without printing {wanted!r} (rc {proc.wait()}): {lines}")


def assert_whole_adapter(directory, allowed):
    """The adapter at ``directory`` loads, is one save of ``allowed``, and a new save cleans up."""
    k = saver.which(gj.load_adapter(directory))
    assert k in allowed, (k, allowed)
    gp = saver.method()
    saver.save(directory, gp, 1000)
    names = entries(directory)
    assert [n for n in names if not n.startswith("tensors-")] == [".lock", "adapter.json"], names
    assert len(names) == 3, names  # leftovers of the killed save are gone
    assert saver.which(gj.load_adapter(directory)) == 1000
    return k


@pytest.fixture(scope="module")
def big_gpart():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return saver.method()


def test_a_second_writer_gets_adapter_locked_error(tmp_path, big_gpart):
    directory = tmp_path / "a"
    saver.save(directory, big_gpart, 1)
    proc = start_child(["hold", str(directory), "2"], stdin=subprocess.PIPE)
    try:
        wait_for_line(proc, "writing")  # the child holds the lock, inside its write
        theta, saved = saver.payload(3)
        with pytest.raises(gj.AdapterLockedError) as info:
            gj.save_adapter(directory, big_gpart, theta, saved=saved, overwrite=True)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in str(info.value)
        assert saver.which(gj.load_adapter(directory)) == 1  # readers see the old adapter meanwhile
        proc.stdin.write("go\n")
        proc.stdin.flush()
        wait_for_line(proc, "saved")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_whole_adapter(directory, {2})


@pytest.mark.parametrize("phase", saver.PHASES)
def test_a_kill_at_each_phase_leaves_the_old_or_the_new_adapter(tmp_path, big_gpart, phase):
    directory = tmp_path / "a"
    saver.save(directory, big_gpart, 1)
    proc = start_child(["die", str(directory), "2", phase])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out)
    expected = {"tensors-partly-written": 1, "tensors-written": 1, "manifest-temp-written": 1,
                "manifest-replaced": 2}[phase]
    assert assert_whole_adapter(directory, {expected}) == expected


def kill_at_random_points(tmp_path, gp, trials, seed):
    """Children save payloads in a loop and are SIGKILLed at random moments (in parallel)."""
    rng = random.Random(seed)
    delays = [rng.uniform(0.0, 0.4) for _ in range(trials)]
    results = [None] * trials

    def one(i):
        directory = tmp_path / f"a{i}"
        saver.save(directory, gp, 0)
        proc = start_child(["loop", str(directory), "1"])
        try:
            lines = wait_for_line(proc, "saved 1")
            time.sleep(delays[i])
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        printed = [int(line.split()[1]) for line in lines + rest.split("\n") if line.startswith("saved")]
        results[i] = (directory, printed[-1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(trials)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, result in enumerate(results):
        assert result is not None, f"trial {i} did not finish"
        directory, last = result
        # the last save reported complete, or the one after it, which may have been published
        # just before the kill
        assert_whole_adapter(directory, {last, last + 1})


def test_sigkill_at_random_points_leaves_a_loadable_adapter(tmp_path, big_gpart):
    seed = int(os.environ.get("GPART_JAX_KILL_SEED", random.randrange(2**32)))
    print(f"kill seed {seed} (rerun with GPART_JAX_KILL_SEED={seed})")
    kill_at_random_points(tmp_path, big_gpart, trials=2, seed=seed)


@pytest.mark.slow
def test_sigkill_at_many_random_points(tmp_path, big_gpart):
    seed = int(os.environ.get("GPART_JAX_KILL_SEED", random.randrange(2**32)))
    print(f"kill seed {seed} (rerun with GPART_JAX_KILL_SEED={seed})")
    for round_ in range(4):
        (tmp_path / str(round_)).mkdir()
        kill_at_random_points(tmp_path / str(round_), big_gpart, trials=4, seed=seed + round_)


# --------------------------------------------------------------------------- hand-edited manifests

def json_paths(x, prefix=()):
    """Every key path of a JSON document (the first three items of each list)."""
    items = x.items() if isinstance(x, dict) else enumerate(x[:3]) if isinstance(x, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from json_paths(v, prefix + (k,))


EDITS = {"delete": None, "null": None, "string": "abc", "negative": -1, "list": [1], "float": 1.5,
         "object": {}}


@pytest.mark.parametrize("name", ["gpart", "lora"])
def test_every_field_edited_with_its_checksum_recomputed_is_a_clear_error(tmp_path, name):
    """A manifest edited by hand, its sha256 recomputed so that it verifies: each field of it
    deleted or set to a value of another type is an AdapterError (or the base's own mismatch
    error), never a KeyError, TypeError or AttributeError from inside the reader (found by this
    sweep: 348 raw errors across both methods before the readers checked)."""
    base = {"params": {"l0": {"query": {"kernel": np.ones((8, 8), np.float32)},
                              "value": {"kernel": np.ones((8, 4), np.float32)}},
                       "head": {"kernel": np.ones((8, 3), np.float32)}}}
    method = (gj.GPart.create(base, d=8, targets=("query", "value")) if name == "gpart"
              else gj.methods.build("lora", base, r=2, targets=("query", "value")))
    source = tmp_path / "source"
    gj.save_adapter(source, method, random_like(method.init(jax.random.key(0))),
                    saved={"params/head/kernel": np.ones((8, 3), np.float32)})
    original = json.loads((source / adapters.MANIFEST).read_text())
    unclear = []
    for path in json_paths(original):
        if path == ("manifest_sha256",):
            continue
        for edit, value in EDITS.items():
            doc = json.loads(json.dumps(original))
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            if edit == "delete":
                if not isinstance(parent, dict):
                    continue
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            doc["manifest_sha256"] = adapters._manifest_sha256(doc)
            edited = tmp_path / "edited"
            shutil.copytree(source, edited)
            (edited / adapters.MANIFEST).write_text(json.dumps(doc))
            for kwargs in ({}, {"base_params": base}):
                try:
                    gj.load_adapter(edited, **kwargs)
                except (gj.AdapterError, gj.LayoutMismatchError, gj.TargetError):
                    pass
                except Exception as e:  # what the sweep looks for
                    unclear.append(f"{'/'.join(map(str, path))} {edit}: {type(e).__name__}: {e}")
            shutil.rmtree(edited)
    assert unclear == [], "\n".join(unclear[:20])

"""Adapter files (orbax) and training-run checkpoints: round trips, corruption, resume, atomicity."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpart_jax as gj
from gpart_jax import checkpoint as C
from gpart_jax import trainable as T
from gpart_jax.methods import GPartMethod
from gpart_jax.optim import make_optimizer
from tests.test_training import tiny_setup


@pytest.fixture
def trained():
    model, x, labels, base = tiny_setup()
    method = GPartMethod.create(base, d=48, seed=2**64 - 3, targets="all-linear",
                                element_order="torch", bias=True)
    trainable = T.init_trainable(method, base, ("classifier",))
    rng = np.random.default_rng(0)
    trainable = jax.tree_util.tree_map(
        lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32), trainable)
    return model, x, base, method, trainable


def data_files(directory):
    """The chunk files holding the arrays (orbax/OCDBT keeps them under tensors/d/)."""
    files = [p for p in pathlib.Path(directory, "tensors", "d").glob("*") if p.is_file()]
    assert files, "no data files found: orbax's layout changed?"
    return files


def test_adapter_round_trip_identical_theta_and_outputs(tmp_path, trained):
    model, x, base, method, trainable = trained
    C.save_adapter(tmp_path / "a", method, trainable, base_params=base, extra={"task": "toy"})
    loaded = C.load_adapter(tmp_path / "a", base_params=base)
    np.testing.assert_array_equal(loaded.trainable["adapter"], trainable["adapter"])
    for path, value in trainable["saved"].items():
        np.testing.assert_array_equal(loaded.trainable["saved"][path], value)
    assert loaded.gpart.fingerprint == method.gpart.fingerprint and loaded.gpart.seed == 2**64 - 3
    out = model.apply(T.full_params(GPartMethod(loaded.gpart), loaded.trainable, base), x)
    np.testing.assert_array_equal(out, model.apply(T.full_params(method, trainable, base), x))
    # With the method itself, the adapter's pytree structure comes back too.
    again = C.load_adapter(tmp_path / "a", method=method)
    assert isinstance(again.trainable["adapter"], np.ndarray)


def test_adapter_metadata(tmp_path, trained):
    _, _, base, method, trainable = trained
    C.save_adapter(tmp_path / "a", method, trainable, base_params=base)
    md = C.read_adapter_metadata(tmp_path / "a")
    assert md["format_version"] == C.FORMAT_VERSION and md["package_version"] == gj.__version__
    spec = md["gpart"]
    assert (spec["d"], int(spec["seed"]), spec["scheme"], spec["isometric"], spec["scope"]) == (
        48, 2**64 - 3, "stateless", True, "global")
    assert spec["fingerprint"] == method.gpart.fingerprint
    assert [e[0] for e in spec["layout"]] == [e.path for e in method.gpart.layout]
    assert md["base_dtypes"] == {p: "float32" for p in method.target_paths}
    assert md["adapter"][0]["sha256"] == C._sha256(np.asarray(trainable["adapter"]))
    assert {e["path"] for e in md["saved"]} == set(trainable["saved"])


def test_adapter_size_is_about_4d_bytes(tmp_path):
    shapes = {"encoder": {"layer": {str(i): {"attention": {"self": {
        m: {"kernel": jax.ShapeDtypeStruct((384, 384), jnp.float32)} for m in ("query", "value")}}}
        for i in range(6)}}}
    method = GPartMethod.create(shapes, d=23040, seed=0)
    theta = jnp.asarray(np.random.default_rng(0).normal(size=23040), jnp.float32)
    C.save_adapter(tmp_path / "a", method, {"adapter": theta, "saved": {}})
    size = C.directory_size(tmp_path / "a")
    # theta (92,160 B, random floats do not compress) + metadata (layout, hashes, orbax files)
    assert 0.9 * 4 * 23040 < size < 4 * 23040 + 24_000, size


def test_refuses_to_overwrite(tmp_path, trained):
    _, _, base, method, trainable = trained
    C.save_adapter(tmp_path / "a", method, trainable)
    with pytest.raises(C.AdapterError, match="exists"):
        C.save_adapter(tmp_path / "a", method, trainable)
    C.save_adapter(tmp_path / "a", method, trainable, overwrite=True)


def test_flipped_byte_is_an_error_not_wrong_numbers(tmp_path, trained):
    _, _, base, method, trainable = trained
    C.save_adapter(tmp_path / "a", method, trainable)
    victims = data_files(tmp_path / "a")
    errors = 0
    for victim in victims:
        size = victim.stat().st_size
        for position in range(0, size, max(1, size // 16)):
            shutil.rmtree(tmp_path / "b", ignore_errors=True)
            shutil.copytree(tmp_path / "a", tmp_path / "b")
            copy = tmp_path / "b" / victim.relative_to(tmp_path / "a")
            raw = bytearray(copy.read_bytes())
            raw[position] ^= 0x10
            copy.write_bytes(bytes(raw))
            try:
                loaded = C.load_adapter(tmp_path / "b")
            except C.AdapterCorruptError:
                errors += 1
                continue
            # A flip that orbax does not read (padding) may load, but never as other numbers.
            np.testing.assert_array_equal(loaded.trainable["adapter"], trainable["adapter"])
            for path, value in trainable["saved"].items():
                np.testing.assert_array_equal(loaded.trainable["saved"][path], value)
    assert errors > 0


def test_edited_metadata_is_an_error(tmp_path, trained):
    _, _, base, method, trainable = trained
    C.save_adapter(tmp_path / "a", method, trainable)
    path = tmp_path / "a" / "metadata" / "metadata"
    md = json.loads(path.read_text())
    md["gpart"]["seed"] = "7"  # silently another partition, if it were accepted
    path.write_text(json.dumps(md))
    with pytest.raises(C.AdapterCorruptError, match="metadata .* does not match its sha256"):
        C.load_adapter(tmp_path / "a", base_params=base)


def test_truncated_file_is_a_clear_error(tmp_path, trained):
    _, _, base, method, trainable = trained
    C.save_adapter(tmp_path / "a", method, trainable)
    for victim in data_files(tmp_path / "a"):
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    with pytest.raises(C.AdapterCorruptError, match=r"truncated or corrupted|corrupted file"):
        C.load_adapter(tmp_path / "a", base_params=base)


def test_damaged_or_missing_metadata(tmp_path, trained):
    _, _, _, method, trainable = trained
    with pytest.raises(C.AdapterError, match="no adapter at"):
        C.load_adapter(tmp_path / "nothing")
    C.save_adapter(tmp_path / "a", method, trainable)
    (tmp_path / "a" / "metadata" / "metadata").write_text('{"format": "gpart-jax-adap')
    with pytest.raises(C.AdapterCorruptError, match="metadata .* is corrupted"):
        C.load_adapter(tmp_path / "a")
    (tmp_path / "a" / "metadata" / "metadata").write_text(json.dumps({"format": "other"}))
    with pytest.raises(C.AdapterError, match="not a gpart-jax adapter"):
        C.load_adapter(tmp_path / "a")


def test_restoring_onto_another_layout_names_the_paths(tmp_path, trained):
    _, _, base, method, trainable = trained
    C.save_adapter(tmp_path / "a", method, trainable)
    other = jax.tree_util.tree_map(lambda v: v, base)
    other["params"]["layer_1"]["kernel"] = jnp.ones((16, 17))
    with pytest.raises(gj.LayoutMismatchError, match=r"params/layer_1/kernel: shape \(16, 17\)"):
        C.load_adapter(tmp_path / "a", base_params=other)
    # Another order of the same paths: the GPart given by the caller is checked entry by entry.
    reordered = GPartMethod.create(base, d=48, seed=2**64 - 3, targets="all-linear",
                                   element_order="torch", bias=True,
                                   order=["params/layer_1/kernel", "params/layer_0/kernel"])
    with pytest.raises(gj.LayoutMismatchError, match="entry 0: expected params/layer_0/kernel"):
        C.load_adapter(tmp_path / "a", method=reordered)
    other_seed = GPartMethod.create(base, d=48, seed=7, targets="all-linear",
                                    element_order="torch", bias=True)
    with pytest.raises(C.AdapterError, match="seed"):
        C.load_adapter(tmp_path / "a", method=other_seed)


# ----------------------------------------------------------------------------- training runs

def _run(directory, total_steps, stop_after=None, save_every=4):
    """Train the tiny model, checkpointing every ``save_every`` steps; resume if possible."""
    model, x, labels, base = tiny_setup()
    method = GPartMethod.create(base, d=32, targets="all-linear")
    trainable = T.init_trainable(method, base, ("classifier",))
    opt = make_optimizer(trainable, total_steps=total_steps, adapter_lr=3e-2, saved_lr=3e-2)
    state = {"trainable": trainable, "opt": opt.init(trainable), "step": jnp.int32(0)}

    @jax.jit
    def step_fn(state):
        idx = jax.random.choice(jax.random.fold_in(jax.random.key(5), state["step"]), 128, (32,))

        def loss_fn(tr):
            logits = model.apply(T.full_params(method, tr, base), x[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["trainable"])
        updates, opt_state = opt.update(grads, state["opt"], state["trainable"])
        return {"trainable": optax.apply_updates(state["trainable"], updates), "opt": opt_state,
                "step": state["step"] + 1}, loss

    ckpt = C.RunCheckpointer(directory, keep_last=2, config_fingerprint="tiny-v1")
    start = 0
    if ckpt.latest_step() is not None:
        state, info = ckpt.restore(jax.eval_shape(lambda: state))
        start = info["data_position"]
    for step in range(start, total_steps):
        if stop_after is not None and step == stop_after:
            break  # "killed" here: nothing after the last checkpoint survives
        state, _ = step_fn(state)
        if (step + 1) % save_every == 0:
            ckpt.save(step + 1, state, info={"data_position": step + 1})
    ckpt.close()
    return state


def test_resume_is_bit_exact(tmp_path):
    uninterrupted = _run(tmp_path / "a", 30)
    _run(tmp_path / "b", 30, stop_after=14)  # last checkpoint at step 12; steps 13-14 are lost
    resumed = _run(tmp_path / "b", 30)
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, uninterrupted)


def test_keeps_last_k_and_best(tmp_path):
    with C.RunCheckpointer(tmp_path, keep_last=2, best_metric="acc") as ckpt:
        for step, acc in enumerate([0.5, 0.9, 0.1, 0.2, 0.3, 0.4]):
            ckpt.save(step, {"x": np.float32(step)}, metrics={"acc": acc})
        assert ckpt.all_steps() == [1, 4, 5]
        assert ckpt.best_step() == 1 and ckpt.latest_step() == 5
        state, info = ckpt.restore({"x": jax.ShapeDtypeStruct((), np.float32)}, step=1)
        assert float(state["x"]) == 1 and info["metrics"] == {"acc": 0.9}
    with C.RunCheckpointer(tmp_path / "min", keep_last=1, best_metric="loss", best_mode="min") as ckpt:
        for step, loss in enumerate([3.0, 1.0, 2.0]):
            ckpt.save(step, {"x": np.float32(step)}, metrics={"loss": loss})
        assert ckpt.all_steps() == [1, 2] and ckpt.best_step() == 1


def test_refuses_a_directory_of_another_config(tmp_path):
    with C.RunCheckpointer(tmp_path, config_fingerprint="A") as ckpt:
        ckpt.save(1, {"x": np.float32(1)})
    with C.RunCheckpointer(tmp_path, config_fingerprint="B") as ckpt:
        with pytest.raises(C.AdapterError, match="another config"):
            ckpt.restore({"x": jax.ShapeDtypeStruct((), np.float32)})


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from gpart_jax.checkpoint import RunCheckpointer
    ckpt = RunCheckpointer(sys.argv[1], keep_last=50)
    big = np.zeros(8_000_000, np.float32)
    for step in range(1000):
        big[:] = step
        ckpt.save(step, {"x": big}, info={"step": step})
        print("saved", step, flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_save_killed_half_way_leaves_earlier_checkpoints_intact(tmp_path, delay):
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == "saved 1":
                break
        time.sleep(delay)  # now inside the save of step 2 (or 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with C.RunCheckpointer(tmp_path, keep_last=50) as ckpt:
        steps = ckpt.all_steps()
        assert steps[:2] == [0, 1]
        for step in steps:  # every step listed is complete and readable
            state, info = ckpt.restore({"x": jax.ShapeDtypeStruct((8_000_000,), np.float32)}, step)
            assert info["step"] == step
            assert float(state["x"].min()) == float(state["x"].max()) == step


def test_best_survives_a_restart(tmp_path):
    # a resumed run opens a new manager: it must still know which step was best and keep it
    with C.RunCheckpointer(tmp_path, keep_last=1, best_metric="acc") as ckpt:
        for step, acc in enumerate([0.5, 0.9, 0.1]):
            ckpt.save(step, {"x": np.float32(step)}, metrics={"acc": acc})
        assert ckpt.all_steps() == [1, 2]
    with C.RunCheckpointer(tmp_path, keep_last=1, best_metric="acc") as ckpt:
        assert ckpt.best_step() == 1
        for step in (3, 4):
            ckpt.save(step, {"x": np.float32(step)})  # steps without metrics in between
        ckpt.save(5, {"x": np.float32(5)}, metrics={"acc": 0.2})
        assert ckpt.all_steps() == [1, 5] and ckpt.best_step() == 1

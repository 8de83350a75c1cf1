"""Run checkpoints (experiments/checkpoints.py): bit-exact round trips, verification on restore,
fallback to the previous good step, refusal of non-finite states, retention of last and best."""

from __future__ import annotations

import json
import shutil

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.checkpoints import (
    DAMAGED,
    CheckpointConfigError,
    CheckpointCorruptError,
    RunCheckpointer,
    info_digest,
)
from tests.experiments.tiny import assert_trees_equal, flip_bytes

FP = "f" * 64


def abstract(state):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def make_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"trainable": rng.normal(size=(64,)).astype(np.float32),
            "saved": {"params/classifier/kernel": rng.normal(size=(8, 2)).astype(np.float32),
                      "params/classifier/bias": np.zeros(2, np.float32)},
            "opt": {"count": np.int32(seed), "mu": rng.normal(size=(64,)).astype(np.float32)},
            "step": np.int32(seed)}


# --------------------------------------------------------------------------- round trip

DTYPES = st.sampled_from([np.float32, np.int32, np.uint8, np.float16, np.bool_])


@st.composite
def small_pytrees(draw):
    """Nested dicts of small arrays (finite floats, negative zero and subnormals included)."""
    def leaf():
        dtype = draw(DTYPES)
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))
        elements = (st.floats(width=np.finfo(dtype).bits, allow_nan=False, allow_infinity=False)
                    if np.issubdtype(dtype, np.floating) else None)
        return draw(hnp.arrays(dtype, shape, elements=elements))

    names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)
    tree = draw(st.dictionaries(names, st.just(None), min_size=1, max_size=4))
    out = {}
    for name in tree:
        if draw(st.booleans()):
            out[name] = leaf()
        else:
            out[name] = {k: leaf() for k in draw(st.lists(names, min_size=1, max_size=3, unique=True))}
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(state=small_pytrees(), info=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5),
                                                   max_size=3))
def test_save_restore_is_bit_exact(tmp_path_factory, state, info):
    directory = tmp_path_factory.mktemp("ckpt")
    with RunCheckpointer(directory, config_fingerprint=FP) as ckpt:
        ckpt.save(3, state, info={"payload": info})
    with RunCheckpointer(directory, config_fingerprint=FP) as ckpt:  # a new process, as on resume
        assert ckpt.all_steps() == [3] and ckpt.latest_step() == 3
        restored, restored_info = ckpt.restore(abstract(state), step=3)
        latest, _ = ckpt.restore_latest(abstract(state))
    assert_trees_equal(restored, state)
    assert_trees_equal(latest, state)
    assert restored_info["payload"] == info and restored_info["config_fingerprint"] == FP


# --------------------------------------------------------------------------- damage

@pytest.fixture
def two_steps(tmp_path):
    """A directory with good checkpoints 2 and 4: (directory, {step: state})."""
    states = {2: make_state(2), 4: make_state(4)}
    with RunCheckpointer(tmp_path / "ckpt", config_fingerprint=FP) as ckpt:
        for step, state in states.items():
            ckpt.save(step, state, info={"step": step})
    return tmp_path / "ckpt", states


def falls_back(directory, states, damaged: int, needle: str) -> None:
    """Step ``damaged`` cannot be restored by number; the latest restore says so and returns
    step 2, moving the damaged step aside (its files kept, byte for byte)."""
    warnings = []
    files_before = tree_bytes(directory / str(damaged))
    with RunCheckpointer(directory, config_fingerprint=FP) as ckpt:
        with pytest.raises(CheckpointCorruptError, match=needle):
            ckpt.restore(abstract(states[2]), step=damaged)
        state, info = ckpt.restore_latest(abstract(states[2]), warn=warnings.append)
        assert ckpt.all_steps() == [2]
    assert info["step"] == 2
    assert_trees_equal(state, states[2])
    assert len(warnings) == 1 and f"checkpoint {damaged} in" in warnings[0]
    aside = directory.parent / DAMAGED / str(damaged)
    assert f"moved to {aside}" in warnings[0], warnings
    assert "resumes from the previous checkpoint" in warnings[0], warnings
    assert tree_bytes(aside) == files_before


def tree_bytes(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def array_files(step_dir):
    return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                  key=lambda p: p.stat().st_size)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's loop
def test_flipped_bytes_in_array_data(two_steps):
    directory, states = two_steps
    for path in array_files(directory / "4"):
        flip_bytes(path)
    falls_back(directory, states, 4, "checkpoint 4")


def test_readable_arrays_that_differ_from_their_sha256(two_steps):
    directory, states = two_steps
    shutil.rmtree(directory / "4" / "state")  # step 2's arrays under step 4's JSON: readable, wrong
    shutil.copytree(directory / "2" / "state", directory / "4" / "state")
    falls_back(directory, states, 4, "differ from their recorded sha256")


def test_a_recorded_sha256_that_differs(two_steps):
    directory, states = two_steps
    meta = directory / "4" / "info" / "metadata"
    info = json.loads(meta.read_text())
    info["state_sha256"][0] = "0" * 64
    info["info_sha256"] = info_digest(info)  # the JSON itself verifies: the arrays do not
    meta.write_text(json.dumps(info))
    falls_back(directory, states, 4, "its arrays differ from their recorded sha256")


def test_missing_state_directory(two_steps):
    directory, states = two_steps
    shutil.rmtree(directory / "4" / "state")
    falls_back(directory, states, 4, "arrays cannot be read")


def test_garbage_info_json(two_steps):
    directory, states = two_steps
    (directory / "4" / "info" / "metadata").write_text("{not json")
    falls_back(directory, states, 4, "JSON cannot be read")


@pytest.mark.parametrize("edit", ["a digit", "a key's value"])
def test_a_changed_value_in_the_json_that_still_parses(two_steps, edit):
    """A flipped digit or an edited value in a step's JSON (the data position, the loss window,
    the best metric) keeps it valid JSON; its own sha256 finds it."""
    directory, states = two_steps
    path = directory / "4" / "info" / "metadata"
    text = path.read_text()
    if edit == "a digit":
        assert '"step": 4' in text
        changed = text.replace('"step": 4', '"step": 5')
    else:
        doc = json.loads(text)
        doc["step"] = [4]
        changed = json.dumps(doc)
    json.loads(changed)  # still valid JSON
    path.write_text(changed)
    falls_back(directory, states, 4, "its JSON differs from its recorded sha256")


def test_every_step_damaged_restores_nothing(two_steps):
    directory, states = two_steps
    for step in (2, 4):
        (directory / str(step) / "info" / "metadata").write_text("[]")
    warnings = []
    with RunCheckpointer(directory, config_fingerprint=FP) as ckpt:
        assert ckpt.restore_latest(abstract(states[2]), warn=warnings.append) is None
    assert len(warnings) == 2


def test_an_unreadable_step_is_an_os_error_and_nothing_moves(two_steps, monkeypatch):
    directory, states = two_steps
    import orbax.checkpoint as ocp

    def denied(self, step, *args, **kwargs):
        try:
            raise PermissionError(13, "Permission denied", str(directory / str(step)))
        except PermissionError as e:  # as orbax reports it: wrapped in its own error
            raise ValueError("orbax could not read the step") from e

    monkeypatch.setattr(ocp.CheckpointManager, "restore", denied)
    with RunCheckpointer(directory, config_fingerprint=FP) as ckpt:
        with pytest.raises(OSError, match="checkpoint 4 in .* cannot be read .*Permission denied.*"
                                          "nothing was moved or deleted"):
            ckpt.restore_latest(abstract(states[2]))
        assert ckpt.all_steps() == [2, 4]
    assert not (directory.parent / DAMAGED).exists()


def test_another_configs_directory_is_refused(two_steps):
    directory, states = two_steps
    with RunCheckpointer(directory, config_fingerprint="0" * 64) as ckpt:
        with pytest.raises(CheckpointConfigError, match="another config"):
            ckpt.restore_latest(abstract(states[2]))
        assert ckpt.all_steps() == [2, 4]  # nothing deleted


# --------------------------------------------------------------------------- refusals, retention

def test_non_finite_state_is_refused_at_save(tmp_path):
    state = make_state(1)
    state["saved"]["params/classifier/bias"] = np.array([0.0, np.nan], np.float32)
    with RunCheckpointer(tmp_path / "ckpt", config_fingerprint=FP) as ckpt:
        ckpt.save(1, make_state(1))
        with pytest.raises(FloatingPointError, match="refusing to checkpoint step 2.*classifier/bias"):
            ckpt.save(2, state)
        state["saved"]["params/classifier/bias"] = np.array([np.inf, 0.0], np.float32)
        with pytest.raises(FloatingPointError, match="NaN or inf"):
            ckpt.save(3, state)
        assert ckpt.all_steps() == [1]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1"]  # nothing half-written


def test_options_are_checked():
    with pytest.raises(ValueError, match="best_mode must be 'max' or 'min'"):
        RunCheckpointer("/nonexistent/ckpt", best_metric="accuracy")
    with pytest.raises(ValueError, match="best_mode"):
        RunCheckpointer("/nonexistent/ckpt", best_metric="loss", best_mode="lowest")
    with pytest.raises(ValueError, match="keep_last must be an integer >= 1"):
        RunCheckpointer("/nonexistent/ckpt", keep_last=0)


def test_keeps_the_last_and_the_best_across_processes(tmp_path):
    scores = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4}
    with RunCheckpointer(tmp_path / "c", keep_last=2, best_metric="acc", best_mode="max",
                         config_fingerprint=FP) as ckpt:
        for step, acc in scores.items():
            ckpt.save(step, make_state(step), metrics={"acc": acc})
        assert ckpt.all_steps() == [2, 4, 5]
    with RunCheckpointer(tmp_path / "c", keep_last=2, best_metric="acc", best_mode="max",
                         config_fingerprint=FP) as ckpt:  # a resumed run still knows the best
        ckpt.save(6, make_state(6), metrics={"acc": 0.5})
        ckpt.save(7, make_state(7), metrics={"acc": 0.6})
        assert ckpt.all_steps() == [2, 6, 7]
        state, _ = ckpt.restore(abstract(make_state(0)), step=2)
    assert_trees_equal(state, make_state(2))

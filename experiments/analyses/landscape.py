"""Loss landscape around converged GPart and Uni-LoRA solutions (the paper's figure).

    python -m experiments.analyses.landscape            # trains nothing: reads runs/suite/<run>/best_adapter
    python -m experiments.analyses.landscape --replot   # the figure from the committed JSON
    python -m experiments.analyses.landscape --render   # the README table from it

For each run (default: ``configs/minilm.py:task=rt,method=gpart`` and ``method=unilora``, seed 0,
runs of ``configs/suites/text_methods_default_rates.py``, in ``<runs-dir>/<config name>_s<seed>``)
the adapter's trainable vector ``theta*`` (GPart's theta, Uni-LoRA's theta; d = 23,040
each) is loaded from the run's ``best_adapter`` and the loss is evaluated on the plane

    theta(a, b) = theta* + a * u + b * v,   a, b in [-span, span] (a grid x grid lattice),

with the classifier head held at its trained value. ``u`` and ``v`` are standard normal vectors
of length d (numpy's ``default_rng(direction seed)``: the plot's directions, not a partition)
each rescaled to ``||theta*||``. That is the flat-vector version of Li et al.'s filter
normalisation: GPart and Uni-LoRA train one global vector with no filters or layers in it, so
the whole vector is the one "filter" and each direction gets the solution's norm (a = 1 moves
theta as far again as training did). Loss: mean cross-entropy on a fixed subset of the
validation split (the first ``--examples`` of a fixed permutation, ``experiments.tasks``), no
dropout. The surfaces of ``--directions`` direction seeds are averaged, as in the paper.

Writes ``experiments/results/landscape.json`` (every surface, the average, and summary numbers:
the loss at the centre, the lowest point of the averaged surface and its distance from the
centre, the mean loss on the ring at radius 1 and its spread between opposite quadrants) and
``landscape.png`` (contours side by side, one colour scale).
"""

from __future__ import annotations

import pathlib
import time

import numpy as np

from experiments.analyses import run_analysis
from experiments.suite import DEFAULT_RUNS_DIR

RUNS = ("configs/minilm.py:task=rt,method=gpart", "configs/minilm.py:task=rt,method=unilora")
LABELS = {"gpart": "GPart (isometric)", "unilora": "Uni-LoRA"}


def directions(d: int, norm: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two standard normal vectors of length ``d``, each rescaled to ``norm`` (float64)."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal(d), rng.standard_normal(d)
    return u * (norm / np.linalg.norm(u)), v * (norm / np.linalg.norm(v))


def summarize(axis: np.ndarray, surface: np.ndarray) -> dict:
    """Numbers that say how centred and how even a surface is (``surface[i, j]`` at
    ``a = axis[j]``, ``b = axis[i]``)."""
    a, b = np.meshgrid(axis, axis)
    r = np.hypot(a, b)
    centre = surface[len(axis) // 2, len(axis) // 2]
    i, j = np.unravel_index(np.argmin(surface), surface.shape)
    ring = np.abs(r - 1.0) <= (axis[1] - axis[0]) / 2 + 1e-9
    quadrants = {name: float(surface[ring & mask].mean()) for name, mask in
                 (("++", (a > 0) & (b > 0)), ("--", (a < 0) & (b < 0)),
                  ("+-", (a > 0) & (b < 0)), ("-+", (a < 0) & (b > 0)))}
    return {"centre_loss": float(centre), "min_loss": float(surface[i, j]),
            "argmin": [float(axis[j]), float(axis[i])], "argmin_radius": float(r[i, j]),
            "ring1_mean_loss": float(surface[ring].mean()), "ring1_quadrant_loss": quadrants,
            "ring1_quadrant_spread": max(quadrants.values()) - min(quadrants.values()),
            "corner_loss": float(np.mean([surface[0, 0], surface[0, -1], surface[-1, 0], surface[-1, -1]])),
            "max_loss": float(surface.max())}


def run_landscape(config: str, seed: int, runs_dir: pathlib.Path, grid: int, span: float,
                  direction_seeds: list[int], examples: int, overrides: tuple[str, ...] = ()) -> dict:
    """The surfaces of the run of ``config`` (``path:arg``) and ``seed`` in
    ``runs_dir/<config name>_s<seed>`` (module docstring). ``overrides``: extra
    ``--config.KEY=VALUE`` of the run's config (as it was trained; the suite's runs need none)."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    import gpart_jax as gj
    from experiments import workdir
    from experiments.config import load_config
    from experiments.tasks import build_task

    name = load_config(config, list(overrides)).name
    path = pathlib.Path(runs_dir) / f"{name}_s{seed}"
    cfg = load_config(config, [*overrides, f"--config.seed={seed}", f"--config.workdir={path}",
                               f"--config.task.validation_examples={examples}"])
    task = build_task(cfg)
    loaded = gj.load_adapter(path / workdir.BEST_ADAPTER, method=task.method)
    flat, unravel = ravel_pytree(loaded.trainable)
    theta = np.asarray(flat, np.float64)
    saved = loaded.saved
    keys = task.device_keys()
    batches = [{k: jnp.asarray(np.asarray(b[k])) for k in keys} for b in task.splits["validation"].epoch(0)]

    @jax.jit
    def batch_loss(vec, batch):
        params = gj.full_params(task.method, unravel(vec), task.base, saved)
        out = task.eval_outputs(params, batch)
        correct = jnp.sum((out["prediction"] == out["label"]) * out["weight"])
        return out["loss"].sum(), out["weight"].sum(), correct

    def evaluate(vec: np.ndarray) -> tuple[float, float]:
        vec = jnp.asarray(vec, jnp.float32)
        parts = [batch_loss(vec, b) for b in batches]
        loss, weight, correct = (sum(float(p[k]) for p in parts) for k in range(3))
        return loss / weight, correct / weight

    axis = np.linspace(-span, span, grid)
    norm = float(np.linalg.norm(theta))
    surfaces, accuracies = [], []
    t0 = time.perf_counter()
    for ds in direction_seeds:
        u, v = directions(theta.size, norm, ds)
        loss = np.zeros((grid, grid))
        acc = np.zeros((grid, grid))
        for i, b in enumerate(axis):
            for j, a in enumerate(axis):
                loss[i, j], acc[i, j] = evaluate(theta + a * u + b * v)
        surfaces.append(loss)
        accuracies.append(acc)
        print(f"{name}: direction seed {ds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    mean = np.mean(surfaces, axis=0)
    return {"run": f"{name}_s{seed}", "workdir": str(path), "method": cfg.method.name,
            "d": int(theta.size), "theta_norm": norm, "eval_examples": task.splits["validation"].num_examples,
            "seconds": round(time.perf_counter() - t0, 1),
            "surfaces": [s.tolist() for s in surfaces], "accuracy": [x.tolist() for x in accuracies],
            "mean_surface": mean.tolist(), "mean_accuracy": np.mean(accuracies, axis=0).tolist(),
            "summary": summarize(axis, mean),
            "summary_per_seed": [summarize(axis, s) for s in surfaces]}


def plot(doc: dict, path: pathlib.Path) -> None:
    """Contours of each run's mean surface, side by side on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = np.asarray(doc["axis"])
    runs = doc["runs"]
    surfaces = [np.asarray(r["mean_surface"]) for r in runs]
    low = min(s.min() for s in surfaces)
    high = max(s.max() for s in surfaces)
    levels = np.linspace(low, high, 21)
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs) + 1, 4.6), squeeze=False)
    for ax, run, surface in zip(axes[0], runs, surfaces, strict=True):
        cs = ax.contourf(axis, axis, surface, levels=levels, cmap="viridis")
        ax.contour(axis, axis, surface, levels=levels, colors="k", linewidths=0.3)
        s = run["summary"]
        ax.plot([0], [0], "w+", markersize=12, mew=2, label="converged solution")
        ax.plot([s["argmin"][0]], [s["argmin"][1]], "rx", markersize=9, mew=2, label="lowest grid point")
        ax.set_title(f"{LABELS.get(run['method'], run['method'])}, d={run['d']:,}\n"
                     f"centre {s['centre_loss']:.3f}, ring r=1 {s['ring1_mean_loss']:.3f}, "
                     f"max {s['max_loss']:.2f}", fontsize=9)
        ax.set_xlabel("a (direction u, units of ||theta*||)")
        if ax is axes[0][0]:
            ax.set_ylabel("b (direction v, units of ||theta*||)")
        ax.set_aspect("equal")
        ax.legend(loc="lower left", fontsize=7)
    fig.colorbar(cs, ax=axes[0].tolist(), label="validation cross-entropy (mean of direction seeds)",
                 format="%.3f")
    fig.suptitle(f"Loss around the converged adapter, MiniLM-L6 on Rotten Tomatoes "
                 f"({runs[0]['eval_examples']} validation examples, {doc['grid']}x{doc['grid']} grid, "
                 f"{len(doc['direction_seeds'])} direction seeds)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def render(doc: dict) -> str:
    """Markdown table of the summary numbers (the README and the results README)."""
    lines = ["| adapter | d | ‖θ*‖ | loss at θ* | lowest grid loss (at a, b) | mean loss on ring r=1 | "
             "rise from θ* to ring r=1 | spread of ring r=1 between quadrants | mean loss at the 4 corners | "
             "max loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        s = r["summary"]
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['d']:,} | {r['theta_norm']:.3f} | "
                     f"{s['centre_loss']:.3f} | {s['min_loss']:.3f} "
                     f"({s['argmin'][0]:+.2f}, {s['argmin'][1]:+.2f}) | {s['ring1_mean_loss']:.3f} | "
                     f"{s['ring1_mean_loss'] - s['centre_loss']:+.3f} | "
                     f"{s['ring1_quadrant_spread']:.3f} | {s['corner_loss']:.3f} | "
                     f"{s['max_loss']:.3f} |")
    return "\n".join(lines)


def measure(args) -> dict:
    """The JSON of ``render`` and ``plot``: every run's surfaces (``run_landscape``)."""
    if args.grid < 3 or args.grid % 2 == 0:
        raise SystemExit(f"--grid must be odd and >= 3 (the solution sits on the centre point); "
                         f"got {args.grid}")
    runs = [run_landscape(config, args.seed, pathlib.Path(args.runs_dir), args.grid, args.span,
                          args.direction_seeds, args.examples) for config in args.runs]
    return {"command": args.command, "grid": args.grid, "span": args.span,
            "axis": np.linspace(-args.span, args.span, args.grid).tolist(),
            "direction_seeds": args.direction_seeds,
            "normalisation": "each direction rescaled to ||theta*|| (the whole flat vector is one filter)",
            "head": "held at its trained value", "runs": runs}


def arguments(parser) -> None:
    parser.add_argument("--runs", nargs="+", default=list(RUNS),
                        help="the runs' configs (path:arg, as --config takes them)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' training seed")
    parser.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="parent of the runs' workdirs")
    parser.add_argument("--grid", type=int, default=15,
                        help="points per axis (odd: the centre is on the grid)")
    parser.add_argument("--span", type=float, default=1.0)
    parser.add_argument("--direction-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--examples", type=int, default=128, help="fixed validation subset")


def main(argv=None) -> int:
    return run_analysis("landscape", measure, render, plot, description=__doc__,
                        arguments=arguments, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

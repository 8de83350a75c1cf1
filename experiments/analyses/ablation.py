"""The isometry ablation: GPart with and without 1/sqrt(n_j), scores and ||delta w||^2 / ||theta||^2.

    python -m experiments suite configs/suites/isometry_ablation.py   # the 12 runs (resumable)
    python -m experiments.analyses.ablation            # this: ablation.json, .png, README table
    python -m experiments.analyses.ablation --replot   # the figure from the JSON

For every finished run of ``configs/suites/isometry_ablation.py`` (GPart with and without
``1/sqrt(n_j)``, under AdamW's decoupled decay and under an L2 penalty on theta; three seeds) it
loads the best adapter and measures, in float64, ``||theta||^2`` and ``||delta w||^2`` with
``delta w = P theta`` computed by the library (``GPart.deltas``, float32, every adapted weight),
and their ratio. For
the isometric map the ratio is 1 (up to float32 rounding of delta w); without the scale it is
``sum_j n_j theta_j^2 / sum_j theta_j^2``, about the mean group size ``N / d`` (76.8 here) when
theta is unrelated to the group sizes. That ratio is the factor by which an L2 penalty on theta
under-weights the update in weight space (``gpart_jax/optim.py``), and the factor by which the
same step on theta moves the weights further (squared). Test scores come from the runs'
``results.json`` through ``experiments.report``.
"""

from __future__ import annotations

import pathlib
import statistics

import numpy as np

from experiments.analyses import run_analysis
from experiments.suite import DEFAULT_RUNS_DIR

SUITE = pathlib.Path("configs") / "suites" / "isometry_ablation.py"
VARIANTS = (("gpart", "decoupled"), ("gpart-noniso", "decoupled"), ("gpart", "l2"), ("gpart-noniso", "l2"))
LABELS = {("gpart", "decoupled"): "isometric, AdamW decay",
          ("gpart-noniso", "decoupled"): "non-isometric, AdamW decay",
          ("gpart", "l2"): "isometric, L2 penalty", ("gpart-noniso", "l2"): "non-isometric, L2 penalty"}


def norms(gpart, theta) -> dict:
    """``||theta||^2``, ``||P theta||^2`` (float64 sums of the float32 deltas), their ratio, and the
    group-size prediction ``sum n_j theta_j^2 / sum theta_j^2`` with the isometric scale undone."""
    theta64 = np.asarray(theta, np.float64)
    delta_sq = sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in gpart.deltas(theta))
    sizes = np.asarray(gpart.group_sizes, np.float64)
    theta_sq = float(np.sum(theta64 ** 2))
    return {"theta_sq": theta_sq, "delta_sq": delta_sq, "ratio": delta_sq / theta_sq,
            "size_weighted_ratio": float(np.sum(sizes * theta64 ** 2) / theta_sq),
            "mean_group_size": float(sizes.mean())}


def measure(runs_dir: pathlib.Path = DEFAULT_RUNS_DIR, command: str = "") -> dict:
    """The JSON of ``render``: per run its scores and norms, per variant their mean and std."""
    import jax

    import gpart_jax as gj
    from experiments import workdir
    from experiments.report import collect
    from experiments.suite import expand, load_suite
    from experiments.tasks import abstract_params, build_method

    doc = collect(SUITE, runs_dir)
    runs = {r.name: r for r in expand(load_suite(SUITE), runs_dir)}
    methods: dict = {}
    rows = []
    for record in doc["runs"]:
        run = runs[record["name"]]
        cfg = run.load()
        key = (cfg.method.name, cfg.optim.regularization)
        row = {"run": run.name, "seed": run.seed, "method": key[0], "regularization": key[1],
               "status": record["status"], "test": record.get("test"), "validation": record.get("validation")}
        if record["status"] == "done":
            if key[0] not in methods:  # the partition needs the shapes only
                methods[key[0]] = build_method(cfg, abstract_params(cfg)[1])
            method = methods[key[0]]
            loaded = gj.load_adapter(run.workdir / workdir.BEST_ADAPTER, method=method)
            row |= norms(method, jax.device_get(loaded.trainable))
        rows.append(row)
    cells = []
    for key in VARIANTS:
        done = [r for r in rows if (r["method"], r["regularization"]) == key and r["status"] == "done"]
        cell = {"method": key[0], "regularization": key[1], "label": LABELS[key], "n": len(done),
                "expected": sum((r["method"], r["regularization"]) == key for r in rows)}
        for field in ("test", "validation", "ratio", "theta_sq", "delta_sq"):
            values = [r[field] for r in done]
            cell[field] = {"mean": statistics.fmean(values) if values else None,
                           "std": statistics.stdev(values) if len(values) >= 2 else None, "values": values}
        cells.append(cell)
    return {"command": command, "suite": str(SUITE),
            "metric": "accuracy (Rotten Tomatoes test, at the best validation step)",
            "l2": "0.1 ||theta||^2 added to the loss (gradient through Adam)",
            "decoupled": "theta <- theta - lr 0.1 theta after each Adam step",
            "runs": rows, "cells": cells}


def _fmt(stat: dict, scale: float = 1.0, spec: str = ".1f") -> str:
    if stat["mean"] is None:
        return "pending"
    text = f"{scale * stat['mean']:{spec}}"
    return text + (f" +- {scale * stat['std']:{spec}}" if stat["std"] is not None else " (1 seed)")


def render(doc: dict) -> str:
    lines = ["| GPart variant (d = 23,040) | seeds | test accuracy x 100 | validation x 100 | "
             "‖θ‖² | ‖Δw‖² | measured ‖Δw‖² / ‖θ‖² |", "|---|---|---|---|---|---|---|"]
    for c in doc["cells"]:
        lines.append(f"| {c['label']} | {c['n']}/{c['expected']} | {_fmt(c['test'], 100)} | "
                     f"{_fmt(c['validation'], 100)} | {_fmt(c['theta_sq'], 1, '.3g')} | "
                     f"{_fmt(c['delta_sq'], 1, '.3g')} | "
                     f"{_fmt(c['ratio'], 1, '.3f')} |")
    return "\n".join(lines)


def plot(doc: dict, path: pathlib.Path) -> bool:
    """Test accuracy per variant and the squared norms; False (nothing drawn) when no run is done."""
    cells = [c for c in doc["cells"] if c["n"]]
    if not cells:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = np.arange(len(cells))
    colors = ["C0" if c["method"] == "gpart" else "C1" for c in cells]
    means = [100 * c["test"]["mean"] for c in cells]
    errs = [100 * (c["test"]["std"] or 0.0) for c in cells]
    ax1.bar(xs, means, yerr=errs, capsize=4, color=colors)
    for x, c in zip(xs, cells, strict=True):
        ax1.plot([x] * c["n"], [100 * v for v in c["test"]["values"]], "k.", markersize=5)
    low = min(min(100 * v for v in c["test"]["values"]) for c in cells)
    ax1.set_ylim(max(0, low - 5), min(100, max(m + e for m, e in zip(means, errs, strict=True)) + 2))
    ax1.set_xticks(xs, [c["label"].replace(", ", "\n") for c in cells], fontsize=8)
    ax1.set_ylabel("test accuracy x 100 (bars: mean +- std; dots: seeds)")
    ax1.set_title("Rotten Tomatoes, MiniLM-L6, d = 23,040")
    for x, c in zip(xs, cells, strict=True):
        ax2.bar(x - 0.2, c["theta_sq"]["mean"], 0.4, color="C2", label="||theta||^2" if x == 0 else None)
        ax2.bar(x + 0.2, c["delta_sq"]["mean"], 0.4, color="C3", label="||delta w||^2" if x == 0 else None)
        top = max(c["theta_sq"]["mean"], c["delta_sq"]["mean"])
        ax2.text(x, top * 1.15, f"ratio\n{c['ratio']['mean']:.2f}", ha="center", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xticks(xs, [c["label"].replace(", ", "\n") for c in cells], fontsize=8)
    ax2.set_ylabel("squared norm at the best step (mean over seeds, log scale)")
    ax2.set_title("trained theta and the weight update it makes")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_ylim(top=ax2.get_ylim()[1] * 6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    return run_analysis(
        "ablation", lambda args: measure(pathlib.Path(args.runs_dir), args.command), render, plot,
        description=__doc__, argv=argv,
        arguments=lambda p: p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR),
                                           help="parent of the suite's workdirs"))


if __name__ == "__main__":
    raise SystemExit(main())

"""The README's main-job table, from the runs' own result files.

    bash experiments/main.sh                                       # runs/minilm_rt_gpart/
    bash experiments/main.sh configs/minilm.py:task=rt,method=head_only   # runs/minilm_rt_head_only/
    python -m experiments.analyses.main_job --record               # copies both runs' results here
    python -m experiments.analyses.main_job                        # prints the table

``experiments/main.sh`` leaves tracked files alone: a run writes ``results.json`` and the
command's wall times (``command_timing.json``) into its workdir. ``--record`` copies them to
``experiments/results/main_job/<config name>.json`` and ``<config name>.command_timing.json``
(``experiments.workdir.write_json``, after checking that it is a finished run of that config);
``render`` reads only those committed files. Paths are relative to the repository root.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from experiments import workdir
from experiments.analyses import RESULTS as RESULTS_DIR
from experiments.analyses import read_doc

RESULTS = RESULTS_DIR / "main_job"
RUNS = pathlib.Path("runs")
DEFAULT = "minilm_rt_gpart"
CONTEXT = ("minilm_rt_head_only",)
CONFIGS = {"minilm_rt_gpart": "configs/minilm.py",  # run name -> the --config that made it
           "minilm_rt_head_only": "configs/minilm.py:task=rt,method=head_only"}


def _row(name: str, doc: dict) -> str:
    c, v, t = doc["trainable"], doc["validation"], doc["test"]
    what = f"GPart d = {doc['config']['method']['d']:,}" if c["method"] == "gpart" else c["method"]
    return (f"| `{CONFIGS.get(name, name)}` | {what} | {c['total_trainable']:,} | {doc['steps']} | "
            f"{v['accuracy']:.4f} | {t['accuracy']:.4f} | {t['mcc']:.4f} | {doc['train_time_s']:.0f} s |")


def render(doc: dict, others: tuple[str, ...] = CONTEXT) -> str:
    """Markdown: one row per run (``doc`` is the default run's results), then the wall times."""
    lines = ["| config | method | trainable (with head) | steps | validation accuracy | test accuracy | "
             "test MCC | training steps time |", "|---|---|---|---|---|---|---|---|",
             _row(doc["config"]["name"], doc)]
    for name in others:
        lines.append(_row(name, read_doc(RESULTS / f"{name}.json")))
    t = workdir.read_json(RESULTS / f"{doc['config']['name']}.command_timing.json")
    if t is not None:
        lines += ["", f"Wall time of `bash experiments/main.sh` on {t['cpu_count']} CPU cores: install "
                      f"{t['install_s']} s (fresh virtual environment, pip's download cache warm), "
                      f"`python -m experiments train` "
                      f"{t['train_command_s']} s (model and data loading, compilation, {doc['evaluations']} "
                      f"validation passes and the test pass included)."]
    return "\n".join(lines)


def record(names: tuple[str, ...], runs: pathlib.Path = RUNS,
           results_dir: pathlib.Path = RESULTS) -> list[pathlib.Path]:
    """Copy each finished run ``runs/<name>`` (results and command timing) into ``results_dir``."""
    written = []
    for name in names:
        results = runs / name / workdir.RESULTS
        doc = workdir.read_json(results)
        if doc is None:
            raise SystemExit(f"main_job --record: no finished run at {results}; run bash "
                             f"experiments/main.sh with the config named {name} first")
        if doc.get("config", {}).get("name") != name or "test" not in doc:
            raise SystemExit(f"main_job --record: {results} is not a finished run of the config "
                             f"named {name}")
        results_dir.mkdir(parents=True, exist_ok=True)
        workdir.write_json(results_dir / f"{name}.json", doc)
        written.append(results_dir / f"{name}.json")
        timing = workdir.read_json(runs / name / "command_timing.json")
        if timing is not None:
            workdir.write_json(results_dir / f"{name}.command_timing.json", timing)
            written.append(results_dir / f"{name}.command_timing.json")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.analyses.main_job",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true",
                        help=f"copy the finished runs' results into {RESULTS}/")
    args = parser.parse_args(argv)
    if args.record:
        for path in record((DEFAULT, *CONTEXT)):
            print(f"wrote {path}", file=sys.stderr)
    print(render(read_doc(RESULTS / f"{DEFAULT}.json")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

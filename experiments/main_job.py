"""The README's main-job table, from the runs' own result files.

    bash experiments/main.sh                                  # runs/minilm_rt_gpart/
    bash experiments/main.sh configs/minilm_rt_head_only.py   # runs/minilm_rt_head_only/
    python experiments/main_job.py --record                   # copies both runs' results here
    python experiments/main_job.py                            # prints the table

``experiments/main.sh`` leaves tracked files alone: a run writes ``results.json`` and the
command's wall times (``command_timing.json``) into its workdir. ``--record`` copies them to
``experiments/results/main_job/<config>.json`` and ``<config>.command_timing.json`` (each through a
temporary file, after checking that it is a finished run of that config); ``render`` reads only
those committed files.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).parent.parent
RESULTS = ROOT / "experiments" / "results" / "main_job"
DEFAULT = "minilm_rt_gpart"
CONTEXT = ("minilm_rt_head_only",)


def _row(name: str, doc: dict) -> str:
    c, v, t = doc["trainable"], doc["validation"], doc["test"]
    what = f"GPart d = {doc['config']['method']['d']:,}" if c["method"] == "gpart" else c["method"]
    return (f"| `configs/{name}.py` | {what} | {c['total_trainable']:,} | {doc['steps']} | "
            f"{v['accuracy']:.4f} | {t['accuracy']:.4f} | {t['mcc']:.4f} | {doc['train_time_s']:.0f} s |")


def render(doc: dict, others: tuple[str, ...] = CONTEXT) -> str:
    """Markdown: one row per run (``doc`` is the default run's results), then the wall times."""
    lines = ["| config | method | trainable (with head) | steps | validation accuracy | test accuracy | "
             "test MCC | training steps time |", "|---|---|---|---|---|---|---|---|",
             _row(doc["config"]["name"], doc)]
    for name in others:
        lines.append(_row(name, json.loads((RESULTS / f"{name}.json").read_text())))
    timing = RESULTS / f"{doc['config']['name']}.command_timing.json"
    if timing.exists():
        t = json.loads(timing.read_text())
        lines += ["", f"Wall time of `bash experiments/main.sh` on {t['cpu_count']} CPU cores: install "
                      f"{t['install_s']} s (fresh virtual environment, pip's download cache warm), "
                      f"`gpart-jax train` "
                      f"{t['train_command_s']} s (model and data loading, compilation, {doc['evaluations']} "
                      f"validation passes and the test pass included)."]
    return "\n".join(lines)


def _copy_json(source: pathlib.Path, target: pathlib.Path) -> None:
    """Write ``source``'s JSON to ``target`` through a temporary sibling (a kill leaves the old file)."""
    text = json.dumps(json.loads(source.read_text()), indent=1) + "\n"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def record(names: tuple[str, ...], runs: pathlib.Path = ROOT / "runs",
           results_dir: pathlib.Path = RESULTS) -> list[pathlib.Path]:
    """Copy each finished run ``runs/<name>`` (results and command timing) into ``results_dir``."""
    written = []
    for name in names:
        results = runs / name / "results.json"
        try:
            doc = json.loads(results.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"main_job --record: no finished run at {results} ({e}); run "
                             f"bash experiments/main.sh configs/{name}.py first") from None
        if doc.get("config", {}).get("name") != name or "test" not in doc:
            raise SystemExit(f"main_job --record: {results} is not a finished run of configs/{name}.py")
        results_dir.mkdir(parents=True, exist_ok=True)
        _copy_json(results, results_dir / f"{name}.json")
        written.append(results_dir / f"{name}.json")
        timing = runs / name / "command_timing.json"
        if timing.exists():
            _copy_json(timing, results_dir / f"{name}.command_timing.json")
            written.append(results_dir / f"{name}.command_timing.json")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true",
                        help="copy the finished runs' results into experiments/results/main_job/")
    args = parser.parse_args(argv)
    if args.record:
        for path in record((DEFAULT, *CONTEXT)):
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    print(render(json.loads((RESULTS / f"{DEFAULT}.json").read_text())))


if __name__ == "__main__":
    main()

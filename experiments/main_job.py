"""The README's main-job table, from the runs' own result files.

    bash experiments/main.sh                                  # writes main_job/minilm_rt_gpart.json
    bash experiments/main.sh configs/minilm_rt_head_only.py   # writes main_job/minilm_rt_head_only.json
    python experiments/main_job.py                            # prints the table

``experiments/main.sh`` copies each run's ``results.json`` to ``experiments/results/main_job/`` with
the wall times of its install and training command (``<config>.timing.json``); ``render`` reads
only those files.
"""

from __future__ import annotations

import json
import pathlib

RESULTS = pathlib.Path(__file__).parent / "results" / "main_job"
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
    timing = RESULTS / f"{doc['config']['name']}.timing.json"
    if timing.exists():
        t = json.loads(timing.read_text())
        lines += ["", f"Wall time of `bash experiments/main.sh` on {t['cpu_count']} CPU cores: install "
                      f"{t['install_s']} s (fresh virtual environment, pip's download cache warm), "
                      f"`gpart-jax train` "
                      f"{t['train_command_s']} s (model and data loading, compilation, {doc['evaluations']} "
                      f"validation passes and the test pass included)."]
    return "\n".join(lines)


def main() -> None:
    print(render(json.loads((RESULTS / f"{DEFAULT}.json").read_text())))


if __name__ == "__main__":
    main()

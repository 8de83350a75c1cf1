"""SmolLM2-135M on GSM-symbolic, scored on GSM8K, next to the untuned model.

    python -m experiments suite configs/suites/smollm2_gsm_cpu.py      # GPart and Uni-LoRA (resumable)
    python -m experiments eval --config configs/smollm2_gsm.py:scale=cpu,method=gpart --untuned \\
        --split test --out experiments/results/gsm_cpu_untuned.json
    python -m experiments eval --config configs/smollm2_gsm.py:scale=cpu,method=gpart --untuned \\
        --split validation --out experiments/results/gsm_cpu_untuned_validation.json
    python -m experiments.analyses.gsm            # this: experiments/results/gsm.json, README table
    python -m experiments.analyses.gsm --render   # the table from the JSON

One row per finished run of the suite (from its ``results.json``: the best validation step's
held-out GSM-symbolic answer loss, then GSM8K test answer loss, exact match and last-number
match of greedy generations) and one for the untuned model (the two ``eval --untuned`` files,
which must be of the same data cut as the runs: checked). Exact match reads the number after
``####``, the format the fine-tuning data teaches; the untuned instruct model was never taught
it, so the last-number match (the last number anywhere in the generation) is its fairer score.
``render(doc)`` returns the markdown table (``experiments.analyses.render_readme``).
"""

from __future__ import annotations

import json
import pathlib

from experiments import workdir
from experiments.analyses import RESULTS, run_analysis
from experiments.suite import DEFAULT_RUNS_DIR, suite_name

SUITE = pathlib.Path("configs") / "suites" / "smollm2_gsm_cpu.py"
UNTUNED = {"test": RESULTS / "gsm_cpu_untuned.json",
           "validation": RESULTS / "gsm_cpu_untuned_validation.json"}

# The data cut every row must share: what was trained on and what was scored.
CUT_KEYS = ("dataset", "test_dataset", "train_examples", "validation_examples", "test_examples",
            "max_length", "max_new_tokens")


def _cut(task_cfg: dict) -> dict:
    return {k: task_cfg.get(k) for k in CUT_KEYS}


def _row(label: str, trainable: int | None, validation: dict, test: dict, **extra) -> dict:
    return {"method": label, "trainable": trainable, "validation_loss": validation.get("loss"),
            "test_loss": test.get("loss"), "exact_match": test.get("exact_match"),
            "last_number_match": test.get("last_number_match"), "generated": test.get("generated"),
            "test_examples": test.get("examples"), "sample": test.get("sample"), **extra}


def collect(runs_dir: pathlib.Path = DEFAULT_RUNS_DIR, untuned: dict | None = None) -> dict:
    """The JSON of ``render``: a row per finished run, then the untuned model; runs not done are
    listed.

    Raises:
        ValueError: an untuned file holds another split, or was scored on another data cut.
    """
    from experiments.config import load_config
    from experiments.report import collect as collect_suite

    untuned = UNTUNED if untuned is None else untuned
    suite = collect_suite(SUITE, runs_dir)
    cuts = {json.dumps(_cut(load_config(r["config"], r["overrides"]).task.to_dict()), sort_keys=True)
            for r in suite["runs"]}
    rows = []
    for r in suite["runs"]:
        if r["status"] == "done":
            res = workdir.read_json(pathlib.Path(r["workdir"]) / workdir.RESULTS)
            rows.append(_row(r["method_label"], r["trainable"], res["validation"], res["test"],
                             seed=r["seed"], steps=res.get("steps"), train_time_s=res.get("train_time_s")))
    evals = {split: json.loads(p.read_text()) for split, p in untuned.items() if p.exists()}
    for split, ev in evals.items():
        if ev["split"] != split:
            raise ValueError(f"{untuned[split]} holds the {ev['split']} split, not {split}")
        cut = json.dumps(_cut(ev["config"]["task"]), sort_keys=True)
        if cut not in cuts:
            raise ValueError(f"{untuned[split]} was scored on another data cut than the suite's runs "
                             f"({cut} vs {sorted(cuts)}); rerun its eval command (module docstring)")
    if evals:
        rows.append(_row("untuned SmolLM2-135M-Instruct", 0, evals.get("validation", {}),
                         evals.get("test", {})))
    return {"suite": suite_name(SUITE), "cut": json.loads(next(iter(cuts))) if len(cuts) == 1 else None,
            "rows": rows,
            "not_done": {r["name"]: r["status"] for r in suite["runs"] if r["status"] != "done"},
            "untuned_files": {split: p.name for split, p in untuned.items() if p.exists()}}


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def render(doc: dict) -> str:
    """Markdown table of ``collect``'s JSON (losses are means per answer token; matches x 100)."""
    lines = ["| model | trainable | GSM-symbolic held-out answer loss | GSM8K test answer loss | "
             "GSM8K exact match (after ####) | GSM8K last-number match | problems generated |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['method']} | {r['trainable']:,} | {_num(r['validation_loss'], '.3f')} | "
                     f"{_num(r['test_loss'], '.3f')} | {_pct(r['exact_match'])} | "
                     f"{_pct(r['last_number_match'])} | {r['generated'] or '-'} |")
    if doc["not_done"]:
        lines += ["", "Not done yet: " + ", ".join(f"{k} ({v})" for k, v in doc["not_done"].items()) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_analysis(
        "gsm", lambda args: collect(pathlib.Path(args.runs_dir)), render, description=__doc__,
        arguments=lambda p: p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR),
                                           help="parent of the suite's workdirs"), argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())

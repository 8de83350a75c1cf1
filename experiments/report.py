"""Report of a suite: mean and std over seeds of each method on each task, from the runs' own results.

    python -m experiments report configs/suites/text_methods_default_rates.py [--runs-dir runs/suite] \
        [--out experiments/results]

Reads the ``results.json`` of every run of the suite (``experiments.suite``; only a workdir whose
results carry the fingerprint of the run's config counts) and writes

* ``<out>/suite_<name>.json``: every run (status, seed, test and validation metric at the best
  validation step, trainable counts) and per (task, method) cell: ``n`` finished seeds of
  ``expected``, ``mean`` and ``std`` (sample std, ddof 1; ``null`` below two seeds) of the test
  metric, the validation mean, trainable counts, the pending runs; the data and training cut of
  each task read from the configs (and whether it is identical for every method); the paper's
  RoBERTa GLUE numbers, for context only;
* the suite's block in ``<out>/README.md`` (``<!-- suite_<name>:start -->`` ... ``end``; the file
  is created if missing and other blocks are kept): one table per task, metric x 100;
* ``<out>/suite_<name>.png``: bars of mean +- std per method and task, only when some run is done
  (a stale chart of a suite with no results is removed).

A run without results is "pending" (or "partial", "conflict", or "failed" when its last event in
the suite log is a failure): nothing is filled in for it.
``render(doc)`` returns the markdown of a suite JSON (as the other scripts' ``render``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import sys

from experiments import workdir
from experiments.config import ConfigError, fingerprint
from experiments.suite import DEFAULT_RUNS_DIR, Run, expand, load_suite, suite_name

OUT = pathlib.Path("experiments") / "results"  # relative to the repository root
# The paper's averages with trainable counts, as summarised in shared/seed/gpart_article.md: GLUE
# (RoBERTa, 6 tasks) beside the text tasks, the eight vision datasets (ViT) beside the image tasks.
# Another model and benchmark: context only, not comparable numbers.
PAPER = {
    "source": "GPart paper, GLUE average (RoBERTa-base / RoBERTa-large) and vision average over eight "
              "datasets (ViT-Base / ViT-Large), as quoted in gpart_article.md",
    "roberta_base": {"gpart": (83.7, "23K"), "gpart-noniso": (80.7, "23K"), "unilora": (83.0, "23K"),
                     "lora": (83.5, "294K"), "vera": (83.4, "43K"), "full": (83.8, None)},
    "roberta_large": {"gpart": (86.3, "23K"), "gpart-noniso": (84.8, "23K"), "unilora": (85.9, "23K"),
                      "lora": (86.7, "786K"), "full": (86.9, None)},
    "vit_base": {"gpart": (86.19, "72K"), "unilora": (85.15, None), "full": (86.49, None)},
    "vit_large": {"gpart": (88.14, "144K"), "unilora": (88.00, None), "full": (90.20, None)},
}
# Which paper columns sit beside a model's table.
PAPER_COLUMNS = {"vit": (("vit_base", "ViT-Base, 8 vision datasets avg"),
                         ("vit_large", "ViT-Large, 8 vision datasets avg"))}
TEXT_COLUMNS = (("roberta_base", "RoBERTa-base GLUE avg"), ("roberta_large", "RoBERTa-large GLUE avg"))
MODEL_LABELS = {"minilm": "MiniLM-L6", "vit": "ViT pretrained on Fashion-MNIST", "smollm2": "SmolLM2-135M"}
METHOD_ORDER = ("gpart", "unilora", "lora", "vera", "gpart-noniso", "head-only", "full")
METHOD_LABELS = {"gpart": "GPart", "unilora": "Uni-LoRA", "lora": "LoRA", "vera": "VeRA",
                 "gpart-noniso": "GPart non-isometric", "head-only": "head only", "full": "full fine-tuning"}
TASK_LABELS = {"rotten_tomatoes": "Rotten Tomatoes", "r8": "Reuters R8", "mnist5k": "MNIST-5k",
               "digits": "digits (8x8)",
               "20newsgroups": "20 Newsgroups", "election_tweets": "election tweets"}
# Config keys that cut the data or the training; the report says whether each is the same for
# every method of a task.
CUT_KEYS = ("task.train_examples", "task.validation_examples", "task.test_examples", "task.max_length",
            "train.epochs", "train.steps", "train.batch_size", "train.grad_accum", "model.num_layers",
            "compute_dtype", "optim.head_lr", "optim.warmup_frac", "optim.weight_decay")


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def method_label(method_cfg: dict, optim_cfg: dict | None = None) -> str:
    """``GPart d=23,040``, ``LoRA r=8``, ... from a config's ``method`` dict; ``, L2 penalty`` when
    the config's ``optim`` regularizes with a penalty instead of AdamW's decay."""
    name = method_cfg["name"]
    label = METHOD_LABELS.get(name, name)
    opts = []
    if "d" in method_cfg:
        opts.append(f"d={method_cfg['d']:,}")
    if name in ("lora", "vera") and "r" in method_cfg:
        opts.append(f"r={method_cfg['r']}")
    if method_cfg.get("scheme") == "balanced":
        opts.append("balanced")
    if optim_cfg and optim_cfg.get("regularization") == "l2":
        opts.append("L2 penalty")
    return f"{label} {', '.join(opts)}".strip()


def last_events(log_path: pathlib.Path) -> dict[str, dict]:
    """The last record per run of a suite log (``<runs-dir>/<suite>.jsonl``); empty if none."""
    events: dict[str, dict] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            events[record.get("run")] = record
    return events


def _run_record(run: Run, last_event: dict | None = None) -> dict:
    """A run's status and, when done, its numbers (from its results.json, nothing else). A run
    not done whose last suite log event is a failure is ``failed``."""
    cfg = run.load()
    doc = cfg.to_dict()
    status = workdir.status(run.workdir, fingerprint(cfg))
    if status != "done" and last_event and last_event.get("event") == "failed":
        status = "failed"
    record = {"name": run.name, "config": run.config, "seed": run.seed, "workdir": str(run.workdir),
              "task": doc["task"]["dataset"], "model": doc["model"]["name"], "method": doc["method"]["name"],
              "regularization": doc["optim"]["regularization"],
              # a variant the paper's rows do not describe: no paper number beside it
              "paper_variant": (doc["optim"]["regularization"] == "l2"
                                or doc["method"].get("scheme") == "balanced"
                                or any(o.startswith("--config.method.d=") for o in run.overrides)),
              "method_label": method_label(doc["method"], doc["optim"]), "metric": doc["task"]["metric"],
              "overrides": [o for o in run.overrides
                            if not o.startswith(("--config.seed=", "--config.workdir="))],
              "status": status, "cut": {k: _get(doc, k) for k in CUT_KEYS},
              "adapter_lr": doc["optim"]["adapter_lr"], "head_lr": doc["optim"]["head_lr"]}
    if status == "done":
        results = workdir.read_json(run.workdir / workdir.RESULTS)
        metric = results["metric"]
        record |= {"test": results["test"][metric], "validation": results["validation"][metric],
                   "best_epoch": results.get("best_epoch"), "steps": results.get("steps"),
                   "trainable": results["trainable"].get("trainable"),
                   "total_trainable": results["trainable"].get("total_trainable"),
                   "train_time_s": results.get("train_time_s")}
    return record


def _order(key: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(key) if key in METHOD_ORDER else len(METHOD_ORDER), key)


def summarize(records: list[dict], name: str) -> dict:
    """The suite JSON (module docstring) of run records (``_run_record``)."""
    tasks: dict[str, dict] = {}
    for r in records:
        tasks.setdefault(r["task"], {"metric": r["metric"], "methods": {}, "runs": []})["runs"].append(r)
    for t in tasks.values():
        # a cell is one method with one set of options: its label plus the overrides (other than the
        # seed) that not every run of the task shares; its seeds are the runs
        shared = set.intersection(*(set(r["overrides"]) for r in t["runs"]))
        for r in t["runs"]:
            extra = [o.removeprefix("--config.") for o in r["overrides"] if o not in shared]
            label = r["method_label"] + (f" ({', '.join(extra)})" if extra else "")
            t["methods"].setdefault((r["method"], label), []).append(r)
            r["options"] = extra
    cells, cuts = [], []
    for task, t in tasks.items():
        for key in sorted(t["methods"], key=lambda k: _order(k[0])):
            (method, label), runs = key, t["methods"][key]
            done = [r for r in runs if r["status"] == "done"]
            tests = [r["test"] for r in done]
            cells.append({
                "task": task, "model": runs[0]["model"], "method": method, "method_label": label,
                "base_label": runs[0]["method_label"], "options": runs[0]["options"],
                "regularization": runs[0]["regularization"], "paper_variant": runs[0]["paper_variant"],
                "metric": t["metric"], "n": len(done), "expected": len(runs),
                "seeds": [r["seed"] for r in done], "test": tests,
                "mean": statistics.fmean(tests) if tests else None,
                "std": statistics.stdev(tests) if len(tests) >= 2 else None,
                "validation_mean": statistics.fmean(r["validation"] for r in done) if done else None,
                "trainable": done[0]["trainable"] if done else None,
                "total_trainable": done[0]["total_trainable"] if done else None,
                "not_done": {r["name"]: r["status"] for r in runs if r["status"] != "done"}})
        all_runs = t["runs"]
        by_label = {label: runs for (_, label), runs in t["methods"].items()}
        for key in CUT_KEYS:
            values = {m: sorted({json.dumps(r["cut"][key]) for r in runs}) for m, runs in by_label.items()}
            distinct = {v for vs in values.values() for v in vs}
            cuts.append({"task": task, "key": key, "identical": len(distinct) == 1,
                         "value": json.loads(next(iter(distinct))) if len(distinct) == 1 else None,
                         "values": {m: [json.loads(v) for v in vs] for m, vs in values.items()}})
        rates: dict[str, set] = {}
        for (m, _), runs in t["methods"].items():
            rates.setdefault(m, set()).update(r["adapter_lr"] for r in runs)
        distinct_rates = set().union(*rates.values())
        cuts.append({"task": task, "key": "optim.adapter_lr", "identical": len(distinct_rates) == 1,
                     "value": None, "values": {m: sorted(v) for m, v in rates.items()},
                     "runs": len(all_runs)})
    return {"suite": name, "scale": "metric x 100 in README tables; raw fractions here",
            "std": "sample standard deviation over seeds (ddof 1); null below 2 seeds",
            "selection": "test metric of each run at its best validation step (experiments.train)",
            "runs": records, "cells": cells, "cuts": cuts, "paper": PAPER}


def collect(suite_path: str | pathlib.Path, runs_dir: str | pathlib.Path = DEFAULT_RUNS_DIR) -> dict:
    """The suite JSON of ``suite_path`` from the workdirs under ``runs_dir``."""
    runs = expand(load_suite(suite_path), runs_dir)
    events = last_events(pathlib.Path(runs_dir) / f"{suite_name(suite_path)}.jsonl")
    return summarize([_run_record(r, events.get(r.name)) for r in runs], suite_name(suite_path))


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _paper(method: str, model: str) -> str:
    entry = PAPER[model].get(method)
    if not entry:
        return "-"
    return f"{entry[0]} ({entry[1]})" if entry[1] else f"{entry[0]}"


def _cut_note(doc: dict, task: str) -> str:
    cuts = {c["key"]: c for c in doc["cuts"] if c["task"] == task}
    same = {k: c["value"] for k, c in cuts.items() if c["identical"] and k != "optim.adapter_lr"}
    parts = []
    if "task.train_examples" in same:
        n = same["task.train_examples"]
        parts.append(f"training set: {'the whole split' if not n else f'a fixed subset of {n:,} examples'}")
    for key, what in (("task.validation_examples", "validation"), ("task.test_examples", "test")):
        if key in same:
            parts.append(f"{what}: {'whole split' if not same[key] else f'{same[key]:,} examples'}")
    if "train.steps" in same and same["train.steps"]:
        parts.append(f"{same['train.steps']} steps")
    elif "train.epochs" in same:
        parts.append(f"{same['train.epochs']} epochs")
    for key, what in (("train.batch_size", "batch"), ("task.max_length", "max tokens")):
        if key in same:
            parts.append(f"{what} {same[key]}")
    if "model.num_layers" in same:
        layers = same["model.num_layers"]
        parts.append(f"the first {layers} layer(s) only" if layers else "all layers")
    if "compute_dtype" in same:
        parts.append(same["compute_dtype"])
    if "optim.head_lr" in same:
        parts.append(f"head lr {same['optim.head_lr']:g}")
    if "optim.warmup_frac" in same:
        parts.append(f"warmup {same['optim.warmup_frac']:g} of the steps")
    differ = [k for k, c in cuts.items() if not c["identical"] and k != "optim.adapter_lr"]
    note = "Identical for every method (read from the configs): " + "; ".join(parts) + "."
    if differ:
        method_of = {c["method_label"]: c["method"] for c in doc["cells"] if c["task"] == task}
        note += " **Differs between methods:** " + "; ".join(
            f"`{k}` " + ", ".join(f"{value} ({', '.join(ms)})" for value, ms in _by_value(cuts[k], method_of))
            for k in differ) + "."
    rates = cuts.get("optim.adapter_lr")
    if rates:
        note += (" Adapter learning rates (each method's usual rate, `configs/common.py`, unless a row's "
                 "label overrides it): " + ", ".join(
                     f"{m} {' / '.join(f'{v:g}' for v in vs)}"
                     for m, vs in sorted(rates["values"].items(), key=lambda kv: _order(kv[0]))
                     if m != "head-only") + ".")
    return note


def _by_value(cut: dict, method_of: dict[str, str]) -> list[tuple[str, list[str]]]:
    """``[(value, [methods having it])]`` of a setting that differs between the rows of a task."""
    groups: dict[str, list[str]] = {}
    for label, values in cut["values"].items():
        for v in values:
            methods = groups.setdefault(json.dumps(v), [])
            if method_of.get(label, label) not in methods:
                methods.append(method_of.get(label, label))
    return list(groups.items())


def render(doc: dict) -> str:
    """Markdown of a suite JSON: per task a table of mean +- std over seeds, the paper's numbers
    beside (labelled as another model and benchmark) and the cut that every method shares."""
    lines = []
    tasks = list(dict.fromkeys(c["task"] for c in doc["cells"]))
    for task in tasks:
        cells = [c for c in doc["cells"] if c["task"] == task]
        metric = cells[0]["metric"]
        columns = PAPER_COLUMNS.get(cells[0].get("model"), TEXT_COLUMNS)
        model = MODEL_LABELS.get(cells[0].get("model"), cells[0].get("model") or "")
        lines += [f"**{TASK_LABELS.get(task, task)}**, {model} (test {metric} x 100 at the best validation "
                  f"epoch, mean +- std over seeds)", "",
                  f"| method | trainable (+ head) | seeds done | test {metric} | validation {metric} | "
                  + " | ".join(f"paper: {what} (trainable)" for _, what in columns) + " |",
                  "|---|---|---|---|---|" + "---|" * len(columns)]
        for c in cells:
            if c["n"] == 0:
                score, val, counts = "pending", "pending", "pending"
            else:
                score = _pct(c["mean"]) + (f" +- {_pct(c['std'])}" if c["std"] is not None else " (1 seed)")
                val = _pct(c["validation_mean"])
                extra = c["total_trainable"] - c["trainable"]
                counts = f"{c['trainable']:,} (+ {extra:,})"
            seeds = f"{c['n']}/{c['expected']}"
            if c["n"] or set(c["not_done"].values()) != {"pending"}:
                seeds += "".join(f", {n.rsplit('_', 1)[-1]} {s}" for n, s in c["not_done"].items())
            # the paper's rows are its own recipe (AdamW, its partition, its d): none beside a
            # variant it did not run (an L2 penalty, the balanced scheme, another d)
            variant = (c.get("paper_variant") or c.get("regularization") == "l2"  # (older JSON: l2 only)
                       or ("regularization" not in c  # (the oldest JSON: the label says it)
                           and c["method_label"].endswith("L2 penalty")))
            paper = ["-" if variant else _paper(c["method"], key) for key, _ in columns]
            lines.append(f"| {c['method_label']} | {counts} | {seeds} | {score} | {val} | "
                         + " | ".join(paper) + " |")
        lines += ["", _cut_note(doc, task), ""]
    lines += ["The paper columns are the GPart paper's averages (GLUE on RoBERTa beside text tasks, "
              "eight vision datasets on ViT beside image tasks; as quoted in `gpart_article.md`): "
              "**another model and benchmark**, shown for context only; they are not comparable with our "
              "numbers in the same row. Runs without results yet (pending, partial, failed) are counted "
              "as not done: nothing is filled in for them."]
    return "\n".join(lines)


def _cell_options(cell: dict) -> list[str]:
    """A cell's own overrides, each named by the last component of its key
    (``optim.adapter_lr=0.01`` -> ``adapter_lr=0.01``), less those its method label already
    shows (``method_label``: d, r, the scheme)."""
    out = []
    for override in cell["options"]:
        key, _, value = override.partition("=")
        if key not in ("method.d", "method.r", "method.scheme"):
            out.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return out


def compact(doc: dict, per_task_options: bool = False) -> str:
    """One markdown table of a suite for the top-level README: a row per method, a column per
    task, each cell ``mean +- std (seeds done)`` of the test metric x 100; ``pending`` where no
    seed is done. With ``per_task_options`` a row is one method whatever its overrides (say a
    learning rate chosen per task), and each cell names its own overrides."""
    tasks = list(dict.fromkeys(c["task"] for c in doc["cells"]))

    def row_of(c: dict) -> str:
        return c["base_label"] if per_task_options else c["method_label"]

    labels = list(dict.fromkeys(row_of(c) for c in doc["cells"]))
    cells: dict[tuple[str, str], dict] = {}
    for c in doc["cells"]:
        if (c["task"], row_of(c)) in cells:
            raise ValueError(f"two cells of {row_of(c)!r} on {c['task']}: a row holds one cell per task"
                             + (" (per_task_options needs one set of options per method and task)"
                                if per_task_options else ""))
        cells[c["task"], row_of(c)] = c
    head = [f"{TASK_LABELS.get(t, t)} ({next(c['metric'] for c in doc['cells'] if c['task'] == t)})"
            for t in tasks]
    lines = ["| method | trainable | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(tasks)]
    for label in labels:
        row, count = [], "-"
        for task in tasks:
            c = cells.get((task, label))
            if c is None:
                row.append("")
            elif c["n"] == 0:
                row.append("pending")
            else:
                std = f" +- {_pct(c['std'])}" if c["std"] is not None else ""
                options = _cell_options(c) if per_task_options else []
                at = f" at {', '.join(options)}" if options else ""
                row.append(f"{_pct(c['mean'])}{std} ({c['n']}/{c['expected']}){at}")
                if count == "-":
                    count = f"{c['trainable']:,}"
        lines.append(f"| {label} | {count} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_readme(path: pathlib.Path, name: str, body: str) -> None:
    """Put ``body`` between the suite's markers in ``path`` (created if missing, others kept)."""
    start, end = f"<!-- suite_{name}:start -->", f"<!-- suite_{name}:end -->"
    block = f"## Suite `{name}`\n\n{start}\n{body}\n{end}\n"
    text = path.read_text() if path.exists() else (
        "# Experiment results\n\nWritten by `python -m experiments report configs/suites/<suite>.py` from "
        "the runs' `results.json`; do not edit the suite blocks by hand.\n\n")
    pattern = re.compile(rf"## Suite `{re.escape(name)}`\n\n{re.escape(start)}\n.*?\n{re.escape(end)}\n",
                         re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def plot(doc: dict, path: pathlib.Path) -> bool:
    """Bars of mean +- std per method, one panel per task; returns False (and writes nothing) when
    no run is done."""
    if not any(c["n"] for c in doc["cells"]):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c["task"] for c in doc["cells"]))
    widest = max(sum(c["task"] == t for c in doc["cells"]) for t in tasks)  # a sweep has many bars
    width = max(5.5, 0.55 * widest)
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        cells = [c for c in doc["cells"] if c["task"] == task]
        xs = range(len(cells))
        means = [100 * c["mean"] if c["n"] else 0.0 for c in cells]
        errs = [100 * c["std"] if c["std"] is not None else 0.0 for c in cells]
        done = [m for c, m in zip(cells, means, strict=True) if c["n"]]
        top = [m + e for c, m, e in zip(cells, means, errs, strict=True) if c["n"]]
        low, high = (max(0.0, min(done) - 10), min(100.0, max(top) + 3)) if done else (0.0, 100.0)
        ax.bar(xs, means, color="C0")
        spread = [i for i, c in enumerate(cells) if c["std"] is not None]
        if spread:  # one seed has no spread: no error bar rather than a zero-width one
            ax.errorbar([xs[i] for i in spread], [means[i] for i in spread], [errs[i] for i in spread],
                        fmt="none", ecolor="black", capsize=4)
        for x, c in zip(xs, cells, strict=True):  # seeds at the bar's foot; a pending run has no bar
            ax.text(x, low + 0.02 * (high - low), f"n={c['n']}" if c["n"] else "pending", ha="center",
                    va="bottom", fontsize=8, color="white" if c["n"] else "black")
        options = [", ".join(_cell_options(c)).replace("adapter_lr=", "lr ") for c in cells]
        labels = [c["base_label"] + (f" ({o})" if o else "") for c, o in zip(cells, options, strict=True)]
        ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(low, high)
        ax.set_ylabel(f"test {cells[0]['metric']} x 100")
        ax.set_title(TASK_LABELS.get(task, task))
    models = sorted({MODEL_LABELS.get(c.get("model"), str(c.get("model"))) for c in doc["cells"]})
    fig.suptitle(f"suite {doc['suite']}: mean +- std over seeds ({', '.join(models)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(suite_path: str | pathlib.Path, runs_dir: str | pathlib.Path = DEFAULT_RUNS_DIR,
           out: str | pathlib.Path = OUT) -> dict:
    """Write the suite's JSON, README block and chart under ``out``; returns the JSON."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = collect(suite_path, runs_dir)
    name = doc["suite"]
    workdir.write_json(out / f"suite_{name}.json", doc)
    write_readme(out / "README.md", name, render(doc))
    png = out / f"suite_{name}.png"
    if not plot(doc, png) and png.exists():
        png.unlink()  # no results: a chart of earlier results would be stale
    return doc


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m experiments report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="suite file, e.g. configs/suites/text_methods_default_rates.py")
    parser.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="parent of the runs' workdirs")
    parser.add_argument("--out", default=str(OUT), help="where the JSON, README.md and chart go")
    args = parser.parse_args(argv)
    try:
        doc = report(args.suite, args.runs_dir, args.out)
    except ConfigError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    done = sum(c["n"] for c in doc["cells"])
    total = sum(c["expected"] for c in doc["cells"])
    print(f"suite {doc['suite']}: {done}/{total} runs done; wrote {args.out}/suite_{doc['suite']}.json "
          f"and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

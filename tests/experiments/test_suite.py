"""experiments/suite.py and configs/suites/: the suites expand to the runs they always had, with the
settings those runs trained with; the tuned suites' rates are the committed sweeps' picks; the
runner's bookkeeping (skip done, resume partial, refuse conflicts, log, stop) with a fake
train function. Nothing trains and no weights are read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import signal

import pytest

from configs import common
from experiments import suite as suite_runner
from experiments import workdir
from experiments.config import ConfigError, fingerprint, load_config
from experiments.signals import StopRequest, stop_requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUITES = ROOT / "configs" / "suites"
RESULTS = ROOT / "experiments" / "results"
RUN_KEYS = json.loads((RESULTS / "run_keys.json").read_text())
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # absl's config_flags
RT_GPART, RT_LORA, R8_GPART = ("configs/minilm.py:task=rt,method=gpart",
                               "configs/minilm.py:task=rt,method=lora",
                               "configs/minilm.py:task=r8,method=gpart")


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # suites name their configs relative to the repository root


def _module(name: str):
    """The suite file ``configs/suites/<name>.py`` as a module (its ``SELECTED``, ``MULTIPLES``...)."""
    import importlib

    return importlib.import_module(f"configs.suites.{name}")


# --------------------------------------------------------------------------- the runs as they were

# What the configs held before they became families (run_keys.json's description): the keys every
# old config had, each method's own options, SmolLM2's generation keys, and the balanced scheme
# that only its own config set. settings_sha256 hashes the old config restricted to these.
OLD_KEYS = (
    "name", "seed", "devices", "compute_dtype", "progress", "log_every",
    "model.name", "model.num_layers", "model.pooling",
    "method.name", "method.saved_modules",
    "optim.adapter_lr", "optim.head_lr", "optim.head_weight_decay", "optim.max_grad_norm",
    "optim.regularization", "optim.warmup_frac", "optim.weight_decay",
    "task.buckets", "task.dataset", "task.max_length", "task.metric", "task.test_dataset",
    "task.test_examples", "task.test_split", "task.train_examples", "task.train_split",
    "task.validation_examples", "task.validation_split",
    "train.batch_size", "train.checkpoint_every", "train.epochs", "train.eval_batch_size",
    "train.grad_accum", "train.keep_last", "train.steps",
)
OLD_METHOD_KEYS = {"gpart": ("d", "seed", "targets"), "gpart-noniso": ("d", "seed", "targets"),
                   "unilora": ("d", "r", "seed", "targets"), "lora": ("r", "targets"),
                   "vera": ("r", "seed", "targets"), "full": ("targets",), "head-only": ()}
OLD_MODEL_KEYS = {"smollm2": ("task.generate_examples", "task.max_new_tokens")}
OLD_VARIANT_KEYS = {"method=gpart_balanced": ("method.scheme",)}


def _flat(d: dict, prefix: str = "") -> dict:
    """Dotted keys of a nested dict, tuples as lists (as the old configs' JSON held them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def old_settings(run: suite_runner.Run) -> dict:
    """The new config's settings restricted to the keys the old config had (workdir left out;
    ``method.modules_to_save`` is now ``method.saved_modules``)."""
    cfg = run.load()
    keys = [*OLD_KEYS, *(f"method.{k}" for k in OLD_METHOD_KEYS[cfg.method.name]),
            *OLD_MODEL_KEYS.get(cfg.model.name, ())]
    keys += [k for variant, extra in OLD_VARIANT_KEYS.items() if variant in run.config for k in extra]
    flat = _flat(cfg.to_dict())
    return {k: flat[k] for k in keys}


def settings_sha256(settings: dict) -> str:
    """The hash run_keys.json records (its generator's rule: canonical JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


@pytest.fixture(scope="module")
def expanded() -> dict[str, list[suite_runner.Run]]:
    """Every suite of run_keys.json, expanded (new name -> runs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        yield {new: suite_runner.expand(suite_runner.load_suite(SUITES / f"{new}.py"))
               for new in RUN_KEYS["suites"].values()}


def _recorded_names(suite: str) -> list[str]:
    """The runs a suite held, in order, as its committed report recorded them (the GSM suite has
    none: its runs are those of run_keys.json on configs/smollm2_gsm.py)."""
    path = RESULTS / f"suite_{suite}.json"
    if path.exists():
        return [r["name"] for r in json.loads(path.read_text())["runs"]]
    return [name for name, r in RUN_KEYS["runs"].items() if r["config"].startswith("configs/smollm2_gsm.py")]


def test_every_suite_of_run_keys_exists_and_the_renamed_suites_are_all(expanded):
    assert sorted(p.stem for p in SUITES.glob("*.py") if p.stem != "text_grid") == sorted(expanded)
    assert sum(len(runs) for runs in expanded.values()) == 350  # 248 distinct runs, some shared
    assert {r.name for runs in expanded.values() for r in runs} == set(RUN_KEYS["runs"])


@pytest.mark.parametrize("old,new", sorted(RUN_KEYS["suites"].items()))
def test_dry_run_gives_the_recorded_runs_with_their_settings(old, new, expanded):
    runs = expanded[new]
    assert [r.name for r in runs] == _recorded_names(new), f"{old} -> {new}: other runs"
    assert len({r.workdir for r in runs}) == len(runs)
    for run in runs:
        record = RUN_KEYS["runs"][run.name]
        assert run.workdir == pathlib.Path("runs") / "suite" / run.name  # workdirs unchanged
        assert (run.config, list(run.overrides)) == (record["config"], record["overrides"])
        assert settings_sha256(old_settings(run)) == record["settings_sha256"], (
            f"{run.name}: the new config does not reproduce the old run's settings")
        assert fingerprint(run.load()) == record["fingerprint"], run.name
        assert record["old_fingerprint"] != record["fingerprint"]


def test_settings_hash_sees_a_changed_setting():
    """The equivalence check is not vacuous: one changed value (or one key too many) changes the
    hash."""
    run = suite_runner.expand([(RT_GPART, ["--config.seed=0"])])[0]
    settings = old_settings(run)
    assert settings_sha256(settings) == RUN_KEYS["runs"][run.name]["settings_sha256"]
    for key, value in (("task.train_examples", 5_631), ("method.d", 23_041), ("optim.warmup_frac", 0.07)):
        assert settings_sha256(settings | {key: value}) != RUN_KEYS["runs"][run.name]["settings_sha256"]
    assert settings_sha256(settings | {"method.scheme": "stateless"}) != (
        RUN_KEYS["runs"][run.name]["settings_sha256"])


def test_suite_docstring_counts(expanded):
    counts = {"text_methods_default_rates": 36, "lr_sweep_text": 38, "text_methods_rates_to_2x": 18,
              "text_methods_rates_to_4x": 36, "text_methods_tuned_rates": 36,
              "text_more_tasks_and_variants": 48, "isometry_ablation": 12, "smollm2_gsm_cpu": 2,
              "vision_methods_default_rates": 30, "lr_sweep_vision": 64, "vision_methods_tuned_rates": 30}
    assert {name: len(runs) for name, runs in expanded.items()} == counts


def test_isometry_ablation_shares_the_adamw_runs_with_the_default_rates(expanded):
    default = {r.workdir for r in expanded["text_methods_default_rates"]}
    for run in expanded["isometry_ablation"]:
        cfg = run.load()
        assert (run.workdir in default) == (cfg.optim.regularization == "decoupled")
        assert cfg.optim.weight_decay == 0.1 and cfg.method.d == 23_040
        twin = load_config(f"configs/minilm.py:task=rt,method={cfg.method.name.replace('-', '_')}",
                           [f"--config.seed={run.seed}"]).to_dict()
        mine = cfg.to_dict()
        for d in (mine, twin):  # an L2 run differs from its AdamW twin in its regularization only
            d.pop("name"), d.pop("workdir"), d["optim"].pop("regularization")
        assert mine == twin


# --------------------------------------------------------------------------- tuned rates

def _sweep(name: str) -> list[dict]:
    runs = json.loads((RESULTS / f"suite_{name}.json").read_text())["runs"]
    assert all(r["status"] == "done" for r in runs)
    return runs


def selected_rates(sweep_runs: list[dict], key, up_to: float | None = None) -> dict:
    """The rate with the best validation score per ``key(run)`` among the sweep's runs at most
    ``up_to`` x the method's default rate; ties go to the lower rate (the suites' rule)."""
    best: dict = {}
    for r in sorted(sweep_runs, key=lambda r: r["adapter_lr"]):
        if up_to is not None and r["adapter_lr"] > up_to * 1.000001 * common.adapter_lr(r["method"]):
            continue
        k = key(r)
        if k not in best or r["validation"] > best[k][0]:
            best[k] = (r["validation"], r["adapter_lr"])
    return {k: rate for k, (_, rate) in best.items()}


SHORT = {"rotten_tomatoes": "rt", "r8": "r8"}


def _task_method(r: dict) -> tuple[str, str]:
    return SHORT.get(r["task"], r["task"]), r["method"]


def _rates(runs: list[suite_runner.Run]) -> dict:
    return {(r.load().task.dataset, r.load().method.name, r.seed): r.load().optim.adapter_lr for r in runs}


def test_selection_rule_breaks_ties_to_the_lower_rate():
    runs = [{"task": "r8", "method": "lora", "adapter_lr": lr, "validation": v}
            for lr, v in ((5e-4, 0.5), (1e-3, 0.7), (2e-3, 0.7), (4e-3, 0.6))]
    assert selected_rates(runs, _task_method) == {("r8", "lora"): 1e-3}
    assert selected_rates(runs, _task_method, up_to=1) == {("r8", "lora"): 5e-4}


def test_rates_to_2x_are_the_sweep_picks_up_to_2x(expanded):
    sweep = [r for r in _sweep("lr_sweep_text") if r["task"] == "rotten_tomatoes"]
    first = [r for r in sweep if r["adapter_lr"] <= 2.000001 * common.adapter_lr(r["method"])]
    assert len(first) == 12  # 0.4x, 1x and 2x of four methods
    tuned = _module("text_methods_rates_to_2x")
    assert selected_rates(sweep, lambda r: r["method"], up_to=2) == tuned.SELECTED
    rates = _rates(expanded["text_methods_rates_to_2x"])
    for m, rate in tuned.SELECTED.items():
        assert all(rates["rotten_tomatoes", m, s] == rate for s in (0, 1, 2))
    assert rates["rotten_tomatoes", "gpart-noniso", 1] == common.adapter_lr("gpart")


def test_rates_to_4x_are_the_sweep_picks_up_to_4x(expanded):
    tuned = _module("text_methods_rates_to_4x")
    assert selected_rates(_sweep("lr_sweep_text"), _task_method, up_to=4) == tuned.SELECTED
    rates = _rates(expanded["text_methods_rates_to_4x"])
    datasets = {"rt": "rotten_tomatoes", "r8": "r8"}
    for (task, m), rate in tuned.SELECTED.items():
        assert all(rates[datasets[task], m, s] == rate for s in (0, 1, 2)), (task, m)
    # the variants suite carries these rates over (its docstring)
    variants = _module("text_more_tasks_and_variants")
    assert variants.RT_RATES == {m: tuned.SELECTED["rt", m] for m in variants.RT_RATES}
    assert variants.SHORT_RATES == {m: tuned.SELECTED["r8", m] for m in variants.SHORT_RATES}
    for run in expanded["text_more_tasks_and_variants"]:
        cfg = run.load()
        task = "rt" if cfg.task.dataset == "rotten_tomatoes" else "r8"
        assert cfg.optim.adapter_lr == tuned.SELECTED.get((task, cfg.method.name),
                                                          common.adapter_lr(cfg.method.name)), run.name


def test_tuned_rates_are_the_whole_sweep_picks(expanded):
    sweep = _sweep("lr_sweep_text")
    tuned = _module("text_methods_tuned_rates")
    assert selected_rates(sweep, _task_method) == tuned.SELECTED
    for k, rate in tuned.SELECTED.items():  # every pick inside the swept range
        assert rate < max(r["adapter_lr"] for r in sweep if _task_method(r) == k), k
    to_4x = _module("text_methods_rates_to_4x").SELECTED
    assert {k for k in tuned.SELECTED if tuned.SELECTED[k] != to_4x[k]} == {
        ("rt", "full"), ("r8", "lora"), ("r8", "full")}  # the docstring's changed picks
    rates = _rates(expanded["text_methods_tuned_rates"])
    assert rates["r8", "lora", 2] == tuned.SELECTED["r8", "lora"] == 4e-3


def test_lr_sweep_text_widens_exactly_where_the_committed_sweep_says():
    sweep = _sweep("lr_sweep_text")
    grid = _module("lr_sweep_text")
    up_to_4x = selected_rates(sweep, _task_method, up_to=4)
    assert set(grid.WIDER_8X) == {k for k, rate in up_to_4x.items()
                                  if rate == grid.scaled_rate(k[1], 4)}
    up_to_8x = selected_rates(sweep, _task_method, up_to=8)
    assert set(grid.WIDER_16X_32X) == {k for k, rate in up_to_8x.items()
                                       if rate == grid.scaled_rate(k[1], 8)}
    # the sweep holds every multiple of the grid, and nothing else
    swept = {(_task_method(r), round(r["adapter_lr"] / common.adapter_lr(r["method"]), 3)) for r in sweep}
    assert swept == {((t, m), k) for t in grid.MULTIPLES for m in grid.METHODS for k in grid.multiples(t, m)}
    assert len(sweep) == 38


def test_vision_tuned_rates_are_the_vision_sweep_picks(expanded):
    sweep = _sweep("lr_sweep_vision")
    tuned = _module("vision_methods_tuned_rates")
    picks = selected_rates(sweep, lambda r: (r["task"], r["method"]))
    assert picks == tuned.SELECTED
    top = {k for k, rate in picks.items()
           if rate == max(r["adapter_lr"] for r in sweep if (r["task"], r["method"]) == k)}
    assert top == {("mnist5k", "full"), ("digits", "gpart")}  # the docstring's two at the top
    rates = _rates(expanded["vision_methods_tuned_rates"])
    for (task, m), rate in tuned.SELECTED.items():
        assert all(rates[task, m, s] == rate for s in (0, 1, 2))
    assert rates["mnist5k", "head-only", 1] == common.adapter_lr("head-only")
    sweep_dirs = {r["workdir"] for r in sweep}
    assert {str(r.workdir) for r in expanded["vision_methods_tuned_rates"]
            if r.seed == 0 and "head_only" not in r.name} <= sweep_dirs


# --------------------------------------------------------------------------- expand and entries

def test_entry_and_expand_name_workdirs_and_seeds(tmp_path):
    assert suite_runner.entry(RT_GPART, 2, {"optim.adapter_lr": 0.02, "method.d": 2880}) == (
        RT_GPART, ["--config.optim.adapter_lr=0.02", "--config.method.d=2880", "--config.seed=2"])
    runs = suite_runner.expand([(RT_GPART, ["--config.seed=2"]), (RT_LORA, [])], tmp_path / "runs")
    assert [r.name for r in runs] == ["minilm_rt_gpart_s2", "minilm_rt_lora_s0"]
    assert runs[0].workdir == tmp_path / "runs" / "minilm_rt_gpart_s2"
    cfg = runs[0].load()
    assert cfg.seed == 2 and cfg.workdir == str(tmp_path / "runs" / "minilm_rt_gpart_s2")
    # the run is the same as `python -m experiments train` with those overrides
    assert fingerprint(cfg) == fingerprint(load_config(RT_GPART, ["--config.seed=2"]))
    with pytest.raises(ConfigError, match="both train in"):
        suite_runner.expand([(RT_GPART, ["--config.seed=1"]), (RT_GPART, ["--config.seed=1"])], tmp_path)
    assert [r.name for r in suite_runner.select(runs, "*lora*")] == ["minilm_rt_lora_s0"]
    assert [r.name for r in suite_runner.select(runs, "gpart")] == ["minilm_rt_gpart_s2"]
    assert suite_runner.select(runs, None) == runs
    sweep = suite_runner.expand([suite_runner.entry(RT_GPART, 0, {"optim.adapter_lr": 0.01}),
                                 suite_runner.entry(RT_GPART, 0)],
                     tmp_path / "runs")
    assert [r.name for r in sweep] == ["minilm_rt_gpart_adapter_lr=0.01_s0", "minilm_rt_gpart_s0"]
    assert sweep[0].load().optim.adapter_lr == 0.01 and sweep[1].load().optim.adapter_lr == 5e-3
    with pytest.raises(ConfigError, match="cannot name a workdir"):
        suite_runner.expand([(RT_GPART, ["--config.method.targets=('a/b',)"])], tmp_path)


def test_suite_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        suite_runner.load_suite(tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match="has no get_suite"):
        suite_runner.load_suite(tmp_path / "empty.py")
    (tmp_path / "broken.py").write_text("def get_suite(:\n")
    with pytest.raises(ConfigError, match="could not be loaded: SyntaxError"):
        suite_runner.load_suite(tmp_path / "broken.py")
    (tmp_path / "plain.py").write_text(f"def get_suite():\n    return [{RT_LORA!r}]\n")
    assert suite_runner.load_suite(tmp_path / "plain.py") == [(RT_LORA, [])]
    assert suite_runner.main([str(tmp_path / "missing.py"), "--dry-run"]) == 2
    assert suite_runner.suite_name(SUITES / "lr_sweep_text.py") == "lr_sweep_text"


# --------------------------------------------------------------------------- the runner

def _suite_file(tmp_path: pathlib.Path, entries: list[tuple[str, list[str]]],
                name: str = "toy") -> pathlib.Path:
    path = tmp_path / f"{name}.py"
    path.write_text(f"def get_suite():\n    return {entries!r}\n")
    return path


def _results(cfg, test: float, validation: float | None = None, fp: str | None = None) -> dict:
    metric = cfg.task.metric
    return {"fingerprint": fp or fingerprint(cfg), "workdir": cfg.workdir, "metric": metric,
            "test": {metric: test, "examples": 10},
            "validation": {metric: validation or test, "examples": 10},
            "best_epoch": 1, "steps": 4, "train_time_s": 1.0,
            "trainable": {"method": cfg.method.name, "trainable": 100, "saved": 7, "total_trainable": 107}}


class FakeTrain:
    """``train_fn(cfg, stop)`` like the trainer's bookkeeping: writes run.json, then results.json;
    raises for the configs in ``fail`` (after run.json, as a run that died midway), raises
    ``KeyboardInterrupt`` for those in ``interrupt``, and for those in ``signal_in`` receives a
    SIGTERM while training (and finishes, as the trainer finishes its step)."""

    def __init__(self, fail=(), interrupt=(), signal_in=()):
        self.fail, self.interrupt, self.signal_in = set(fail), set(interrupt), set(signal_in)
        self.calls: list[tuple[str, int, bool]] = []
        self.stops: list[StopRequest] = []

    def __call__(self, cfg, stop: StopRequest) -> dict:
        path = pathlib.Path(cfg.workdir)
        self.calls.append((cfg.name, cfg.seed, (path / workdir.RUN).exists()))
        self.stops.append(stop)
        path.mkdir(parents=True, exist_ok=True)
        workdir.write_json(path / workdir.RUN, {"fingerprint": fingerprint(cfg)})
        if cfg.name in self.interrupt:
            raise KeyboardInterrupt
        if cfg.name in self.fail:
            raise RuntimeError(f"boom in {cfg.name}")
        if cfg.name in self.signal_in:
            os.kill(os.getpid(), signal.SIGTERM)
        results = _results(cfg, 0.5 + cfg.seed / 100)
        workdir.write_json(path / workdir.RESULTS, results)
        return results


def _log(runs_dir: pathlib.Path, name: str = "toy") -> list[dict]:
    return [json.loads(line) for line in (runs_dir / f"{name}.jsonl").read_text().splitlines()]


def test_dry_run_lists_statuses_and_trains_nothing(tmp_path, capsys):
    entries = ([suite_runner.entry(c, 0) for c in (RT_GPART, RT_LORA, R8_GPART)]
               + [suite_runner.entry(RT_GPART, 1)])
    suite = _suite_file(tmp_path, entries)
    runs_dir = tmp_path / "runs"
    runs = suite_runner.expand(suite_runner.load_suite(suite), runs_dir)
    done, partial, conflict = (runs[0].load(), runs[1].load(), runs[2].load())
    for cfg in (done, partial, conflict):
        pathlib.Path(cfg.workdir).mkdir(parents=True)
    pathlib.Path(done.workdir, workdir.RESULTS).write_text(json.dumps(_results(done, 0.7)))
    pathlib.Path(partial.workdir, workdir.RUN).write_text(json.dumps({"fingerprint": fingerprint(partial)}))
    pathlib.Path(conflict.workdir, workdir.RUN).write_text(json.dumps({"fingerprint": "another config"}))

    def never(cfg, stop):
        raise AssertionError("a dry run trains nothing")

    records = suite_runner.run_suite(suite, runs_dir=runs_dir, dry_run=True, train_fn=never)
    assert [r["status"] for r in records] == ["done", "partial", "conflict", "pending"]
    assert [suite_runner.status(r) for r in runs] == ["done", "partial", "conflict", "pending"]
    assert all(r["outcome"] is None for r in records)
    assert not (runs_dir / "toy.jsonl").exists()
    assert suite_runner.summary(records) == "4 runs: 1 done, 1 partial, 1 conflict, 1 pending"
    assert suite_runner.main([str(suite), "--dry-run", "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "[2/4] minilm_rt_lora_s0: partial" in out and out.rstrip().endswith("1 pending")


def test_runner_skips_done_resumes_partial_logs_failures_and_goes_on(tmp_path):
    entries = [(RT_GPART, ["--config.seed=0"]), (RT_LORA, ["--config.seed=0"]),
               (R8_GPART, ["--config.seed=0"]), (RT_GPART, ["--config.seed=1"])]
    suite = _suite_file(tmp_path, entries)
    runs_dir = tmp_path / "runs"
    # first pass: the lora run fails, the r8 run is interrupted (Ctrl-C stops the suite)
    fake = FakeTrain(fail={"minilm_rt_lora"}, interrupt={"minilm_r8_gpart"})
    with pytest.raises(KeyboardInterrupt):
        suite_runner.run_suite(suite, runs_dir=runs_dir, train_fn=fake, out=io.StringIO())
    assert [c[:2] for c in fake.calls] == [("minilm_rt_gpart", 0), ("minilm_rt_lora", 0),
                                           ("minilm_r8_gpart", 0)]
    log = _log(runs_dir)
    assert [(e["run"], e["event"]) for e in log] == [
        ("minilm_rt_gpart_s0", "started"), ("minilm_rt_gpart_s0", "finished"),
        ("minilm_rt_lora_s0", "started"), ("minilm_rt_lora_s0", "failed"),
        ("minilm_r8_gpart_s0", "started"), ("minilm_r8_gpart_s0", "interrupted")]
    assert log[1]["metric"] == "accuracy" and log[1]["test"] == 0.5 and "time" in log[1]
    assert log[3]["error"] == "RuntimeError: boom in minilm_rt_lora" and "Traceback" in log[3]["traceback"]
    assert all(e["suite"] == "toy" and e["config"] for e in log)
    dry = suite_runner.run_suite(suite, runs_dir=runs_dir, dry_run=True, out=io.StringIO())
    assert [r["status"] for r in dry] == ["done", "partial", "partial", "pending"]

    # second pass: lora still fails, the others go on; the done run is skipped, partial ones resume
    fake = FakeTrain(fail={"minilm_rt_lora"})
    records = suite_runner.run_suite(suite, runs_dir=runs_dir, train_fn=fake, out=io.StringIO())
    assert [r["outcome"] for r in records] == ["skipped", "failed", "finished", "finished"]
    assert [r["status"] for r in records] == ["done", "partial", "partial", "pending"]
    assert fake.calls == [("minilm_rt_lora", 0, True), ("minilm_r8_gpart", 0, True),
                          ("minilm_rt_gpart", 1, False)]  # True: it found its run.json (resumes)
    assert suite_runner.summary(records) == "4 runs: 1 skipped, 1 failed, 2 finished"
    skipped = _log(runs_dir)[len(log)]
    assert (skipped["run"], skipped["event"]) == ("minilm_rt_gpart_s0", "skipped")

    # third pass: everything left is done; a fourth trains nothing and exits 0
    fake = FakeTrain()
    records = suite_runner.run_suite(suite, runs_dir=runs_dir, train_fn=fake, out=io.StringIO())
    assert [r["outcome"] for r in records] == ["skipped", "finished", "skipped", "skipped"]
    fake = FakeTrain()
    records = suite_runner.run_suite(suite, runs_dir=runs_dir, train_fn=fake, out=io.StringIO())
    assert {r["outcome"] for r in records} == {"skipped"}
    assert fake.calls == []
    assert suite_runner.main([str(suite), "--runs-dir", str(runs_dir)]) == 0


def test_runner_refuses_conflicts_and_invalid_entries_and_selects(tmp_path):
    suite = _suite_file(tmp_path, [(RT_GPART, ["--config.seed=0"]), (RT_LORA, ["--config.seed=0"]),
                                   (RT_GPART, ["--config.bogus=1"])])
    with pytest.raises(ConfigError, match="bogus"):  # a bad override is found before anything runs
        suite_runner.run_suite(suite, runs_dir=tmp_path / "runs", train_fn=FakeTrain())
    assert suite_runner.main([str(suite), "--runs-dir", str(tmp_path / "runs")]) == 2
    suite = _suite_file(tmp_path, [(RT_GPART, ["--config.seed=0"]), (RT_LORA, ["--config.seed=0"])])
    fake = FakeTrain()
    records = suite_runner.run_suite(suite, runs_dir=tmp_path / "runs", only="*lora*", train_fn=fake,
                                     out=io.StringIO())
    assert [r["run"] for r in records] == ["minilm_rt_lora_s0"] and len(fake.calls) == 1
    # another config's run in the workdir is a conflict: left untouched, logged as failed
    wd = tmp_path / "runs" / "minilm_rt_gpart_s0"
    wd.mkdir(parents=True)
    (wd / workdir.RUN).write_text(json.dumps({"fingerprint": "another config"}))
    (wd / "notes.txt").write_text("mine")
    fake = FakeTrain()
    records = suite_runner.run_suite(suite, runs_dir=tmp_path / "runs", train_fn=fake, out=io.StringIO())
    assert [(r["status"], r["outcome"]) for r in records] == [("conflict", "failed"), ("done", "skipped")]
    assert fake.calls == [] and "holds a run of another config" in records[0]["error"]
    assert json.loads((wd / workdir.RUN).read_text()) == {"fingerprint": "another config"}
    assert sorted(p.name for p in wd.iterdir()) == ["notes.txt", "run.json"]
    assert _log(tmp_path / "runs")[-2]["event"] == "failed"
    assert suite_runner.main([str(suite), "--runs-dir", str(tmp_path / "runs")]) == 1  # some run not done
    # an entry whose config does not load stops the suite before anything runs, naming the key
    bad = _suite_file(tmp_path, [(R8_GPART, []), (RT_LORA, ["--config.method.no_such_key=1"])], "bad")
    fake = FakeTrain()
    with pytest.raises(ConfigError, match="unknown config key 'method.no_such_key'"):
        suite_runner.run_suite(bad, runs_dir=tmp_path / "runs", train_fn=fake, out=io.StringIO())
    assert fake.calls == [] and not (tmp_path / "runs" / "bad.jsonl").exists()


def test_a_stop_request_ends_the_suite_after_the_run_in_progress(tmp_path, capsys, monkeypatch):
    """SIGTERM while a run trains: the trainer finishes (or checkpoints) that run, the suite starts
    no other one and the command exits 130; the next invocation goes on from there."""
    suite = _suite_file(tmp_path, [suite_runner.entry(c, 0) for c in (RT_GPART, RT_LORA, R8_GPART)])
    runs_dir = tmp_path / "runs"
    fake = FakeTrain(signal_in={"minilm_rt_gpart"})
    with stop_requests() as stop, pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        suite_runner.run_suite(suite, runs_dir=runs_dir, train_fn=fake, stop=stop, out=io.StringIO())
    assert [c[0] for c in fake.calls] == ["minilm_rt_gpart"] and fake.stops[0] is stop  # passed on
    assert [e["event"] for e in _log(runs_dir)] == ["started", "finished"]
    # a stop asked for before a run starts: nothing starts
    requested = StopRequest()
    requested.signum = signal.SIGINT
    fake = FakeTrain()
    with pytest.raises(KeyboardInterrupt):
        suite_runner.run_suite(suite, runs_dir=runs_dir, train_fn=fake, stop=requested, out=io.StringIO())
    assert fake.calls == [] and len(_log(runs_dir)) == 2
    # the command: a SIGTERM in a run is exit code 130 and a line saying how to resume
    monkeypatch.setattr(suite_runner, "_default_train", FakeTrain(signal_in={"minilm_rt_lora"}))
    assert suite_runner.main([str(suite), "--runs-dir", str(runs_dir)]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    dry = suite_runner.run_suite(suite, runs_dir=runs_dir, dry_run=True, out=io.StringIO())
    assert [r["status"] for r in dry] == [
        "done", "done", "pending"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are back

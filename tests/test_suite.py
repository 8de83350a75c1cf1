"""Issue 7 (a) infrastructure: the suite runner's bookkeeping (skip done, resume partial, log a
failure and go on) with a fake train function, and the report on synthetic ``results.json``
files. Nothing trains and jax is not needed."""

from __future__ import annotations

import io
import json
import pathlib
import statistics

import pytest

from configs import common
from experiments import report as R
from experiments import suite as S
from experiments.config import ConfigError, exec_python_file, fingerprint, load_config

ROOT = pathlib.Path(__file__).parent.parent
# each swept method's usual adapter rate (configs/common.py), the centre of every sweep
DEFAULT_RATES = {"gpart": 5e-3, "unilora": 5e-3, "lora": 5e-4, "full": 5e-5}
CONFIGS = ("configs/minilm_rt_gpart.py", "configs/minilm_rt_lora.py", "configs/minilm_r8_gpart.py")


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
    """Writes run.json like the trainer, then results.json, or raises for the configs in ``fail``
    (after run.json, as a run that died midway) or ``interrupt``."""

    def __init__(self, fail=(), interrupt=()):
        self.fail, self.interrupt, self.calls = set(fail), set(interrupt), []

    def __call__(self, cfg) -> dict:
        workdir = pathlib.Path(cfg.workdir)
        self.calls.append((cfg.name, cfg.seed, (workdir / S.RUN).exists()))
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / S.RUN).write_text(json.dumps({"fingerprint": fingerprint(cfg)}))
        if cfg.name in self.interrupt:
            raise KeyboardInterrupt
        if cfg.name in self.fail:
            raise RuntimeError(f"boom in {cfg.name}")
        results = _results(cfg, 0.5 + cfg.seed / 100)
        (workdir / S.RESULTS).write_text(json.dumps(results))
        return results


def _log(runs_dir: pathlib.Path, name: str = "toy") -> list[dict]:
    return [json.loads(line) for line in (runs_dir / f"{name}.jsonl").read_text().splitlines()]


def test_expand_names_workdirs_and_seeds(tmp_path):
    runs = S.expand([(CONFIGS[0], ["--config.seed=2"]), (CONFIGS[1], [])], tmp_path / "runs")
    assert [r.name for r in runs] == ["minilm_rt_gpart_s2", "minilm_rt_lora_s0"]
    assert runs[0].workdir == tmp_path / "runs" / "minilm_rt_gpart_s2"
    cfg = runs[0].load()
    assert cfg.seed == 2 and cfg.workdir == str(tmp_path / "runs" / "minilm_rt_gpart_s2")
    # the run is the same as gpart-jax train with those overrides
    assert fingerprint(cfg) == fingerprint(load_config(ROOT / CONFIGS[0], ["--config.seed=2"]))
    with pytest.raises(ConfigError, match="both train in"):
        S.expand([(CONFIGS[0], ["--config.seed=1"]), (CONFIGS[0], ["--config.seed=1"])], tmp_path)
    assert [r.name for r in S.select(runs, "*lora*")] == ["minilm_rt_lora_s0"]
    # other overrides name their own workdir (a sweep of one config and seed)
    sweep = S.expand([(CONFIGS[0], ["--config.optim.adapter_lr=0.01", "--config.seed=0"]),
                      (CONFIGS[0], ["--config.seed=0"])], tmp_path / "runs")
    assert [r.name for r in sweep] == ["minilm_rt_gpart_adapter_lr=0.01_s0", "minilm_rt_gpart_s0"]
    assert sweep[0].load().optim.adapter_lr == 0.01 and sweep[1].load().optim.adapter_lr == 5e-3
    with pytest.raises(ConfigError, match="cannot name a workdir"):
        S.expand([(CONFIGS[0], ["--config.method.targets=('a/b',)"])], tmp_path)
    assert [r.name for r in S.select(runs, "gpart")] == ["minilm_rt_gpart_s2"]


def test_stage_a_suite():
    runs = S.expand(S.load_suite(ROOT / "configs" / "suites" / "stage_a.py"))
    assert len(runs) == 36 and len({r.workdir for r in runs}) == 36
    cfgs = [r.load() for r in runs]
    assert {c.task.dataset for c in cfgs} == {"rotten_tomatoes", "r8"}
    assert {c.method.name for c in cfgs} == {"gpart", "unilora", "lora", "gpart-noniso", "head-only", "full"}
    assert {c.seed for c in cfgs} == {0, 1, 2}
    assert all(c.method.d == 23_040 for c in cfgs if "d" in c.method)
    assert all(c.method.r == 8 for c in cfgs if c.method.name == "lora")
    assert all(str(r.workdir).startswith("runs/suite/") for r in runs)


def test_ablation_suite_shares_the_adamw_runs_with_stage_a():
    runs = S.expand(S.load_suite(ROOT / "configs" / "suites" / "ablation.py"))
    stage_a = {r.workdir for r in S.expand(S.load_suite(ROOT / "configs" / "suites" / "stage_a.py"))}
    assert len(runs) == 12
    cfgs = {r.name: r.load() for r in runs}
    variants = {(c.method.name, c.optim.regularization) for c in cfgs.values()}
    assert variants == {(m, reg) for m in ("gpart", "gpart-noniso") for reg in ("decoupled", "l2")}
    for r in runs:  # AdamW runs are stage (a)'s own workdirs; L2 runs differ from them only there
        cfg = cfgs[r.name]
        assert (r.workdir in stage_a) == (cfg.optim.regularization == "decoupled")
        twin = load_config(ROOT / "configs" / f"minilm_rt_{cfg.method.name.replace('-', '_')}.py",
                           [f"--config.seed={r.seed}"]).to_dict()
        mine = cfg.to_dict()
        for key in ("name", "workdir"):
            mine.pop(key), twin.pop(key)
        mine["optim"].pop("regularization"), twin["optim"].pop("regularization")
        assert mine == twin
        assert cfg.optim.weight_decay == 0.1 and cfg.method.d == 23_040


def _selected_rates(sweep_runs: list[dict], key) -> dict:
    """The rate with the best validation score per ``key(run)`` of finished sweep runs; ties go
    to the lower rate (the rule the tuned suites' docstrings state)."""
    best: dict = {}
    for r in sorted(sweep_runs, key=lambda r: r["adapter_lr"]):
        assert r["status"] == "done", r["name"]
        k = key(r)
        if k not in best or r["validation"] > best[k][0]:
            best[k] = (r["validation"], r["adapter_lr"])
    return {k: rate for k, (_, rate) in best.items()}


def test_tuned_suite_uses_the_rates_the_committed_sweep_selected():
    tuned = exec_python_file(ROOT / "configs" / "suites" / "stage_a_tuned.py", "suite", "get_suite",
                               ROOT / "configs" / "suites")
    sweep = json.loads((ROOT / "experiments" / "results" / "suite_lr_sweep.json").read_text())
    # the sweep's first round on Rotten Tomatoes: 0.4x, 1x and 2x each default (module docstring)
    first = [r for r in sweep["runs"] if r["task"] == "rotten_tomatoes"
             and r["adapter_lr"] <= 2.000001 * common.adapter_lr(r["method"])]
    assert len(first) == 12
    assert _selected_rates(first, lambda r: r["method"]) == tuned.SELECTED
    for m, rate in DEFAULT_RATES.items():  # the sweep's centre is each config's own rate
        assert common.adapter_lr(m) == rate
        for task in ("rt", "r8"):
            assert load_config(ROOT / "configs" / f"minilm_{task}_{m}.py").optim.adapter_lr == rate
    runs = S.expand(S.load_suite(ROOT / "configs" / "suites" / "stage_a_tuned.py"))
    rates = {(r.load().method.name, r.seed): r.load().optim.adapter_lr for r in runs}
    assert rates["gpart", 2] == tuned.SELECTED["gpart"] and rates["gpart-noniso", 1] == 5e-3
    assert len(runs) == 18


def test_round2_suite_uses_the_rates_the_whole_committed_sweep_selected():
    suites = ROOT / "configs" / "suites"
    tuned = exec_python_file(suites / "stage_a_round2.py", "suite", "get_suite", suites)
    sweep = json.loads((ROOT / "experiments" / "results" / "suite_lr_sweep.json").read_text())
    short = {"rotten_tomatoes": "rt", "r8": "r8"}
    second = [r for r in sweep["runs"] if r["adapter_lr"] <= 4.000001 * common.adapter_lr(r["method"])]
    assert len(second) == 28  # the first two rounds (lr_sweep's docstring)
    assert _selected_rates(second, lambda r: (short[r["task"]], r["method"])) == tuned.SELECTED
    # the third round widens exactly the pairs whose pick is 4x, the top of the second round
    sweep_file = exec_python_file(suites / "lr_sweep.py", "suite", "get_suite", suites)
    assert set(sweep_file.EIGHT_X) == {k for k, rate in tuned.SELECTED.items()
                                       if rate == common.scaled_rate(k[1], 4)}
    # the fourth round widens exactly the pairs whose pick among rates up to 8x is 8x
    third = [r for r in sweep["runs"] if r["adapter_lr"] <= 8.000001 * common.adapter_lr(r["method"])]
    assert len(third) == 32
    assert set(sweep_file.PAST_EIGHT_X) == {
        k for k, rate in _selected_rates(third, lambda r: (short[r["task"]], r["method"])).items()
        if rate == common.scaled_rate(k[1], 8)}
    assert len(S.expand(S.load_suite(suites / "lr_sweep.py"))) == 38
    runs = S.expand(S.load_suite(suites / "stage_a_round2.py"))
    assert len(runs) == 36 and len({r.workdir for r in runs}) == 36
    rates = {(r.load().task.dataset, r.load().method.name, r.seed): r.load().optim.adapter_lr for r in runs}
    assert rates["r8", "lora", 2] == 2e-3 and rates["rotten_tomatoes", "gpart-noniso", 1] == 5e-3
    earlier = {str(r.workdir) for name in ("stage_a.py", "stage_a_tuned.py")
               for r in S.expand(S.load_suite(suites / name))} | {r["workdir"] for r in sweep["runs"]}
    assert sum(str(r.workdir) not in earlier for r in runs) == 12  # the docstring's count of new runs


def test_round3_suite_uses_the_rates_all_four_sweep_rounds_selected():
    suites = ROOT / "configs" / "suites"
    tuned = exec_python_file(suites / "stage_a_round3.py", "suite", "get_suite", suites)
    round2 = exec_python_file(suites / "stage_a_round2.py", "suite", "get_suite", suites)
    sweep = json.loads((ROOT / "experiments" / "results" / "suite_lr_sweep.json").read_text())
    short = {"rotten_tomatoes": "rt", "r8": "r8"}
    assert len(sweep["runs"]) == 38

    def key(run: dict) -> tuple[str, str]:
        return short[run["task"]], run["method"]

    assert _selected_rates(sweep["runs"], key) == tuned.SELECTED
    for k, rate in tuned.SELECTED.items():  # the docstring: every pick is inside the swept range
        assert rate < max(r["adapter_lr"] for r in sweep["runs"] if key(r) == k), k
    assert {k for k in tuned.SELECTED if tuned.SELECTED[k] != round2.SELECTED[k]} == {
        ("rt", "full"), ("r8", "lora"), ("r8", "full")}  # the docstring's changed picks
    runs = S.expand(S.load_suite(suites / "stage_a_round3.py"))
    assert len(runs) == 36 and len({r.workdir for r in runs}) == 36
    earlier = {str(r.workdir) for name in ("stage_a.py", "stage_a_tuned.py", "stage_a_round2.py")
               for r in S.expand(S.load_suite(suites / name))} | {r["workdir"] for r in sweep["runs"]}
    assert sum(str(r.workdir) not in earlier for r in runs) == 6  # the docstring's count of new runs


def test_stage_h_suite():
    runs = S.expand(S.load_suite(ROOT / "configs" / "suites" / "stage_h.py"))
    assert len(runs) == 48 and len({r.workdir for r in runs}) == 48
    cfgs = {r.name: r.load() for r in runs}
    assert cfgs["minilm_rt_gpart_balanced_adapter_lr=0.02_s1"].method.scheme == "balanced"
    assert cfgs["minilm_rt_gpart_adapter_lr=0.02_d=2880_s0"].method.d == 2_880
    assert cfgs["minilm_rt_unilora_d=2880_s2"].method.d == 2_880
    assert cfgs["minilm_rt_vera_s0"].optim.adapter_lr == 4e-3  # not swept: its default
    # The second sweep round's rates carry over: Rotten Tomatoes' to the Rotten Tomatoes variants,
    # R8's to tweets and 20 Newsgroups; GPart non-isometric stays at its default (5e-3).
    suites = ROOT / "configs" / "suites"
    selected = exec_python_file(suites / "stage_a_round2.py", "suite", "get_suite", suites).SELECTED
    for name, cfg in cfgs.items():
        m = cfg.method.name  # balanced GPart is "gpart" with scheme "balanced"
        task = "rt" if cfg.task.dataset == "rotten_tomatoes" else "r8"
        assert cfg.optim.adapter_lr == selected.get((task, m), common.adapter_lr(m)), name
    rt_cut = load_config(ROOT / "configs" / "minilm_rt_gpart.py").task.to_dict()
    for name, cfg in cfgs.items():
        if cfg.task.dataset == "rotten_tomatoes":  # stage (a)'s cut, unchanged
            assert cfg.task.to_dict() == rt_cut, name
    for dataset in ("election_tweets", "20newsgroups"):  # one cut per task, every method
        cuts = {(c.task.train_examples, c.task.max_length, c.train.epochs) for c in cfgs.values()
                if c.task.dataset == dataset}
        assert len(cuts) == 1, (dataset, cuts)
        assert {c.method.name for c in cfgs.values() if c.task.dataset == dataset} == {
            "gpart", "unilora", "lora", "gpart-noniso", "head-only", "full"}


def test_vision_suite():
    runs = S.expand(S.load_suite(ROOT / "configs" / "suites" / "vision.py"))
    assert len(runs) == 30 and len({r.workdir for r in runs}) == 30
    cfgs = [r.load() for r in runs]
    assert {c.task.dataset for c in cfgs} == {"mnist5k", "digits"}
    assert {c.method.name for c in cfgs} == {"gpart", "unilora", "lora", "full", "head-only"}
    assert all(c.model.name == "vit" and c.method.modules_to_save == ("head",) for c in cfgs)
    assert all(c.method.d == 1_024 for c in cfgs if "d" in c.method)
    for dataset in ("mnist5k", "digits"):  # one data cut and schedule per task
        assert len({(c.train.epochs, c.train.batch_size) for c in cfgs if c.task.dataset == dataset}) == 1


def test_vision_tuned_suite_uses_the_rates_the_committed_sweep_selected():
    suites = ROOT / "configs" / "suites"
    tuned = exec_python_file(suites / "vision_tuned.py", "suite", "get_suite", suites)
    sweep = json.loads((ROOT / "experiments" / "results" / "suite_vision_lr_sweep.json").read_text())
    assert _selected_rates(sweep["runs"], lambda r: (r["task"], r["method"])) == tuned.SELECTED
    for m, rate in DEFAULT_RATES.items():
        for task in tuned.TASKS:
            assert load_config(ROOT / "configs" / f"vit_{task}_{m}.py").optim.adapter_lr == rate
    runs = S.expand(S.load_suite(suites / "vision_tuned.py"))
    assert len(runs) == 30 and len({r.workdir for r in runs}) == 30
    rates = {(r.load().task.dataset, r.load().method.name, r.seed): r.load().optim.adapter_lr for r in runs}
    assert rates["digits", "gpart", 2] == tuned.SELECTED["digits", "gpart"]
    assert rates["mnist5k", "head-only", 1] == load_config(
        ROOT / "configs" / "vit_mnist5k_head_only.py").optim.adapter_lr
    sweep_dirs = {r["workdir"] for r in sweep["runs"]}
    assert {str(r.workdir) for r in runs if r.seed == 0 and "head_only" not in r.name} <= sweep_dirs


def test_dry_run_lists_statuses_and_trains_nothing(tmp_path, capsys):
    entries = [(c, ["--config.seed=0"]) for c in CONFIGS] + [(CONFIGS[0], ["--config.seed=1"])]
    suite = _suite_file(tmp_path, entries)
    runs_dir = tmp_path / "runs"
    runs = S.expand(S.load_suite(suite), runs_dir)
    done, partial, conflict = (runs[0].load(), runs[1].load(), runs[2].load())
    for cfg in (done, partial, conflict):
        pathlib.Path(cfg.workdir).mkdir(parents=True)
    pathlib.Path(done.workdir, S.RESULTS).write_text(json.dumps(_results(done, 0.7)))
    pathlib.Path(partial.workdir, S.RUN).write_text(json.dumps({"fingerprint": fingerprint(partial)}))
    pathlib.Path(conflict.workdir, S.RUN).write_text(json.dumps({"fingerprint": "another config"}))

    def never(cfg):
        raise AssertionError("a dry run trains nothing")

    records = S.run_suite(suite, runs_dir=runs_dir, dry_run=True, train_fn=never)
    assert [r["status"] for r in records] == ["done", "partial", "conflict", "pending"]
    assert all(r["outcome"] is None for r in records)
    assert not (runs_dir / "toy.jsonl").exists()
    assert S.summary(records) == "4 runs: 1 done, 1 partial, 1 conflict, 1 pending"
    assert S.main([str(suite), "--dry-run", "--runs-dir", str(runs_dir)]) == 0
    assert "minilm_rt_lora_s0: partial" in capsys.readouterr().out


def test_runner_skips_resumes_logs_failures_and_goes_on(tmp_path):
    entries = [(CONFIGS[0], ["--config.seed=0"]), (CONFIGS[1], ["--config.seed=0"]),
               (CONFIGS[2], ["--config.seed=0"]), (CONFIGS[0], ["--config.seed=1"])]
    suite = _suite_file(tmp_path, entries)
    runs_dir = tmp_path / "runs"
    # first pass: the lora run fails, the r8 run is interrupted (Ctrl-C stops the suite)
    fake = FakeTrain(fail={"minilm_rt_lora"}, interrupt={"minilm_r8_gpart"})
    with pytest.raises(KeyboardInterrupt):
        S.run_suite(suite, runs_dir=runs_dir, train_fn=fake)
    assert [c[:2] for c in fake.calls] == [("minilm_rt_gpart", 0), ("minilm_rt_lora", 0),
                                           ("minilm_r8_gpart", 0)]
    events = [(e["run"], e["event"]) for e in _log(runs_dir)]
    assert events == [("minilm_rt_gpart_s0", "started"), ("minilm_rt_gpart_s0", "finished"),
                      ("minilm_rt_lora_s0", "started"), ("minilm_rt_lora_s0", "failed"),
                      ("minilm_r8_gpart_s0", "started"), ("minilm_r8_gpart_s0", "interrupted")]
    failed = _log(runs_dir)[3]
    assert failed["error"] == "RuntimeError: boom in minilm_rt_lora" and "Traceback" in failed["traceback"]
    dry = S.run_suite(suite, runs_dir=runs_dir, dry_run=True)
    assert [r["status"] for r in dry] == ["done", "partial", "partial", "pending"]

    # second pass: lora still fails, but the others go on; the done run is skipped, partial ones resume
    fake = FakeTrain(fail={"minilm_rt_lora"})
    records = S.run_suite(suite, runs_dir=runs_dir, train_fn=fake)
    assert [r["outcome"] for r in records] == ["skipped", "failed", "finished", "finished"]
    assert [r["status"] for r in records] == ["done", "partial", "partial", "pending"]
    assert fake.calls == [("minilm_rt_lora", 0, True), ("minilm_r8_gpart", 0, True),
                          ("minilm_rt_gpart", 1, False)]

    # third pass: everything left is done; a fourth trains nothing
    fake = FakeTrain()
    assert [r["outcome"] for r in S.run_suite(suite, runs_dir=runs_dir, train_fn=fake)] == [
        "skipped", "finished", "skipped", "skipped"]
    fake = FakeTrain()
    assert {r["outcome"] for r in S.run_suite(suite, runs_dir=runs_dir, train_fn=fake)} == {"skipped"}
    assert fake.calls == []
    assert [r["status"] for r in S.run_suite(suite, runs_dir=runs_dir, dry_run=True)] == ["done"] * 4


def test_runner_only_and_conflict(tmp_path):
    suite = _suite_file(tmp_path, [(CONFIGS[0], ["--config.seed=0"]), (CONFIGS[1], ["--config.seed=0"]),
                                   (CONFIGS[0], ["--config.bogus=1"])])
    with pytest.raises(ConfigError, match="bogus"):  # a bad override is found before anything runs
        S.run_suite(suite, runs_dir=tmp_path / "runs", train_fn=FakeTrain())
    suite = _suite_file(tmp_path, [(CONFIGS[0], ["--config.seed=0"]), (CONFIGS[1], ["--config.seed=0"])])
    fake = FakeTrain()
    records = S.run_suite(suite, runs_dir=tmp_path / "runs", only="*lora*", train_fn=fake)
    assert [r["run"] for r in records] == ["minilm_rt_lora_s0"] and len(fake.calls) == 1
    # another config's run in the workdir is a conflict: left untouched, logged as failed
    wd = tmp_path / "runs" / "minilm_rt_gpart_s0"
    wd.mkdir(parents=True)
    (wd / S.RUN).write_text(json.dumps({"fingerprint": "another config"}))
    fake = FakeTrain()
    records = S.run_suite(suite, runs_dir=tmp_path / "runs", train_fn=fake)
    assert [(r["status"], r["outcome"]) for r in records] == [("conflict", "failed"), ("done", "skipped")]
    assert fake.calls == [] and "another config" in records[0]["error"]
    assert json.loads((wd / S.RUN).read_text()) == {"fingerprint": "another config"}
    assert _log(tmp_path / "runs")[-2]["event"] == "failed"
    # an entry whose config does not load is "invalid": its error is shown, the others still run
    bad = _suite_file(tmp_path, [(CONFIGS[1], ["--config.method.no_such_key=1", "--config.seed=0"]),
                                   (CONFIGS[2], [])], "bad")
    fake, out = FakeTrain(), io.StringIO()
    S.run_suite(bad, runs_dir=tmp_path / "runs", dry_run=True, train_fn=fake, out=out)
    assert "invalid  (ConfigError: unknown config key 'method.no_such_key'" in out.getvalue()
    records = S.run_suite(bad, runs_dir=tmp_path / "runs", train_fn=fake)
    assert [(r["status"], r["outcome"]) for r in records] == [("invalid", "failed"), ("pending", "finished")]
    assert "no_such_key" in records[0]["error"] and len(fake.calls) == 1


def _write_done(run: S.Run, test: float, validation: float, fp: str | None = None) -> None:
    run.workdir.mkdir(parents=True, exist_ok=True)
    (run.workdir / S.RESULTS).write_text(json.dumps(_results(run.load(), test, validation, fp)))


def test_report_mean_std_and_pending(tmp_path):
    entries = [(c, [f"--config.seed={s}"]) for c in CONFIGS for s in (0, 1, 2)]
    suite = _suite_file(tmp_path, entries, name="synthetic")
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    runs = {r.name: r for r in S.expand(S.load_suite(suite), runs_dir)}
    for seed, test in enumerate((0.80, 0.82, 0.87)):
        _write_done(runs[f"minilm_rt_gpart_s{seed}"], test, test - 0.01)
    _write_done(runs["minilm_rt_lora_s1"], 0.75, 0.74)
    _write_done(runs["minilm_rt_lora_s2"], 0.99, 0.99, fp="another config")  # not this run's: not counted
    runs["minilm_r8_gpart_s0"].workdir.mkdir(parents=True)
    (runs["minilm_r8_gpart_s0"].workdir / S.RUN).write_text(
        json.dumps({"fingerprint": fingerprint(runs["minilm_r8_gpart_s0"].load())}))

    runs_dir.mkdir(exist_ok=True)
    (runs_dir / "synthetic.jsonl").write_text(  # the suite log: r8 s1 failed; a cut line is ignored
        json.dumps({"run": "minilm_r8_gpart_s1", "event": "failed"}) + "\n{\"run\": \"minilm_r8\n")
    doc = R.report(suite, runs_dir, out)
    cells = {(c["task"], c["method"]): c for c in doc["cells"]}
    gpart = cells["rotten_tomatoes", "gpart"]
    assert gpart["n"] == 3 and gpart["expected"] == 3 and gpart["seeds"] == [0, 1, 2]
    assert gpart["mean"] == pytest.approx(statistics.fmean([0.80, 0.82, 0.87]))
    assert gpart["std"] == pytest.approx(statistics.stdev([0.80, 0.82, 0.87]))
    assert gpart["validation_mean"] == pytest.approx(statistics.fmean([0.79, 0.81, 0.86]))
    assert gpart["trainable"] == 100 and gpart["total_trainable"] == 107 and gpart["not_done"] == {}
    lora = cells["rotten_tomatoes", "lora"]
    assert lora["n"] == 1 and lora["mean"] == pytest.approx(0.75) and lora["std"] is None
    assert lora["not_done"] == {"minilm_rt_lora_s0": "pending", "minilm_rt_lora_s2": "conflict"}
    r8 = cells["r8", "gpart"]
    assert r8["n"] == 0 and r8["mean"] is None and r8["metric"] == "mcc"
    assert r8["not_done"] == {"minilm_r8_gpart_s0": "partial", "minilm_r8_gpart_s1": "failed",
                              "minilm_r8_gpart_s2": "pending"}
    cut = {(c["task"], c["key"]): c for c in doc["cuts"]}
    assert cut["rotten_tomatoes", "task.train_examples"]["identical"]
    assert cut["rotten_tomatoes", "task.train_examples"]["value"] == 5_632
    assert not cut["rotten_tomatoes", "optim.adapter_lr"]["identical"]  # LoRA's own rate

    written = json.loads((out / "suite_synthetic.json").read_text())
    assert written["cells"] == json.loads(json.dumps(doc["cells"]))
    text = (out / "README.md").read_text()
    mean, std = 100 * gpart["mean"], 100 * gpart["std"]
    assert f"| GPart d=23,040 | 100 (+ 7) | 3/3 | {mean:.1f} +- {std:.1f} | 82.0 |" in text
    assert "| LoRA r=8 | 100 (+ 7) | 1/3, s0 pending, s2 conflict | 75.0 (1 seed) | 74.0 |" in text
    assert ("| GPart d=23,040 | pending | 0/3, s0 partial, s1 failed, s2 pending | pending | pending |"
            in text)
    assert "99.0" not in text  # the other config's result is not shown
    assert "another model and benchmark" in text and "83.7 (23K)" in text
    assert "a fixed subset of 5,632 examples" in text
    assert (out / "suite_synthetic.png").stat().st_size > 0
    assert "RoBERTa-base GLUE avg" in text and "ViT-Base" not in text
    table = R.compact(doc).splitlines()  # the top-level README's view: method x task
    assert table[0] == "| method | trainable | Rotten Tomatoes (accuracy) | Reuters R8 (mcc) |"
    assert f"| GPart d=23,040 | 100 | {mean:.1f} +- {std:.1f} (3/3) | pending |" in table
    assert "| LoRA r=8 | 100 | 75.0 (1/3) |  |" in table

    # a second report replaces its block and keeps the rest of the README
    (out / "README.md").write_text(text + "\nhand-written note\n")
    for seed in (0, 1, 2):
        (runs[f"minilm_rt_gpart_s{seed}"].workdir / S.RESULTS).unlink()
    (runs["minilm_rt_lora_s1"].workdir / S.RESULTS).unlink()
    doc = R.report(suite, runs_dir, out)
    assert all(c["n"] == 0 for c in doc["cells"])
    text = (out / "README.md").read_text()
    assert text.count("<!-- suite_synthetic:start -->") == 1 and "hand-written note" in text
    assert "82.0" not in text
    assert not (out / "suite_synthetic.png").exists()  # no results: no (stale) chart


def test_report_labels_l2_variants_and_uses_vision_columns_for_vit(tmp_path):
    entries = [(f"configs/{c}.py", ["--config.seed=0"])
               for c in ("minilm_rt_gpart", "minilm_rt_gpart_l2", "vit_digits_gpart",
                         "minilm_rt_gpart_balanced")]
    entries.append(("configs/minilm_rt_unilora.py", ["--config.method.d=2880", "--config.seed=0"]))
    suite = _suite_file(tmp_path, entries, name="mixed")
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    runs = {r.name: r for r in S.expand(S.load_suite(suite), runs_dir)}
    _write_done(runs["minilm_rt_gpart_s0"], 0.81, 0.80)
    _write_done(runs["minilm_rt_gpart_l2_s0"], 0.70, 0.69)
    _write_done(runs["vit_digits_gpart_s0"], 0.95, 0.94)
    _write_done(runs["minilm_rt_gpart_balanced_s0"], 0.82, 0.81)
    _write_done(runs["minilm_rt_unilora_d=2880_s0"], 0.78, 0.77)
    doc = R.report(suite, runs_dir, out)
    labels = {c["method_label"]: c for c in doc["cells"]}
    assert labels["GPart d=23,040"]["mean"] == pytest.approx(0.81)  # two cells, not one of two seeds
    assert labels["GPart d=23,040, L2 penalty"]["mean"] == pytest.approx(0.70)
    text = (out / "README.md").read_text()
    assert "| GPart d=23,040, L2 penalty | 100 (+ 7) | 1/1 | 70.0 (1 seed) | 69.0 | - | - |" in text
    # the paper ran neither the balanced scheme nor d = 2,880: no paper number beside them
    assert "| GPart d=23,040, balanced | 100 (+ 7) | 1/1 | 82.0 (1 seed) | 81.0 | - | - |" in text
    assert "| Uni-LoRA d=2,880 (method.d=2880) | 100 (+ 7) | 1/1 | 78.0 (1 seed) | 77.0 | - | - |" in text
    assert "| GPart d=23,040 | 100 (+ 7) | 1/1 | 81.0 (1 seed) | 80.0 | 83.7 (23K) | 86.3 (23K) |" in text
    assert "| GPart d=1,024 | 100 (+ 7) | 1/1 | 95.0 (1 seed) | 94.0 | 86.19 (72K) | 88.14 (144K) |" in text
    assert "**digits (8x8)**, ViT pretrained on Fashion-MNIST" in text


def test_compact_per_task_options_keeps_one_row_per_method(tmp_path):
    entries = [("configs/minilm_rt_gpart.py", ["--config.optim.adapter_lr=0.01", "--config.seed=0"]),
               ("configs/minilm_r8_gpart.py", ["--config.optim.adapter_lr=0.02", "--config.seed=0"]),
               ("configs/minilm_rt_lora.py", ["--config.seed=0"]),
               ("configs/minilm_r8_lora.py", ["--config.seed=0"]),
               ("configs/minilm_rt_gpart.py", ["--config.optim.adapter_lr=0.01", "--config.method.d=2880",
                                               "--config.seed=0"])]
    suite = _suite_file(tmp_path, entries, name="per_task")
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    runs = {r.name: r for r in S.expand(S.load_suite(suite), runs_dir)}
    for name, test in (("minilm_rt_gpart_adapter_lr=0.01_s0", 0.81),
                       ("minilm_r8_gpart_adapter_lr=0.02_s0", 0.9), ("minilm_rt_lora_s0", 0.79),
                       ("minilm_rt_gpart_adapter_lr=0.01_d=2880_s0", 0.77)):
        _write_done(runs[name], test, test)
    doc = R.report(suite, runs_dir, out)
    plain = R.compact(doc).splitlines()  # a row per (method, options): GPart splits in two
    assert len(plain) == 2 + 4
    table = R.compact(doc, per_task_options=True).splitlines()
    assert table[2:] == [  # options by the last component of their key, less those the label shows
        "| GPart d=23,040 | 100 | 81.0 (1/1) at adapter_lr=0.01 | 90.0 (1/1) at adapter_lr=0.02 |",
        "| GPart d=2,880 | 100 | 77.0 (1/1) at adapter_lr=0.01 |  |",
        "| LoRA r=8 | 100 | 79.0 (1/1) | pending |"]
    doc["cells"].append(dict(doc["cells"][0], method_label="GPart d=23,040 (another)"))
    with pytest.raises(ValueError, match="two cells of 'GPart d=23,040' on rotten_tomatoes"):
        R.compact(doc, per_task_options=True)

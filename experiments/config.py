"""Run configs: Python files with ``get_config()`` returning an ``ml_collections.ConfigDict``.

    gpart-jax train --config configs/minilm_rt_gpart.py --config.method.d=2880 --config.seed=3

Overrides are ``--config.<dotted key>=<value>``; the value is parsed by the type of the key's
current value (int, float, bool, str, tuple/list as comma-separated or a Python literal, None
only where the default is None). A key that does not exist is an error that lists the keys.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import pathlib
import sys

import ml_collections

ROOT = pathlib.Path(__file__).parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "minilm_rt_gpart.py"
# Keys that change where or how verbosely a run happens, or how often it is checkpointed, not
# what it computes (dotted for nested keys).
NON_SEMANTIC = ("workdir", "progress", "log_every", "train.checkpoint_every", "train.keep_last")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


def exec_python_file(path: pathlib.Path, what: str, function: str, where: pathlib.Path):
    """Run a config-like Python file and return its module; it must define ``function``.

    The repository root is on ``sys.path`` meanwhile, so such files share defaults through
    ``from configs import common``. ``what``/``where`` name the file's kind and home in errors.
    """
    if not path.is_file():
        raise ConfigError(f"{what} file {path} not found; {what}s live in {where}")
    spec = importlib.util.spec_from_file_location(f"gpart_{what}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    added = str(ROOT) not in sys.path
    if added:
        sys.path.insert(0, str(ROOT))
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(str(ROOT))
    if not hasattr(module, function):
        raise ConfigError(f"{what} file {path} has no {function}() function")
    return module


def load_file(path) -> ml_collections.ConfigDict:
    path = pathlib.Path(path)
    module = exec_python_file(path, "config", "get_config", ROOT / "configs")
    cfg = module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path} must return an ml_collections.ConfigDict")
    return cfg


def _all_keys(cfg, prefix="") -> list[str]:
    keys = []
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys += _all_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


def _parse(text: str, current, key: str):
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key} expects true or false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"--config.{key} expects an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key} expects a number, got {text!r}") from None
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(t for t in text.split(",") if t)
        if isinstance(value, (str, int, float)):
            value = (value,)
        return type(current)(value)
    if current is None:
        if text.lower() == "none":
            return None
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply ``--config.a.b=value`` strings to ``cfg`` (a copy is returned)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    keys = _all_keys(cfg)
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ConfigError(f"cannot read {item!r}: overrides look like --config.key=value")
        key, text = item[len("--config."):].split("=", 1)
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"did you mean --config.{close[0]}? " if close else ""
            raise ConfigError(f"unknown config key {key!r}; {hint}valid keys: {', '.join(sorted(keys))}")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        value = _parse(text, node[leaf], key)
        try:
            with node.unlocked():
                node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"--config.{key}: {e}") from None
    return cfg


def load_config(path=None, overrides: list[str] | None = None) -> ml_collections.ConfigDict:
    """The config of ``path`` (default: the embedded default) with ``overrides`` applied."""
    return apply_overrides(load_file(path or DEFAULT_CONFIG), overrides or [])


def fingerprint(cfg: ml_collections.ConfigDict) -> str:
    """sha256 of the config's canonical JSON, without keys that do not change the result."""
    doc = cfg.to_dict()
    for key in NON_SEMANTIC:
        *parents, leaf = key.split(".")
        node = doc
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

"""Run configs: Python files whose ``get_config(arg)`` returns an ``ml_collections.ConfigDict``.

    python -m experiments train --config configs/minilm.py:task=rt,method=lora --config.seed=1

A config file is a family (``configs/minilm.py``, ``configs/vit.py``, ``configs/smollm2_gsm.py``)
parametrised by the string after ``:`` (``key=value`` pairs, parsed by ``parse_arg``). Overrides
``--config.<dotted key>=<value>`` are ``ml_collections.config_flags``'s: typed by the key's
default (a key whose default is ``None`` is declared with ``config_dict.placeholder(type)``), and
a key the config does not have is an error that names the closest keys. Run the commands from
the repository root: config files import their shared defaults as ``configs.common``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import pathlib

import ml_collections

DEFAULT_CONFIG = "configs/minilm.py"
# Keys that change where or how verbosely a run happens, or how often it is checkpointed, or how
# many processes share it, not what it computes (dotted for nested keys).
NON_SEMANTIC = ("workdir", "progress", "log_every", "train.checkpoint_every", "train.keep_last",
                "distributed")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


def parse_arg(arg: str | None, allowed: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``"task=rt,method=lora"`` as ``{"task": "rt", "method": "lora"}``, each value checked
    against ``allowed[key]``; keys absent from ``arg`` take the first allowed value."""
    values = {k: v[0] for k, v in allowed.items()}
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in allowed:
            raise ConfigError(f"config argument {item!r}: expected key=value with key one of "
                              f"{', '.join(allowed)}")
        if value not in allowed[key]:
            raise ConfigError(f"config argument {key}={value!r}: choose one of "
                              f"{', '.join(allowed[key])}")
        values[key] = value
    return values


def _all_keys(cfg, prefix="") -> list[str]:
    keys = []
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys += _all_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


def load_config(config: str | None = None, overrides: list[str] | None = None) -> ml_collections.ConfigDict:
    """The config ``config`` (``path[:arg]``, default ``configs/minilm.py``) with ``overrides``
    (``--config.key=value`` strings) applied, through ``ml_collections.config_flags``."""
    from absl import flags
    from ml_collections import config_flags

    config = config or DEFAULT_CONFIG
    path = pathlib.Path(config.split(":", 1)[0])
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (run from the repository root; configs "
                          f"live in configs/)")
    overrides = list(overrides or [])
    bad = [o for o in overrides if not o.startswith("--config.") or "=" not in o]
    if bad:
        raise ConfigError(f"cannot read {bad[0]!r}: overrides look like --config.key=value")
    argv = ["experiments", f"--config={config}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    try:
        values(argv)
        cfg = values.config
    except ConfigError:
        raise
    except (AttributeError, KeyError) as e:  # an override of a key the config does not have
        key = _overridden_unknown(config, overrides)
        if key is None:  # the config file itself raised it
            raise ConfigError(f"config {config} could not be loaded: {type(e).__name__}: "
                              f"{str(e).splitlines()[0]}") from None
        raise ConfigError(_unknown_key(config, key)) from None
    except SyntaxError as e:
        raise ConfigError(f"config file {path} has a syntax error: {e.msg} (line {e.lineno})") from None
    except flags.Error as e:
        cause = _raised_in_config(e)
        if isinstance(cause, ConfigError):  # a bad family argument (configs/x.py:task=...)
            raise ConfigError(str(cause)) from None
        if cause is not None:  # get_config raised a ValueError or TypeError
            raise ConfigError(f"config {config} could not be loaded: {type(cause).__name__}: "
                              f"{cause}") from None
        raise ConfigError(f"{e}".replace("flag --config.", "--config.")) from None
    except Exception as e:  # the config file itself raised (its get_config, or on import)
        cause = e.__cause__ or e
        if isinstance(cause, ModuleNotFoundError) and cause.name in ("configs", "experiments"):
            raise ConfigError(f"config {config} imports {cause.name!r}, which is importable from the "
                              f"repository's root only: run the command there") from None
        raise ConfigError(f"config {config} could not be loaded: {type(cause).__name__}: "
                          f"{cause}") from None
    error = getattr(cfg, "_error", None)  # config_flags keeps an OSError of get_config for later
    if isinstance(error, OSError):
        raise ConfigError(f"config {config} could not be loaded: {type(error).__name__}: {error}")
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path} must return an ml_collections.ConfigDict")
    return cfg


def _raised_in_config(error: BaseException) -> BaseException | None:
    """What ``get_config`` raised, under the wrappers of config_flags and absl (which re-raise a
    ValueError or TypeError with the traceback in its message), or ``None``."""
    chain = []
    while error is not None and len(chain) < 8:
        chain.append(error)
        error = error.__cause__ or error.__context__
    wrapped = [i for i, e in enumerate(chain) if "Error whilst parsing config file" in str(e)]
    if not wrapped or wrapped[-1] + 1 >= len(chain):
        return None
    return chain[wrapped[-1] + 1]


def _overridden_unknown(config: str, overrides: list[str]) -> str | None:
    """The dotted key of the first override the config does not have (``None``: all exist)."""
    try:
        keys = set(_all_keys(load_config(config)))
    except ConfigError:
        return None
    for item in overrides:
        key = item[len("--config."):].split("=", 1)[0]
        if key not in keys:
            return key
    return None


def _unknown_key(config: str, key: str) -> str:
    try:
        keys = _all_keys(load_config(config))
    except ConfigError:
        keys = []
    leaf = key.rsplit(".", 1)[-1]
    wanted = ([k for k in keys if k == leaf or k.endswith("." + leaf)]
              or difflib.get_close_matches(key, keys, n=3))
    hint = f"; did you mean {', '.join('--config.' + k for k in wanted[:3])}?" if wanted else ""
    return f"unknown config key {key!r} in an override of {config}{hint}"


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

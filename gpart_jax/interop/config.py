"""The reference's adapter configuration (``adapter_config.json``), parsed and validated.

The reference implementation of GPart (PyTorch, a fork of Hugging Face PEFT, version
0.18.2.dev0) saves an adapter as ``adapter_config.json`` (this schema) and
``adapter_model.safetensors`` (theta under ``base_model.gpart_theta_d`` and the saved modules
under ``base_model.model.<name>``). ``GPartConfig`` refuses, with the reason, the options whose
weights gpart-jax cannot rebuild bit for bit.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gpart_jax import hashing
from gpart_jax.errors import InteropError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
THETA_KEY = "base_model.gpart_theta_d"
SAVED_PREFIX = "base_model.model."
META_MODULES = "gpart_jax.modules"  # safetensors metadata written by export: the base's shapes
REFERENCE_PEFT_VERSION = "0.18.2.dev0"  # the reference's PEFT version, whose format is written
DEFAULT_LAYERS = ("layers", "layer", "h", "block", "blocks")
BIAS_MODES = ("none", "all", "gpart_only")
PARTITION_SCOPES = ("global", "transformer_block")

ModuleOrder = str | Sequence[str]
NameMap = Mapping[str, str]

_UNSUPPORTED = {
    ("projection_type", "fastfood"): (
        "the Fastfood projection is not a parameter partition: its random diagonal and "
        "permutation factors are drawn from torch's random number generator, whose stream "
        "gpart-jax does not reproduce, so the weights it would produce cannot be rebuilt"),
    ("grouping_strategy", "signed_magnitude"): (
        "its groups are formed from the signs and magnitudes of the base weights by the "
        "reference's own torch code, a rule that is not part of the documented format (only the "
        "stateless random grouping is specified bit for bit), so gpart-jax refuses rather than "
        "guess"),
    ("assignment_backend", "materialized"): (
        "its group ids are drawn with torch.randint from a seeded torch.Generator: a different "
        "partition that only torch's random number stream reproduces (the default "
        "assignment_backend='stateless' uses SplitMix64 ids, reproduced exactly)"),
}
_CHOICES = {"projection_type": ("partition",), "grouping_strategy": ("random",),
            "assignment_backend": ("stateless",), "bias": BIAS_MODES,
            "partition_scope": PARTITION_SCOPES}
_FIELDS = ("d", "target_modules", "proj_seed", "isometric", "bias", "partition_scope",
           "fan_in_fan_out", "layers_to_transform", "layers_pattern", "modules_to_save",
           "init_bound", "gpart_dropout", "grouping_strategy", "projection_type",
           "assignment_backend")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _str_tuple(value, name: str, source: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InteropError(f"{source}: {name} must be a list of strings, got {value!r}")
    items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if not all(isinstance(v, str) and v for v in items):
        raise InteropError(f"{source}: {name} must hold non-empty strings, got {value!r}")
    return tuple(items)


@dataclasses.dataclass(frozen=True)
class GPartConfig:
    """The reference's ``GPartConfig``: what ``adapter_config.json`` holds, validated.

    ``target_modules``: a regex (full match on the PEFT module name) or a tuple of names, each
    matching a module whose name equals it or ends with ``"." + name``. ``layers_to_transform``
    (an int or a tuple of ints) keeps only the modules of those layers; it applies, as in PEFT,
    to list targets matched by suffix (not to exact names or a regex), and the layer index is
    the integer component after the last ``layers_pattern`` component (default: after any
    component). ``extra`` keeps the other keys (``peft_type``, ``task_type``,
    ``base_model_name_or_path``, ...) so that a config is written back as it was read.
    Construction validates and refuses the options gpart-jax cannot reproduce.
    """

    d: int
    target_modules: str | tuple[str, ...]
    proj_seed: int = 42
    isometric: bool = True
    bias: str = "none"
    partition_scope: str = "global"
    fan_in_fan_out: bool = False
    layers_to_transform: int | tuple[int, ...] | None = None
    layers_pattern: str | tuple[str, ...] | None = None
    modules_to_save: tuple[str, ...] | None = None
    init_bound: float = 0.0
    gpart_dropout: float = 0.0
    grouping_strategy: str = "random"
    projection_type: str = "partition"
    assignment_backend: str = "stateless"
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=True)
    source: str = dataclasses.field(default="GPartConfig", compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for (key, value), why in _UNSUPPORTED.items():
            if getattr(self, key) == value:
                raise InteropError(f"{src}: {key}={value!r} is not supported: {why}.")
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise InteropError(f"{src}: {key} must be one of {allowed}, got {getattr(self, key)!r}")
        if not _is_int(self.d) or self.d < 1 or self.d > hashing.MAX_D:
            raise InteropError(f"{src}: d must be an integer in [1, 2**31 - 1], got {self.d!r}")
        set_("d", int(self.d))
        if not _is_int(self.proj_seed):
            raise InteropError(f"{src}: proj_seed must be an integer, got {self.proj_seed!r}")
        set_("proj_seed", int(self.proj_seed))
        for key in ("isometric", "fan_in_fan_out"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise InteropError(f"{src}: {key} must be true or false, got {getattr(self, key)!r}")
            set_(key, bool(getattr(self, key)))
        t = self.target_modules
        if t is None or (not isinstance(t, str) and len(t) == 0):
            raise InteropError(f"{src}: target_modules is empty; the adapter targets no module")
        if t == "all-linear":
            raise InteropError(
                f"{src}: target_modules='all-linear' is resolved by PEFT from torch module classes "
                f"and the model's output head, which a state dict does not record; write the "
                f"resolved module names as a list in target_modules (PEFT saves that list when it "
                f"resolves 'all-linear' itself)")
        if isinstance(t, str):
            try:
                re.compile(t)
            except re.error as e:
                raise InteropError(f"{src}: target_modules {t!r} is not a valid regex: {e}") from None
        else:
            set_("target_modules", _str_tuple(t, "target_modules", src))
        ltt = self.layers_to_transform
        if ltt is not None:
            if _is_int(ltt):
                set_("layers_to_transform", int(ltt))
            elif isinstance(ltt, (list, tuple)) and all(_is_int(i) for i in ltt):
                set_("layers_to_transform", tuple(int(i) for i in ltt))
            else:
                raise InteropError(f"{src}: layers_to_transform must be an int or a list of ints, "
                                   f"got {ltt!r}")
        lp = self.layers_pattern
        if lp is not None and not isinstance(lp, str):
            set_("layers_pattern", _str_tuple(lp, "layers_pattern", src))
        if self.modules_to_save is not None:
            set_("modules_to_save", _str_tuple(self.modules_to_save, "modules_to_save", src))
        set_("extra", dict(self.extra))

    @property
    def seed(self) -> int:
        """``proj_seed`` taken mod ``2**64``, as the reference's unsigned arithmetic does."""
        return self.proj_seed & hashing.MASK64

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "adapter_config.json") -> GPartConfig:
        """Parse and validate a reference ``adapter_config.json`` document."""
        if not isinstance(doc, Mapping):
            raise InteropError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        peft_type = doc.get("peft_type")
        if peft_type is not None and str(peft_type).upper() != "GPART":
            raise InteropError(f"{source}: peft_type is {peft_type!r}, not 'GPART': this is not a "
                               f"GPart adapter")
        missing = [k for k in ("d", "target_modules") if doc.get(k) is None]
        if missing:
            raise InteropError(f"{source}: missing key(s) {missing}; a GPart adapter config needs d "
                               f"and target_modules")
        kw = {k: doc[k] for k in _FIELDS if k in doc and doc[k] is not None}
        if "layers_to_transform" in doc:
            kw["layers_to_transform"] = doc["layers_to_transform"]
        if "layers_pattern" in doc:
            kw["layers_pattern"] = doc["layers_pattern"] or None
        extra = {k: v for k, v in doc.items() if k not in _FIELDS}
        return cls(**kw, extra=extra, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``adapter_config.json`` (the fields plus ``extra``)."""
        doc = dict(self.extra)
        for k in _FIELDS:
            v = getattr(self, k)
            doc[k] = list(v) if isinstance(v, tuple) else v
        doc.setdefault("peft_type", "GPART")
        return doc

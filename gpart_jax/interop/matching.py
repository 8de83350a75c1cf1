"""Which modules of a base a reference adapter targets: PEFT's matcher in the library's filters.

PEFT names modules with dots (``bert.encoder.layer.0.attention.self.query``); as a path
(``gpart_jax.paths``) the dots are ``/``. ``target_filter(config)`` is a filter of the library's
vocabulary (``gpart_jax.filters``) that selects, over module paths, what PEFT's
``check_target_module_exists`` selects:

* a regex ``target_modules``: the whole dotted name must match it (``re.fullmatch``);
* a list: a module whose name equals an entry; or whose name ends with ``"." + entry`` (a
  ``Pattern`` of the entry's components, matched at the end of the module path), then kept only
  if its layer index is in ``layers_to_transform`` when that is set. The layer index is the
  integer component after the *last* component matching ``layers_pattern`` (default: any).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpart_jax.filters import All, Any, Filter, Pattern, to_predicate
from gpart_jax.interop.config import GPartConfig


def peft_layer_index(name: str, layers_pattern: str | Sequence[str] | None = None) -> int | None:
    """Layer index of a PEFT module name, as PEFT's ``layers_to_transform`` reads it.

    The integer component that follows the *last* component matching ``layers_pattern``
    (default: any component), provided a component precedes that one and one follows the
    integer: ``bert.encoder.layer.3.attention.self.query`` -> 3.
    """
    patterns = ([r"[^.]*"] if not layers_pattern else
                [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern))
    for pattern in patterns:
        m = re.match(rf".*\.(?:{pattern})\.(?P<index>\d+)\.", name)
        if m is not None:
            return int(m.group("index"))
    return None


def dotted(path: str) -> str:
    return path.replace("/", ".")


def target_filter(config: GPartConfig) -> Filter:
    """The filter (over module paths) of the modules ``config`` targets."""
    targets = config.target_modules
    if isinstance(targets, str):
        rx = re.compile(targets)

        def whole_name(path, leaf):
            return rx.fullmatch(dotted(path)) is not None
        return whole_name
    exact = {t.replace(".", "/") for t in targets}

    def equal_to_an_entry(path, leaf):
        return path in exact
    by_suffix: Filter = Any(*(Pattern(re.escape(t.replace(".", "/"))) for t in targets))
    wanted = config.layers_to_transform
    if wanted is not None and not (isinstance(wanted, tuple) and not wanted):
        layers = {wanted} if isinstance(wanted, int) else set(wanted)

        def in_layers(path, leaf):
            return peft_layer_index(dotted(path), config.layers_pattern) in layers
        by_suffix = All(by_suffix, in_layers)
    return Any(equal_to_an_entry, by_suffix)


def targeted(config: GPartConfig, module_names: Sequence[str]) -> list[str]:
    """The modules of ``module_names`` (PEFT names, dotted) that ``config`` targets, in order.

    Each name is tested as a module path (no leaf), so a pattern matches at its end only, as
    PEFT's suffix rule does.
    """
    predicate = to_predicate(target_filter(config), modules="weights")
    return [n for n in module_names if predicate(n.replace(".", "/"), None)]


def is_targeted(config: GPartConfig, name: str) -> bool:
    """Whether PEFT's matcher selects module ``name`` (its full PEFT name) for ``config``."""
    return bool(targeted(config, [name]))

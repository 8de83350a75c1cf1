"""The text methods' grid, shared by the suites that compare them (not a suite itself).

Every method of ``METHODS`` on each task, each seed, seed-major (a first pass gives every task and
method one seed before any gets a second), each at ``rates[(task, method)]`` or, if absent, its
default rate (then the run is the default-rate suite's own workdir).
"""

from __future__ import annotations

from configs import common
from experiments.suite import entry

METHODS = ("gpart", "unilora", "lora", "gpart_noniso", "head_only", "full")


def rate_overrides(method: str, rate: float | None) -> dict:
    """``{"optim.adapter_lr": rate}`` unless ``rate`` is None or the method's default."""
    if rate is None or rate == common.adapter_lr(common.METHODS[method]):
        return {}
    return {"optim.adapter_lr": rate}


def text_methods(rates: dict[tuple[str, str], float], tasks: tuple[str, ...] = ("rt", "r8"),
                 seeds: tuple[int, ...] = (0, 1, 2)) -> list[tuple[str, list[str]]]:
    return [entry(f"configs/minilm.py:task={task},method={m}", seed,
                  rate_overrides(m, rates.get((task, m))))
            for seed in seeds for task in tasks for m in METHODS]


def scaled_rate(method: str, multiple: float) -> float:
    """``multiple`` x the method's default rate, to 3 significant digits (0.4 x 5e-3 is 0.002,
    not 0.0020000000000000005: the override, and so the workdir name, stays short)."""
    return float(f"{multiple * common.adapter_lr(common.METHODS[method]):.3g}")

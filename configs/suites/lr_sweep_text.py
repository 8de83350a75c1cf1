"""The learning-rate sweep of the text methods on validation (seed 0).

Each adapted method's own rate (theta for GPart and Uni-LoRA, the factors for LoRA, the matrices
for full fine-tuning) at its default (``configs/common.py``; the default-rate suite's own run)
and at multiples of it, every other setting unchanged. The grid: Rotten Tomatoes at 0.4x, 1x, 2x
and 4x, R8 at 1x, 2x and 4x, widened where a pair's best rate sat at the top of its grid until
every best rate is inside: 8x for the four pairs best at 4x (``WIDER_8X``), 16x and 32x for the
three of them best at 8x (``WIDER_16X_32X``; ``tests/experiments/test_suite.py`` derives both
from the committed sweep). Selection is by validation score per task (ties to the lower rate).
The head's rate (4e-3, the same for every method) and GPart non-isometric (the ablation keeps
GPart's rates on purpose) are not swept. 38 runs.

    python -m experiments suite configs/suites/lr_sweep_text.py
    python -m experiments report configs/suites/lr_sweep_text.py
"""

from __future__ import annotations

from configs.suites.text_grid import rate_overrides, scaled_rate
from experiments.suite import entry

METHODS = ("gpart", "unilora", "lora", "full")
MULTIPLES = {"rt": (1, 0.4, 2, 4), "r8": (1, 2, 4)}  # of each method's default rate
WIDER_8X = (("rt", "gpart"), ("rt", "full"), ("r8", "lora"), ("r8", "full"))
WIDER_16X_32X = (("rt", "full"), ("r8", "lora"), ("r8", "full"))


def multiples(task: str, method: str) -> tuple[float, ...]:
    return (MULTIPLES[task] + ((8,) if (task, method) in WIDER_8X else ())
            + ((16, 32) if (task, method) in WIDER_16X_32X else ()))


def get_suite() -> list[tuple[str, list[str]]]:
    return [entry(f"configs/minilm.py:task={task},method={m}", 0,
                  rate_overrides(m, scaled_rate(m, k)))
            for task in MULTIPLES for m in METHODS for k in multiples(task, m)]

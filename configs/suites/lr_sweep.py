"""Issue 7: the learning-rate sweep of stage (a) on validation (seed 0).

Each adapted method's own rate (theta for GPart and Uni-LoRA, the factors for LoRA, the
matrices for full fine-tuning) at its default (``configs/common.py``; the stage (a) run itself,
same workdir) and at multiples of it, every other setting as in stage (a). Rotten Tomatoes was
swept first at 0.4x, 1x and 2x; three of its four best rates were 2x, the top of that range, so
4x was added, and Reuters R8 is swept at 1x, 2x and 4x (0.4x was never the best on Rotten
Tomatoes). Selection is by validation score per task (``experiments/results/README.md``, suite
``lr_sweep``); a method whose best rate is not its default is rerun at that rate for its three
seeds (``configs/suites/stage_a_tuned.py``). The head's rate (4e-3, the same for every method)
and GPart non-isometric (the ablation keeps GPart's rates on purpose) are not swept.
4 methods x (4 rates on Rotten Tomatoes + 3 on R8) = 28 runs, 12 of them new. A third round adds
8x for the four (task, method) pairs whose best rate was 4x, the top of the second round's range
(``EIGHT_X``; ``tests/test_suite.py`` checks them against the committed sweep): 32 runs. Three of
the four were best at 8x, so a fourth round adds 16x and 32x for those three (``PAST_EIGHT_X``;
two multiples at once, so that one round brackets the best rate): 38 runs.

    python -m experiments.suite configs/suites/lr_sweep.py
    python -m experiments.report configs/suites/lr_sweep.py
"""

from __future__ import annotations

from configs import common

METHODS = ("gpart", "unilora", "lora", "full")
# of each method's default rate (common.adapter_lr; 1 is each task's stage (a) run)
MULTIPLES = {"rt": (1, 0.4, 2, 4), "r8": (1, 2, 4)}
EIGHT_X = (("rt", "gpart"), ("rt", "full"), ("r8", "lora"), ("r8", "full"))  # the third round
PAST_EIGHT_X = (("rt", "full"), ("r8", "lora"), ("r8", "full"))  # the fourth: 16x and 32x


def _multiples(task: str, method: str) -> tuple[float, ...]:
    return (MULTIPLES[task] + ((8,) if (task, method) in EIGHT_X else ())
            + ((16, 32) if (task, method) in PAST_EIGHT_X else ()))


def get_suite() -> list[tuple[str, list[str]]]:
    return [common.suite_entry(f"configs/minilm_{task}_{m}.py", m, 0, common.scaled_rate(m, k))
            for task in MULTIPLES for m in METHODS for k in _multiples(task, m)]

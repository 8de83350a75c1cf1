"""Issue 7, stage (a): every method on Rotten Tomatoes and Reuters R8, three seeds.

MiniLM-L6 with GPart (isometric) and Uni-LoRA at d = 23,040 on the query and value kernels (the
paper's GLUE budget), LoRA r = 8, GPart without ``1/sqrt(n_j)`` (non-isometric), the head alone,
and full fine-tuning; seeds 0, 1, 2. Each method runs its ``configs/minilm_<task>_<method>.py``
unchanged (same data cut, epochs, batch and sequence length for every method of a task; see
``configs/common.py``); only the seed is overridden. 2 tasks x 6 methods x 3 seeds = 36 runs.

    python -m experiments.suite configs/suites/stage_a.py --dry-run   # what is done / partial / pending
    python -m experiments.suite configs/suites/stage_a.py             # run what is left (again and again)
    python -m experiments.report configs/suites/stage_a.py            # tables, JSON and chart
"""

from __future__ import annotations

from configs import common

D = 23_040  # the GPart / Uni-LoRA budget; it is the configs' default (checked by tests/test_suite.py)


def get_suite() -> list[tuple[str, list[str]]]:
    """``(config path, overrides)`` of every run, seed-major (a first pass gives every method and
    task one seed before any gets a second)."""
    return common.stage_a_suite({})

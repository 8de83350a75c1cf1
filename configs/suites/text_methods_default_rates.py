"""Every method on Rotten Tomatoes and Reuters R8 at its usual learning rate, three seeds.

MiniLM-L6 with GPart (isometric) and Uni-LoRA at d = 23,040 on the query and value kernels (the
paper's GLUE budget), LoRA r = 8, GPart without ``1/sqrt(n_j)`` (non-isometric), the head alone,
and full fine-tuning; seeds 0, 1, 2. Each method runs ``configs/minilm.py:task=<task>,method=<m>``
unchanged (the same data cut, epochs, batch and sequence length for every method of a task);
only the seed is overridden. 2 tasks x 6 methods x 3 seeds = 36 runs.

    python -m experiments suite configs/suites/text_methods_default_rates.py --dry-run
    python -m experiments suite configs/suites/text_methods_default_rates.py
    python -m experiments report configs/suites/text_methods_default_rates.py
"""

from __future__ import annotations

from configs.suites.text_grid import text_methods


def get_suite() -> list[tuple[str, list[str]]]:
    return text_methods({})

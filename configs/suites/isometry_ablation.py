"""GPart with and without ``1/sqrt(n_j)``, under AdamW's decay and under an L2 penalty, three seeds.

On Rotten Tomatoes at d = 23,040 and the same learning rates: under AdamW's decoupled weight
decay (the default-rate suite's runs themselves: same configs and workdirs, not trained twice)
and under an L2 penalty of the same coefficient (0.1) on theta. 2 x 2 x 3 = 12 runs. The measured
``||delta w||^2 / ||theta||^2`` of every trained theta: ``python -m experiments.analyses.ablation``.

    python -m experiments suite configs/suites/isometry_ablation.py
    python -m experiments report configs/suites/isometry_ablation.py
"""

from __future__ import annotations

from experiments.suite import entry

METHODS = ("gpart", "gpart_noniso", "gpart_l2", "gpart_noniso_l2")
SEEDS = (0, 1, 2)


def get_suite() -> list[tuple[str, list[str]]]:
    return [entry(f"configs/minilm.py:task=rt,method={m}", seed) for seed in SEEDS for m in METHODS]

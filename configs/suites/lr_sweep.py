"""Issue 7: the learning-rate sweep on Rotten Tomatoes validation (seed 0).

Each adapted method's own rate (theta for GPart and Uni-LoRA, the factors for LoRA, the
matrices for full fine-tuning) at its default (``configs/common.py``; the stage (a) run itself,
same workdir) and at 0.4x and 2x of it, every other setting as in stage (a). Selection is by
validation accuracy (``experiments/results/README.md``, suite ``lr_sweep``); a method whose best
rate is not its default is rerun at that rate for its three seeds. The head's rate (4e-3, the
same for every method) and GPart non-isometric (the ablation keeps GPart's rates on purpose) are
not swept. 4 methods x 3 rates = 12 runs, 8 of them new.

    python -m experiments.suite configs/suites/lr_sweep.py
    python -m experiments.report configs/suites/lr_sweep.py
"""

from __future__ import annotations

RATES = {"gpart": (2e-3, 1e-2), "unilora": (2e-3, 1e-2), "lora": (2e-4, 1e-3), "full": (2e-5, 1e-4)}


def get_suite() -> list[tuple[str, list[str]]]:
    entries = []
    for method, rates in RATES.items():
        config = f"configs/minilm_rt_{method}.py"
        entries.append((config, ["--config.seed=0"]))
        entries += [(config, [f"--config.optim.adapter_lr={lr:g}", "--config.seed=0"]) for lr in rates]
    return entries

"""Two more text tasks, a second budget, the balanced partition and VeRA, three seeds each.

* Rotten Tomatoes (the same configs and cut): GPart with the balanced scheme (group sizes
  floor/ceil(N/d)), VeRA r = 256, and GPart / Uni-LoRA at the second budget d = 2,880 (about 614
  weights a group, the paper's RoBERTa-base group size);
* election tweets and 20 Newsgroups: GPart, Uni-LoRA, LoRA r = 8, GPart non-isometric, head
  only, full (query and value);

4 x 3 + 2 x 6 x 3 = 48 runs. Learning rates: there is no CPU time for a sweep per task, so the
rates selected up to 4x (``text_methods_rates_to_4x.py``'s ``SELECTED``) carry over. The Rotten
Tomatoes variants take Rotten Tomatoes' rate of their method (balanced GPart and GPart at
d = 2,880: GPart's 2e-2; Uni-LoRA at d = 2,880: 5e-3). Tweets and 20 Newsgroups take R8's (GPart
1e-2, Uni-LoRA 1e-2, LoRA 2e-3, full 2e-4): R8's cut is 20 Newsgroups' (2,048 examples, 2 epochs,
64 tokens) and tweets' schedule is as short (320 steps). VeRA (no sweep) and GPart
non-isometric keep their defaults. ``tests/experiments/test_suite.py`` checks the rates.

    python -m experiments suite configs/suites/text_more_tasks_and_variants.py
    python -m experiments report configs/suites/text_more_tasks_and_variants.py
"""

from __future__ import annotations

from configs.suites.text_grid import rate_overrides
from experiments.suite import entry

SEEDS = (0, 1, 2)
RT_RATES = {"gpart": 2e-2, "unilora": 5e-3}  # text_methods_rates_to_4x.SELECTED["rt", ...]
SHORT_RATES = {"gpart": 1e-2, "unilora": 1e-2, "lora": 2e-3, "full": 2e-4}  # SELECTED["r8", ...]
RT_VARIANTS = (  # (config method, method whose rate it takes, extra overrides)
    ("gpart_balanced", "gpart", {}), ("vera", "vera", {}),
    ("gpart", "gpart", {"method.d": 2880}), ("unilora", "unilora", {"method.d": 2880}))
TASKS = ("tweets", "20ng")
METHODS = ("gpart", "unilora", "lora", "gpart_noniso", "head_only", "full")


def get_suite() -> list[tuple[str, list[str]]]:
    entries = []
    for seed in SEEDS:
        entries += [entry(f"configs/minilm.py:task=rt,method={m}", seed,
                          rate_overrides(rate_of, RT_RATES.get(rate_of)) | extra)
                    for m, rate_of, extra in RT_VARIANTS]
        entries += [entry(f"configs/minilm.py:task={t},method={m}", seed,
                          rate_overrides(m, SHORT_RATES.get(m)))
                    for t in TASKS for m in METHODS]
    return entries

"""Issue 7, stage (h): the other text tasks, the second budget, balanced GPart and VeRA.

* Rotten Tomatoes (stage (a)'s configs and cut): GPart with the balanced scheme (group sizes
  floor/ceil(N/d)), VeRA r = 256, and GPart / Uni-LoRA at the second budget d = 2,880 (about 614
  weights a group, the paper's RoBERTa-base group size);
* election tweets and 20 Newsgroups (``configs/common.py``: ``minilm_tweets``, ``minilm_20ng``):
  GPart, Uni-LoRA, LoRA r = 8, GPart non-isometric, head only, full (query and value);

three seeds each: 4 x 3 + 2 x 6 x 3 = 48 runs.

Learning rates: there is no CPU time for a sweep per task, so the rates the second sweep round
selected (``configs/suites/stage_a_round2.py``'s ``SELECTED``) carry over. The Rotten Tomatoes
variants take Rotten Tomatoes' rate of their method (balanced GPart and GPart at d = 2,880:
GPart's 2e-2; Uni-LoRA at d = 2,880: 5e-3), so each pairs with a stage_a_round2 row at the same
rate. Tweets and 20 Newsgroups take R8's (GPart 1e-2, Uni-LoRA 1e-2, LoRA 2e-3, full 2e-4):
R8's cut is 20 Newsgroups' (2,048 examples, 2 epochs, 64 tokens) and tweets' schedule is as
short (320 steps). VeRA (no sweep) and GPart non-isometric (stage (a)'s pairing with GPart at
5e-3) keep their defaults. ``tests/test_suite.py`` checks the rates against ``SELECTED``.

    python -m experiments.suite configs/suites/stage_h.py
    python -m experiments.report configs/suites/stage_h.py
"""

from __future__ import annotations

from configs import common

SEEDS = (0, 1, 2)
RT_RATES = {"gpart": 2e-2, "unilora": 5e-3}  # stage_a_round2.SELECTED["rt", ...]
SHORT_RATES = {"gpart": 1e-2, "unilora": 1e-2, "lora": 2e-3, "full": 2e-4}  # SELECTED["r8", ...]
RT_VARIANTS = (  # (config stem, method for the rate, extra overrides)
    ("gpart_balanced", "gpart", ()), ("vera", "vera", ()),
    ("gpart", "gpart", ("--config.method.d=2880",)), ("unilora", "unilora", ("--config.method.d=2880",)))
TASKS = ("tweets", "20ng")
METHODS = ("gpart", "unilora", "lora", "gpart_noniso", "head_only", "full")


def get_suite() -> list[tuple[str, list[str]]]:
    entries = []
    for seed in SEEDS:
        entries += [common.suite_entry(f"configs/minilm_rt_{stem}.py", m, seed, RT_RATES.get(m), extra)
                    for stem, m, extra in RT_VARIANTS]
        entries += [common.suite_entry(f"configs/minilm_{t}_{m}.py", m, seed, SHORT_RATES.get(m))
                    for t in TASKS for m in METHODS]
    return entries

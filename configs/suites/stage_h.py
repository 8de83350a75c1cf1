"""Issue 7, stage (h): the other text tasks, the second budget, balanced GPart and VeRA.

* Rotten Tomatoes (stage (a)'s configs and cut): GPart with the balanced scheme (group sizes
  floor/ceil(N/d)), VeRA r = 256, and GPart / Uni-LoRA at the second budget d = 2,880 (about 614
  weights a group, the paper's RoBERTa-base group size);
* election tweets and 20 Newsgroups (``configs/common.py``: ``minilm_tweets``, ``minilm_20ng``):
  GPart, Uni-LoRA, LoRA r = 8, GPart non-isometric, head only, full (query and value);

three seeds each: 4 x 3 + 2 x 6 x 3 = 48 runs.

    python -m experiments.suite configs/suites/stage_h.py
    python -m experiments.report configs/suites/stage_h.py
"""

from __future__ import annotations

SEEDS = (0, 1, 2)
RT_VARIANTS = (("gpart_balanced", []), ("vera", []),
               ("gpart", ["--config.method.d=2880"]), ("unilora", ["--config.method.d=2880"]))
TASKS = ("tweets", "20ng")
METHODS = ("gpart", "unilora", "lora", "gpart_noniso", "head_only", "full")


def get_suite() -> list[tuple[str, list[str]]]:
    entries = []
    for seed in SEEDS:
        entries += [(f"configs/minilm_rt_{m}.py", [*extra, f"--config.seed={seed}"])
                    for m, extra in RT_VARIANTS]
        entries += [(f"configs/minilm_{t}_{m}.py", [f"--config.seed={seed}"]) for t in TASKS for m in METHODS]
    return entries

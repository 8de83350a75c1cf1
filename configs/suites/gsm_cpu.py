"""Issue 7, stage (g) on the CPU: SmolLM2-135M-Instruct, GPart vs Uni-LoRA at d = 23,040, seed 0.

Both runs train on the same 512 GSM-symbolic problems and are tested on the same 200 GSM8K test
problems (``configs/common.py``, ``smollm2_gsm_cpu``). The untuned model on the same problems,
then the table (``experiments/gsm.py``):

    python -m experiments.suite configs/suites/gsm_cpu.py
    gpart-jax eval --config configs/smollm2_gsm_cpu_gpart.py --untuned --split test \\
        --out experiments/results/gsm_cpu_untuned.json
    gpart-jax eval --config configs/smollm2_gsm_cpu_gpart.py --untuned --split validation \\
        --out experiments/results/gsm_cpu_untuned_validation.json
    python experiments/gsm.py
"""

from __future__ import annotations


def get_suite() -> list[tuple[str, list[str]]]:
    return [(f"configs/smollm2_gsm_cpu_{m}.py", ["--config.seed=0"]) for m in ("gpart", "unilora")]

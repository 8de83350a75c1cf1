"""SmolLM2-135M-Instruct on GSM-style problems at CPU scale: GPart vs Uni-LoRA at d = 23,040, seed 0.

Both runs train on the same 512 GSM-symbolic problems and are tested on the same 200 GSM8K test
problems (``configs/smollm2_gsm.py:scale=cpu``). The untuned model on the same problems, then the
table (``experiments/analyses/gsm.py``):

    python -m experiments suite configs/suites/smollm2_gsm_cpu.py
    python -m experiments eval --config configs/smollm2_gsm.py:scale=cpu,method=gpart --untuned \\
        --split test --out experiments/results/gsm_cpu_untuned.json
    python -m experiments eval --config configs/smollm2_gsm.py:scale=cpu,method=gpart --untuned \\
        --split validation --out experiments/results/gsm_cpu_untuned_validation.json
    python -m experiments.analyses.gsm
"""

from __future__ import annotations

from experiments.suite import entry


def get_suite() -> list[tuple[str, list[str]]]:
    return [entry(f"configs/smollm2_gsm.py:scale=cpu,method={m}", 0) for m in ("gpart", "unilora")]

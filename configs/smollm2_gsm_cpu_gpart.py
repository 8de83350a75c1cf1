"""SmolLM2-135M-Instruct + GPart (isometric), d = 23,040, on GSM-symbolic, cut for the CPU (issue 7, g).

q_proj and v_proj kernels of the 30 layers (N = 13,271,040). A fixed subset of 512 training
problems, 1 epoch (64 steps of 8), 384 tokens; test: greedy exact match and answer loss on 200
fixed GSM8K test problems (``configs/common.py``, ``smollm2_gsm_cpu``). The untuned baseline on
the same problems: ``gpart-jax eval --config configs/smollm2_gsm_cpu_gpart.py --untuned --split test``.
GSM-symbolic's templates were written from GSM8K test problems: GSM8K is not a clean held-out set
(``experiments/data/README.md``).
"""

from configs import common


def get_config():
    return common.smollm2_gsm_cpu("gpart")

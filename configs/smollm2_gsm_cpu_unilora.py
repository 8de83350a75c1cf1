"""SmolLM2-135M-Instruct + Uni-LoRA, d = 23,040 (rank 4), on GSM-symbolic, cut for the CPU (issue 7, g).

Everything as ``configs/smollm2_gsm_cpu_gpart.py`` (the same 512 training and 200 GSM8K test
problems) but the method: Uni-LoRA's theta, projected isometrically into rank-4 LoRA factors of
q_proj and v_proj, at GPart's d.
"""

from configs import common


def get_config():
    return common.smollm2_gsm_cpu("unilora")

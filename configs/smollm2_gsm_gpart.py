"""SmolLM2-135M-Instruct + GPart on GSM-style problems; GSM8K test exact match.

Trains on reasoning-gym's ``gsm_symbolic`` problems (8,884 train, 987 validation): a chat prompt
with the question, then the chain-of-thought solution ending ``#### N``; the loss is on the
solution's tokens only. GPart d = 23,040 over the 30 layers' q_proj and v_proj kernels
(N = 13,271,040); no head. theta lr 5e-3, weight decay 0.1, batch 16, 1 epoch, 512 tokens.
Selection by exact match of greedy generations on 64 validation problems; the test number is
exact match on the 1,319 GSM8K test problems (the number after the last ``####``).

Not the paper's setting (it fine-tunes larger models on GSM8K's training set, which no package
ships). Not run to completion here: it is meant for an accelerator (on the 2-core CPU the tests
run it with 2 of the 30 layers and a few examples). The base
is the 4-bit GGUF dequantized (``experiments/models/llama.py``). GSM-symbolic's templates were
written from GSM8K test problems, so GSM8K is not a clean held-out set
(``experiments/data/README.md``).
"""

import ml_collections

from configs import common


def get_config():
    cfg = common.base("smollm2_gsm_gpart", "gpart")
    cfg.model = ml_collections.ConfigDict({"name": "smollm2", "pooling": "", "num_layers": 0})
    cfg.task = common.text_task("gsm_symbolic", "exact_match", max_length=512, buckets=(128, 256, 384, 512))
    cfg.task.test_dataset = "gsm8k"
    cfg.task.generate_examples = 64
    cfg.task.max_new_tokens = 256
    cfg.method = common.method("gpart", targets=common.QV_LLAMA, modules_to_save=())
    cfg.train.batch_size = 16
    cfg.train.eval_batch_size = 16
    cfg.train.epochs = 1
    return cfg

"""SmolLM2-135M-Instruct fine-tuned on GSM-style problems, tested on GSM8K.

    --config configs/smollm2_gsm.py:scale=cpu,method=gpart     # fits the 2-core CPU
    --config configs/smollm2_gsm.py:scale=full,method=gpart    # the full recipe, for an accelerator

A chat prompt with the question, then the chain-of-thought solution ending ``#### N``; the loss
is on the solution's tokens only. GPart or Uni-LoRA (``method``) at d = 23,040 on the q_proj and
v_proj kernels of the 30 layers (N = 13,271,040); no head. The base is the 4-bit GGUF
dequantized (``experiments/models/smollm2.py``). GSM-symbolic's templates were written from
GSM8K test problems, so GSM8K is not a clean held-out set (``experiments/data/README.md``).

* ``scale=cpu``: a fixed subset of 512 of reasoning-gym's 8,884 GSM-symbolic training problems,
  1 epoch (64 steps of 8), 384 tokens; the held-out answer loss on 128 validation problems
  selects (no generation during training); the test is greedy generation (256 new tokens) on a
  fixed 200 of the 1,319 GSM8K test problems, scored by exact match, and the answer loss on them.
  About 24 minutes a run here. The untuned baseline on the same problems:
  ``python -m experiments eval --config configs/smollm2_gsm.py:scale=cpu,method=gpart --untuned
  --split test``.
* ``scale=full``: every training problem, batch 16, 1 epoch, 512 tokens; selected by exact match
  of greedy generations on 64 validation problems; tested on the 1,319 GSM8K test problems. Not
  the paper's setting (it fine-tunes larger models on GSM8K's training set, which no package
  ships); meant for an accelerator.
"""

from __future__ import annotations

from configs import common
from experiments.config import parse_arg

METHODS = ("gpart", "unilora")


def get_config(arg: str | None = None):
    args = parse_arg(arg, {"scale": ("cpu", "full"), "method": METHODS})
    method = common.METHODS[args["method"]]
    cpu = args["scale"] == "cpu"
    name = f"smollm2_gsm_cpu_{args['method']}" if cpu else f"smollm2_gsm_{args['method']}"
    cfg = common.base(name, method)
    cfg.model = common.model("smollm2")
    if cpu:
        cfg.task = common.task("gsm_symbolic", "loss", max_length=384, buckets=(128, 256, 384))
        cfg.task.train_examples = 512
        cfg.task.validation_examples = 128
        cfg.task.test_examples = 200
        cfg.task.generate_examples = 0
    else:
        cfg.task = common.task("gsm_symbolic", "exact_match", max_length=512,
                               buckets=(128, 256, 384, 512))
        cfg.task.generate_examples = 64
    cfg.task.test_dataset = "gsm8k"
    cfg.task.max_new_tokens = 256
    cfg.method = common.method(method, targets=common.QV_LLAMA, saved=())
    cfg.train.batch_size = 8 if cpu else 16
    cfg.train.eval_batch_size = 16
    cfg.train.epochs = 1
    if cpu:
        cfg.train.checkpoint_every = 8
    return cfg

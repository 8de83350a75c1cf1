"""The default run (``gpart-jax train`` with no argument): MiniLM-L6 + GPart on Rotten Tomatoes.

all-MiniLM-L6-v2 with a new 2-class head; GPart (isometric, stateless scheme, seed 42) with
d = 23,040 over the query and value kernels of the 6 layers (N = 1,769,472 weights, about 77 a
group); theta lr 5e-3 with weight decay 0.1, head lr 4e-3, AdamW, 6% warmup then linear decay,
batch 32, dropout 0.1 (the model's), selection by validation accuracy.

Cut to fit the quick start on a 2-core CPU (about 6 minutes of training, 10 with the install):
a fixed subset of 5,632 of the 10,243 training snippets, 2 epochs (352 steps of 32), 64 tokens
(99% of the snippets fit; length buckets 16/32/48/64); the whole validation (1,228) and test
(1,281) splits. Sized from the step time measured on this machine (a step costs about 0.2 s at
16 tokens, 0.7 s at 32 and 1.6 s at 64: about 0.85 s on average over an epoch's buckets). The
committed run, ``experiments/results/main_job/minilm_rt_gpart.json``, took 351 s for its steps
(median 0.83 s) and 402 s for the whole command (loading, compilation and evaluation included).
Without the cut (10,243 examples, 3 epochs: 961 steps) the steps alone would take about 15
minutes here (estimated from that step time).
"""

from configs import common


def get_config():
    return common.minilm_rt("gpart")

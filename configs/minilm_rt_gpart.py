"""The default run (``gpart-jax train`` with no argument): MiniLM-L6 + GPart on Rotten Tomatoes.

all-MiniLM-L6-v2 with a new 2-class head; GPart (isometric, stateless scheme, seed 42) with
d = 23,040 over the query and value kernels of the 6 layers (N = 1,769,472 weights, about 77 a
group); theta lr 5e-3 with weight decay 0.1, head lr 4e-3, AdamW, 6% warmup then linear decay,
batch 32, dropout 0.1 (the model's), selection by validation accuracy.

Cut to fit the quick start on a 2-core CPU (about 6 minutes of training): TO BE MEASURED.
"""

from configs import common


def get_config():
    return common.minilm_rt("gpart")

"""MiniLM-L6 + GPart with the balanced scheme, d = 23,040 on query and value, on Rotten Tomatoes.

As ``configs/minilm_rt_gpart.py`` except the partition: a keyed permutation of the N = 1,769,472
weights cut into groups of floor/ceil(N/d) = 76 or 77 (``gpart_jax/hashing.py``) instead of the
reference-compatible stateless ids, whose group sizes are multinomial (stage h of issue 7).
"""

from configs import common


def get_config():
    cfg = common.renamed(common.minilm_rt("gpart"), "minilm_rt_gpart_balanced")
    cfg.method.scheme = "balanced"
    return cfg

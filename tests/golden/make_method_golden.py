"""Writes the golden vectors of the baselines' seeded random structures. Run once when a
structure is introduced, never to "fix" a failing test: a changed vector means every saved
adapter of that method changed meaning.

    PYTHONPATH=. python tests/golden/make_method_golden.py
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from gpart_jax.methods import Fastfood, UniLoRA, seeded
from gpart_jax.methods.fastfood import fastfood_blocks
from gpart_jax.methods.vera import vera_matrices

HERE = pathlib.Path(__file__).parent

STREAM_CASES = [  # (seed, stream)
    (0, seeded.VERA_A),
    (42, seeded.FASTFOOD_GAUSS + 3),
    (2**64 - 1, seeded.VERA_B),
    (123_456_789, seeded.FASTFOOD_PERM),
]


def shapes():
    """A small target set (as shapes): two layers of query (6, 5) and value (6, 4) kernels."""
    sds = jax.ShapeDtypeStruct
    return {"params": {f"layer_{i}": {"query": {"kernel": sds((6, 5), jnp.float32)},
                                      "value": {"kernel": sds((6, 4), jnp.float32)}}
                       for i in range(2)}}


def floats(x):
    return [float(v) for v in np.asarray(x).reshape(-1)]


def main():
    streams = []
    for seed, stream in STREAM_CASES:
        streams.append({
            "seed": str(seed), "stream": str(stream),
            "words": [str(int(w)) for w in seeded.words(seed, stream, 8)],
            "uniform": floats(seeded.uniform(seed, stream, 16)),
            "signs": floats(seeded.signs(seed, stream, 16)),
            "gaussian": floats(seeded.gaussian(seed, stream, 16)),
            "permutation": seeded.permutation(seed, stream, 20).tolist(),
        })
    a, b = vera_matrices(seed=5, r=4, n_max=6, m_max=5)
    signs, perm, gauss = fastfood_blocks(seed=7, num_blocks=2, block_size=8)
    ff = Fastfood.create(shapes(), d=5, seed=3)
    theta = jnp.arange(1, 6, dtype=jnp.float32) / 10
    uni = UniLoRA.create(shapes(), d=9, r=2, seed=42)
    doc = {
        "streams": streams,
        "vera": {"seed": 5, "r": 4, "n_max": 6, "m_max": 5, "A": floats(a), "B": floats(b)},
        "fastfood_blocks": {"seed": 7, "num_blocks": 2, "block_size": 8, "signs": floats(signs),
                            "perm": perm.reshape(-1).tolist(), "gauss": floats(gauss)},
        "fastfood_projection": {"d": 5, "seed": 3, "theta": floats(theta),
                                "p_theta": floats(ff.project(theta))},
        "unilora_partition": {"d": 9, "r": 2, "seed": 42,
                              "layout": [e.path for e in uni.gpart.layout],
                              "ids": uni.gpart.global_group_ids().tolist()},
    }
    (HERE / "method_random.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

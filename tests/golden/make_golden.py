"""Writes the project's own golden vectors. Run once when a scheme is introduced, never to
"fix" a failing test: a changed vector means every saved adapter of that scheme changed meaning.

    python tests/golden/make_golden.py
"""

import json
import pathlib

import numpy as np

import gpart_jax as gj
from gpart_jax.layout import natural_sorted

HERE = pathlib.Path(__file__).parent

BALANCED_CASES = [  # (start_offset, numel, d, seed, n_total)
    (0, 1000, 7, 0, 1000),
    (0, 4096, 23040, 42, 1_769_472),
    (1_000_000, 2000, 4096, 1234, 1_769_472),
    (123_456_789, 1000, 65536, 2**64 - 1, 999_999_937),
    (0, 5000, 1, 3, 5000),
    (4_000_000_000, 1000, 1000, 9_223_372_036_854_775_819, 4_294_000_000),
]

# A realistic path set: a linen BERT, an nnx Llama and a ViT, in shuffled order.
PATHS = (
    [f"params/encoder/layer_{i}/attention/{m}/kernel" for i in (0, 1, 2, 10, 11) for m in
     ("query", "key", "value", "output")]
    + [f"params/encoder/layer_{i}/ffn/dense_{j}/kernel" for i in (0, 2, 10) for j in (0, 1)]
    + ["params/classifier/kernel", "params/pooler/dense/kernel", "params/embeddings/word/embedding"]
    + [f"model/layers/{i}/self_attn/{m}/kernel" for i in (0, 1, 9, 10, 29) for m in
       ("q_proj", "k_proj", "v_proj", "o_proj")]
    + [f"model/layers/{i}/mlp/{m}/kernel" for i in (0, 29) for m in ("gate_proj", "up_proj", "down_proj")]
    + [f"vit/blocks_{i}/attn/qkv/kernel" for i in (0, 3, 12)]
    + ["vit/h1/x", "vit/h01/x", "vit/h1a/x", "vit/h/x", "vit/h10/x", "vit/h2/x", "a/b", "a/b/c", "a/c"]
)


def main():
    cases = []
    for start, numel, d, seed, n_total in BALANCED_CASES:
        ids = gj.balanced_group_ids(start, numel, d, seed, n_total)
        cases.append({"start_offset": str(start), "numel": numel, "d": d, "seed": str(seed),
                      "n_total": str(n_total), "ids": ids.tolist()})
    (HERE / "balanced_ids.json").write_text(json.dumps({"cases": cases}) + "\n")

    rng = np.random.default_rng(0)  # only shuffles the input; the order itself is the golden
    shuffled = [PATHS[i] for i in rng.permutation(len(PATHS))]
    (HERE / "natural_order.json").write_text(json.dumps(
        {"input": shuffled, "expected": natural_sorted(shuffled)}, indent=1) + "\n")


if __name__ == "__main__":
    main()

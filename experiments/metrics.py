"""Evaluation metrics of the experiments: accuracy, Matthews correlation, GSM8K exact match (and
its format-free companion, the last number of the generation).

All take host (numpy) arrays of the real examples only; the trainer drops filler rows
(``weight`` 0) before calling them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from experiments.data.sources import final_answer, normalize_number

# Metrics where larger is better; anything else (a loss) is minimized when selecting a model.
MAXIMIZED = ("accuracy", "mcc", "exact_match")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]``: number of examples of true class ``i`` predicted as ``j`` (int64)."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    c = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(c, (labels, predictions), 1)
    return c


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of examples whose prediction equals the label (0 for no examples)."""
    labels = np.asarray(labels)
    return float(np.mean(labels == np.asarray(predictions))) if labels.size else 0.0


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Multi-class Matthews correlation coefficient (Gorodkin, 2004).

    With the confusion matrix ``C`` of ``s`` examples, ``c = trace(C)`` correct ones, ``t_k``
    examples of true class ``k`` and ``p_k`` predicted as ``k``:

        MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))

    For two classes this is the usual ``(TP TN - FP FN) / sqrt(...)``. A constant prediction (or
    a single true class) makes the denominator 0; the MCC is then defined as 0.
    """
    cm = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
    s, c = cm.sum(), np.trace(cm)
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - p @ t) / denominator) if denominator > 0 else 0.0


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """``{"accuracy", "mcc", "examples"}`` of class predictions."""
    return {"accuracy": accuracy(labels, predictions),
            "mcc": matthews_corrcoef(labels, predictions, num_classes),
            "examples": int(np.asarray(labels).size)}


def extract_answer(text: str) -> str | None:
    """The final number a model wrote after its last ``####``, normalized; None without one."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().split("\n")[0]
    tail = tail.split("<|")[0].strip()  # a chat end marker right after the number
    if not tail:
        return None
    try:
        return final_answer("#### " + tail.split()[0])
    except ValueError:
        return None


_NUMBER = re.compile(r"\$?\d[\d,]*(?:\.\d+)?")  # unsigned: a hyphen is more often "minus" or a range


def last_number(text: str) -> str | None:
    """The last unsigned number anywhere in ``text`` (before a chat end marker), normalized; None
    without one. A format-free reading of an answer, for a model that was never taught ``####``
    (GSM8K's answers are non-negative)."""
    numbers = _NUMBER.findall(text.split("<|")[0])
    return normalize_number(numbers[-1].replace("$", "")) if numbers else None


def _share_read_right(generations: Sequence[str], answers: Sequence[str], read) -> float:
    """Fraction of generations whose answer as ``read`` from the text equals the normalized
    answer (0 for none); a length mismatch is a ValueError."""
    if len(generations) != len(answers):
        raise ValueError(f"{len(generations)} generations for {len(answers)} answers")
    if not answers:
        return 0.0
    return float(np.mean([read(g) == normalize_number(a) for g, a in zip(generations, answers, strict=True)]))


def last_number_match(generations: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of generations whose last number (``last_number``) equals the answer: a lenient
    companion of ``exact_match`` that does not require the ``####`` marker."""
    return _share_read_right(generations, answers, last_number)


def exact_match(generations: Sequence[str], answers: Sequence[str]) -> float:
    """GSM8K exact match: the number after the last ``####`` of each generation equals the answer.

    Both sides are normalized (``normalize_number``: no commas or ``$``, ``8.0 -> 8``); a
    generation without ``####`` counts as wrong.
    """
    return _share_read_right(generations, answers, extract_answer)

"""Evaluation metrics (experiments/metrics.py): accuracy, Matthews correlation (binary and
Gorodkin's multi-class R_K), GSM8K exact match and last-number match."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import metrics as metrics


def test_mcc_and_accuracy():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0, 1, 1, 1, 0, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    binary = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.matthews_corrcoef(y, p, 2) == pytest.approx(binary)
    assert metrics.matthews_corrcoef(y, y, 2) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef(y, 1 - y, 2) == pytest.approx(-1.0)
    assert metrics.matthews_corrcoef(y, np.zeros_like(y), 2) == 0.0  # a constant prediction
    assert metrics.accuracy(y, p) == pytest.approx(4 / 6)


def test_multiclass_mcc_is_gorodkins_rk():
    y3 = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    p3 = np.array([0, 2, 1, 0, 2, 2, 1, 0])
    c = metrics.confusion_matrix(y3, p3, 3).astype(float)
    assert c.sum() == 8 and np.trace(c) == 5
    s, t, pk = c.sum(), c.sum(1), c.sum(0)
    expected = (np.trace(c) * s - t @ pk) / np.sqrt((s**2 - pk @ pk) * (s**2 - t @ t))
    assert metrics.matthews_corrcoef(y3, p3, 3) == pytest.approx(expected)
    summary = metrics.classification_metrics(y3, p3, 3)
    assert summary["examples"] == 8 and summary["accuracy"] == pytest.approx(5 / 8)


def test_maximized_metrics():
    assert set(metrics.MAXIMIZED) == {"accuracy", "mcc", "exact_match"} and "loss" not in metrics.MAXIMIZED


def test_exact_match_reads_the_number_after_the_last_marker():
    assert metrics.extract_answer("so 3 + 4 = 7\n#### 7<|im_end|>") == "7"
    assert metrics.extract_answer("#### 1,600 dollars") == "1600"
    assert metrics.extract_answer("#### 2 then #### 8.0") == "8"
    assert metrics.extract_answer("the answer is 7") is None
    assert metrics.exact_match(["#### 7", "#### 5", "no"], ["7", "6", "1"]) == pytest.approx(1 / 3)


def test_last_number_match_needs_no_marker():
    assert metrics.last_number("She pays $1,600.00 in total.<|im_end|> 5") == "1600"
    assert metrics.last_number("3 + 4 = 7, so 10-2.50 is left") == "2.5"
    assert metrics.last_number("#### 7") == "7" and metrics.last_number("no digits") is None
    hits = metrics.last_number_match(["the answer is 7", "#### 5", "none"], ["7", "6", "1"])
    assert hits == pytest.approx(1 / 3)
    assert metrics.exact_match(["the answer is 7"], ["7"]) == 0.0  # the strict score needs ####
    with pytest.raises(ValueError, match="2 generations for 1 answers"):
        metrics.last_number_match(["1", "2"], ["1"])

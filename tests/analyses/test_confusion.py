"""Confusion counts and Wilson intervals, by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reportgen.analyses.confusion import ConfusionCounter, wilson


def test_wilson_interval_known_values():
    # Wilson (1927) / Newcombe (1998) table: 81 of 263 -> 0.2553 .. 0.3662
    lo, hi = wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 100)
    assert 0.5 - lo == pytest.approx(hi - 0.5) and hi - lo < 2 * 1.96 * math.sqrt(0.25 / 100) + 1e-9


def test_counts_rows_true_columns_predicted_and_per_class_rates():
    c = ConfusionCounter(3)
    c.update(torch.tensor([0, 0, 1, 2, 2, 1]), torch.tensor([0, 1, 1, 2, 0, -1]))   # -1: unknown, skipped
    r = c.result(["a", "b", "c"])
    assert r.confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert r.n == 5 and r.accuracy == pytest.approx(3 / 5)
    per = r.per_class()
    assert per["a"]["recall"] == 0.5 and per["a"]["precision"] == 0.5
    assert per["c"]["precision"] == 0.5 and per["c"]["recall"] == 1.0
    assert r.top_confusions(5) == [{"true": "a", "predicted": "c", "count": 1},
                                   {"true": "b", "predicted": "a", "count": 1}]
    assert r.worst_classes(2) == ["a", "b"]


def test_merge_adds_shards():
    a, b, whole = ConfusionCounter(4), ConfusionCounter(4), ConfusionCounter(4)
    rng = np.random.default_rng(0)
    p, y = torch.tensor(rng.integers(0, 4, 100)), torch.tensor(rng.integers(0, 4, 100))
    a.update(p[:40], y[:40])
    b.update(p[40:], y[40:])
    whole.update(p, y)
    a.merge(b)
    assert torch.equal(a.counts, whole.counts)

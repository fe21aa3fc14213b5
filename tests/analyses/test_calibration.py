"""Calibration: known answers (Guo et al. 2017) and parity with torchmetrics and netcal."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.analyses import calibration as cal


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _drawn(n: int, k: int = 10, scale: float = 2.0, seed: int = 0):
    """Logits z and labels drawn from softmax(z): calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    y = (rng.random(n)[:, None] > np.cumsum(_softmax(z), axis=1)).sum(axis=1)
    return z, np.minimum(y, k - 1)


def test_constant_confidence_075_at_accuracy_05_is_ece_025():
    conf = np.full(1000, 0.75)
    correct = np.tile([1.0, 0.0], 500)
    assert cal.ece(conf, correct) == pytest.approx(0.25, abs=1e-12)
    assert cal.adaptive_ece(conf, correct) == pytest.approx(0.25, abs=1e-12)


def test_labels_drawn_from_the_softmax_are_calibrated_and_keep_t_near_1():
    z, y = _drawn(30000)
    r = cal.calibrate(z, y, resamples=50)
    assert r.ece < 0.01, r.ece
    assert r.temperature == pytest.approx(1.0, abs=0.03), r.temperature
    assert not r.temperature_clamped


def test_logits_times_3_fit_t_near_3_and_ece_after_it_is_small():
    z, y = _drawn(30000)
    r = cal.calibrate(3 * z, y, resamples=50)
    assert r.ece > 0.1                              # overconfident before
    assert r.confidence > r.accuracy
    assert r.temperature == pytest.approx(3.0, rel=0.03), r.temperature
    assert r.ece_after_temperature < 0.01, r.ece_after_temperature


def test_the_fitted_temperature_minimizes_the_nll():
    z, y = _drawn(5000, seed=1)
    t = cal.calibrate(2 * z, y, resamples=20).temperature

    def nll(temp: float) -> float:
        lp = torch.log_softmax(torch.tensor(2 * z / temp), 1)
        return float(-lp[torch.arange(len(y)), torch.tensor(y)].mean())
    grid = np.linspace(0.5 * t, 1.5 * t, 201)
    best = grid[np.argmin([nll(v) for v in grid])]
    assert t == pytest.approx(best, rel=0.01)


def test_nll_and_brier_match_their_definitions():
    z, y = _drawn(2000, k=5, seed=2)
    r = cal.calibrate(z, y, resamples=20)
    p = _softmax(z)
    onehot = np.eye(5)[y]
    assert r.nll == pytest.approx(float(-np.log(p[np.arange(len(y)), y]).mean()), rel=1e-9)
    assert r.brier == pytest.approx(float(((p - onehot) ** 2).sum(axis=1).mean()), rel=1e-9)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    z, y = _drawn(3000, seed=3)
    a = cal.calibrate(2 * z, y, resamples=100, seed=7)
    b = cal.calibrate(2 * z, y, resamples=100, seed=7)
    assert a.ece_ci == b.ece_ci
    assert a.ece_ci[0] <= a.ece <= a.ece_ci[1]


def test_batches_and_merged_shards_give_the_one_shot_sums():
    z, y = _drawn(1000, seed=4)
    whole = cal.CalibrationCounter()
    whole.update(torch.tensor(z), torch.tensor(y))
    parts = [cal.CalibrationCounter() for _ in range(3)]
    for i, part in enumerate(parts):
        for s in range(i * 100, 1000, 300):
            part.update(torch.tensor(z[s:s + 100]), torch.tensor(y[s:s + 100]))
    for part in parts[1:]:
        parts[0].merge(part)
    sums, scalars, grid_nll, grid_sums = whole.state()
    m_sums, m_scalars, m_nll, m_grid = parts[0].state()
    assert torch.allclose(sums, m_sums, rtol=1e-12) and torch.allclose(scalars, m_scalars, rtol=1e-12)
    # the temperature grid runs in float32: equal up to its rounding, bin counts exactly
    assert torch.allclose(grid_nll, m_nll, rtol=1e-5)
    assert torch.equal(grid_sums[:, 0], m_grid[:, 0]) and torch.allclose(grid_sums, m_grid, rtol=1e-5)


def test_parity_with_torchmetrics_multiclass_calibration_error():
    tm = pytest.importorskip("torchmetrics.classification")
    z, y = _drawn(5000, seed=5)
    for logits in (z, 3 * z, 0.5 * z):
        ours = cal.calibrate(logits, y, resamples=20).ece
        metric = tm.MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
        theirs = float(metric(torch.tensor(_softmax(logits)), torch.tensor(y)))
        assert ours == pytest.approx(theirs, abs=1e-5)


def test_parity_with_netcal_ece():
    metrics = pytest.importorskip("netcal.metrics")
    z, y = _drawn(5000, seed=6)
    for logits in (z, 3 * z, 0.5 * z):
        ours = cal.calibrate(logits, y, resamples=20).ece
        theirs = float(metrics.ECE(bins=15).measure(_softmax(logits), y))
        assert ours == pytest.approx(theirs, abs=1e-6)

"""SpRAy, regions, the transplant and its statistics, on answers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses import shortcuts as sc
from reportgen.analyses.confusion import wilson


def test_pooled_maps_sum_to_one_and_keep_the_place():
    maps = np.zeros((2, 64, 64))
    maps[0, :8, :8] = 3.0                       # all mass in the top-left cell
    pooled = sc.pool_maps(maps)
    assert pooled.shape == (2, 8, 8)
    assert pooled[0, 0, 0] == pytest.approx(1.0)
    assert np.allclose(pooled[1], 1 / 64)       # no mass: uniform
    assert np.allclose(pooled.sum(axis=(1, 2)), 1.0)


def test_fisher_one_sided_matches_the_hypergeometric_tail():
    # 8 of 20 against 1 of 20: P(X >= 8) with 9 successes in 40, 20 drawn = 0.0098280...
    assert sc.fisher_greater(8, 20, 1, 20) == pytest.approx(0.009828009828, rel=1e-9)
    assert sc.fisher_greater(3, 10, 3, 10) == pytest.approx(0.68575851393, rel=1e-9)
    assert sc.fisher_greater(0, 5, 0, 5) == 1.0
    assert sc.fisher_greater(0, 0, 0, 0) == 1.0
    assert sc.fisher_greater(1, 10, 9, 10) > 0.99        # one-sided: fewer flips is no evidence


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.236593, abs=1e-6), pytest.approx(0.763407, abs=1e-6))
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_spray_finds_three_groups_from_the_eigengap():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (30, 5)), rng.normal(3, 0.1, (20, 5)), rng.normal(-3, 0.1, (10, 5))])
    found = sc.spray(x)
    assert found.k == 3
    assert np.bincount(found.labels).tolist() == [30, 20, 10]      # cluster 0 is the largest
    assert found.labels[:30].tolist() == [0] * 30
    assert len(found.eigenvalues) == sc.MAX_CLUSTERS + 1
    assert found.eigenvalues[2] < 1e-9 < found.eigenvalues[3]
    assert sc.spray(x, seed=0).labels.tolist() == found.labels.tolist()


def test_spray_on_too_few_maps_is_one_cluster():
    found = sc.spray(np.eye(3))
    assert found.k == 1 and found.labels.tolist() == [0, 0, 0]


def test_region_mirror_and_spread():
    m = np.zeros((8, 8))
    m[0, 0], m[0, 1], m[5, 5] = 0.5, 0.2, 0.3
    box, mass = sc.best_region(m, 1 / 16)
    assert box == (0, 0, 1, 2) and mass == pytest.approx(0.7)        # the smaller of two equal boxes
    assert sc.mirrored((0, 0, 2, 2), (8, 8)) == (6, 6, 8, 8)
    centre = sc.mirrored((3, 3, 5, 5), (8, 8))                        # its own mirror: moved far away
    assert not sc._overlap(centre, (3, 3, 5, 5))
    assert sc.to_fractions((0, 0, 2, 2), (8, 8)) == (0.0, 0.0, 0.25, 0.25)
    assert sc.to_pixels((0, 0, 2, 2), (8, 8), (32, 32)) == (0, 0, 8, 8)
    same = np.zeros((5, 8, 8))
    same[:, 2, 3] = 1
    assert sc.location_spread(same) == 0.0
    moving = np.zeros((4, 8, 8))
    for i, (y, x) in enumerate([(0, 0), (0, 7), (7, 0), (7, 7)]):
        moving[i, y, x] = 1
    assert sc.location_spread(moving) == pytest.approx(np.hypot(3.5, 3.5) / 8)


class Corner(nn.Module):
    """Class 1 when the top-left pixel of channel 0 is bright, else class 0."""

    def forward(self, x):
        v = x[:, 0, 0, 0]
        return torch.stack([0.5 - v, v - 0.5], dim=1)


def test_transplant_counts_flips_of_the_pasted_region():
    sources = torch.zeros(2, 1, 8, 8)
    sources[:, 0, 0, 0] = 1.0                   # the "watermark"
    targets = torch.zeros(5, 1, 8, 8)
    assert sc.flips(Corner(), targets, sources, (0, 0, 2, 2), 1, batch_size=2) == 5
    assert sc.flips(Corner(), targets, sources, (6, 6, 8, 8), 1, batch_size=2) == 0
    pasted = sc.paste(targets, sources, (0, 0, 1, 1))
    assert float(pasted.sum()) == 5.0 and float(targets.sum()) == 0.0   # copies, the input untouched


def test_spread_pick_is_even_and_deterministic():
    assert sc.spread_pick(list(range(10)), 3) == [0, 4, 9]
    assert sc.spread_pick([1, 2], 5) == [1, 2]

"""Heatmap rendering: colour scale direction, shared scales, overlays, attribution reduction."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from reportgen.render import heatmap


def _cmap_rgb(name: str, v: float) -> np.ndarray:
    return np.array(matplotlib.colormaps[name](v, bytes=True)[:3])


@pytest.mark.parametrize("cmap", ["inferno", "jet", "viridis"])
def test_hottest_colour_marks_the_highest_value(cmap):
    values = np.zeros((5, 7), dtype=np.float32)
    values[1, 2] = 0.3
    values[3, 5] = 2.0                          # the maximum
    rgb = heatmap.colorize(values, cmap)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[3, 5], _cmap_rgb(cmap, 1.0))
    np.testing.assert_array_equal(rgb[0, 0], _cmap_rgb(cmap, 0.0))
    # and through an opaque overlay, on top of an arbitrary photo
    img = np.full((5, 7, 3), 77, dtype=np.uint8)
    over = heatmap.overlay(img, values, alpha=1.0, cmap=cmap)
    np.testing.assert_array_equal(over[3, 5], _cmap_rgb(cmap, 1.0))
    bar = heatmap.colorbar(cmap, length=32)
    np.testing.assert_array_equal(bar[0, -1], _cmap_rgb(cmap, 1.0))   # high end on the right
    np.testing.assert_array_equal(heatmap.colorbar(cmap, length=32, vertical=True)[0, 0], _cmap_rgb(cmap, 1.0))


def test_shared_scale_keeps_maps_comparable():
    weak, strong = np.full((4, 4), 0.5, np.float32), np.full((4, 4), 1.0, np.float32)
    weak[0, 0], strong[0, 0] = 0.0, 0.0
    lo, hi = heatmap.limits([weak, strong])
    assert (lo, hi) == (0.0, 1.0)
    shared_weak = heatmap.colorize(weak, vmin=lo, vmax=hi)
    alone_weak = heatmap.colorize(weak)
    np.testing.assert_array_equal(shared_weak[1, 1], _cmap_rgb(heatmap.DEFAULT_CMAP, 0.5))
    np.testing.assert_array_equal(alone_weak[1, 1], _cmap_rgb(heatmap.DEFAULT_CMAP, 1.0))


def test_constant_and_nan_maps_are_drawn_not_crashed():
    rgb = heatmap.colorize(np.full((3, 3), np.nan, np.float32))
    assert (rgb == _cmap_rgb(heatmap.DEFAULT_CMAP, 0.0)).all()
    assert (heatmap.colorize(np.ones((3, 3))) == _cmap_rgb(heatmap.DEFAULT_CMAP, 0.0)).all()


def test_overlay_blends_and_resizes():
    img = np.zeros((8, 6, 3), dtype=np.uint8)
    out = heatmap.overlay(img, np.ones((4, 3), np.float32), alpha=0.5, vmin=0, vmax=1)
    assert out.shape == (8, 6, 3)
    np.testing.assert_array_equal(out[2, 2], np.round(_cmap_rgb(heatmap.DEFAULT_CMAP, 1.0) * 0.5 + 0.01))
    grey = heatmap.overlay(np.zeros((8, 6), np.uint8), np.zeros((8, 6)), alpha=0.0)
    assert (grey == 0).all() and grey.shape == (8, 6, 3)
    with pytest.raises(ValueError, match="uint8"):
        heatmap.overlay(np.zeros((8, 6, 3), np.float32), np.zeros((8, 6)))


def test_attribution_map_reduces_channels_and_clips_outliers():
    attr = np.zeros((2, 3, 10, 10), np.float32)
    attr[0, 0] = np.linspace(-1, 1, 100).reshape(10, 10)
    attr[0, 1, 0, 0] = 100.0                          # one outlier pixel
    out = heatmap.attribution_map(attr, percentile=98)
    assert out.shape == (2, 10, 10) and out.min() >= 0 and out.max() == 1.0
    assert np.median(out[0]) > 0.3                     # not squashed by the outlier
    assert (out[1] == 0).all()                         # all-zero attributions stay zero
    signed = heatmap.attribution_map(attr[0], signed=True, percentile=98)
    assert signed.shape == (10, 10) and signed.min() >= -1.0 and signed.max() == 1.0
    assert signed.min() < -0.9                         # negatives use the full lower half
    assert signed[0, 1] < 0 < signed[9, 9]

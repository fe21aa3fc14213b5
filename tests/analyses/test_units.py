"""Units that changed most: known answers on a tiny CNN with one conv2 filter replaced.

conv2's output channel c depends on filter c only, so replacing filter 3 by
noise changes channel 3 and leaves every other channel's activations exactly
as they were (correlation 1). The per-channel numbers come from the CKA
pass's state; they must equal a direct computation on the pooled features,
and the top-k states riding on the same forwards must equal a separate top-k
pass of each model.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from reportgen.analyses import cka as ck
from reportgen.analyses import compare_pass as cp
from reportgen.analyses import topk as tk
from reportgen.analyses import units as un
from reportgen.model.layers import layer_layouts
from tests.analyses.test_cka import Indexed

LAYERS = ["relu1", "conv2", "relu2", "fc"]
CLASSES = ["a", "b", "c", "d"]
CHANGED = 3


def _models(make_cnn):
    base = make_cnn(seed=0)
    new = copy.deepcopy(base)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        new.conv2.weight[CHANGED] = torch.randn(new.conv2.weight[CHANGED].shape, generator=g)
    return base, new


def _plan(base, new, x, k=4):
    layers = ("relu1", "conv2", "relu2")
    return un.UnitsPlan(layers, layer_layouts(base, x[:1], layers), layer_layouts(new, x[:1], layers), k)


def test_the_replaced_filter_is_the_most_changed_channel(make_cnn, make_images):
    base, new = _models(make_cnn)
    x = make_images(n=11, h=12, w=12, seed=3)
    res = cp.compare_pass(base, new, Indexed(x), LAYERS, CLASSES, batch_size=4, grid=2,
                          units=_plan(base, new, x))
    u = res.units
    assert u.layers == ("relu1", "conv2", "relu2")           # fc gives no map: not a candidate
    r = u.correlation("conv2")
    assert np.delete(r, CHANGED) == pytest.approx(1.0, abs=1e-9)
    assert r[CHANGED] < 0.9
    assert un.most_changed(u, "conv2", 2)[0] == CHANGED
    assert u.correlation("relu1") == pytest.approx(1.0, abs=1e-9)  # before the change: nothing moved
    cka = {n: v for n, v in res.cka.layer_values().items()}
    assert un.choose_layer(u, cka) in ("conv2", "relu2")

    # the same numbers straight from the pooled features
    with ck.LayerFeatures(base, ["conv2"], grid=2) as fb, torch.no_grad():
        base(x)
        xb = fb.take()[0].numpy()
    with ck.LayerFeatures(new, ["conv2"], grid=2) as fn, torch.no_grad():
        new(x)
        xn = fn.take()[0].numpy()
    xb, xn = (a - a.mean(axis=0) for a in (xb, xn))
    c = xb.shape[1] // 4
    cov = (xb * xn).sum(axis=0).reshape(c, 4).sum(axis=1)
    vb, vn = ((a * a).sum(axis=0).reshape(c, 4).sum(axis=1) for a in (xb, xn))
    np.testing.assert_allclose(r, cov / np.sqrt(vb * vn), rtol=1e-9)


def test_topk_on_the_same_forwards_equals_a_separate_pass(make_cnn, make_images):
    base, new = _models(make_cnn)
    x = make_images(n=9, h=12, w=12, seed=4)
    plan = _plan(base, new, x, k=3)
    res = cp.compare_pass(base, new, Indexed(x), LAYERS, CLASSES, batch_size=2, units=plan)
    for model, got in ((base, res.units.base), (new, res.units.new)):
        want = tk.stream_topk(model, Indexed(x), list(plan.layers), 3, batch_size=2)
        assert got.n_images == want.n_images == 9
        for name in plan.layers:
            for f in ("values", "images", "positions"):
                np.testing.assert_array_equal(got.layers[name][f], want.layers[name][f])


def test_units_need_pairs(make_cnn, make_images):
    base, new = _models(make_cnn)
    x = make_images(n=4, h=12, w=12)
    with pytest.raises(ValueError, match="pairs mode only"):
        cp.compare_pass(base, new, Indexed(x), ["conv2"], CLASSES, new_layers=["conv2"], mode="matrix",
                        units=_plan(base, new, x))

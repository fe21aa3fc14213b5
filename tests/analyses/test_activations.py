"""Dead versus merely silent channels, on the tiny CNN with biases set by hand."""
from __future__ import annotations

import pytest
import torch

from reportgen.analyses.activations import DEAD_SPREADS, activations, dead_and_silent


def _pre_activations(model, x, conv) -> torch.Tensor:
    seen = {}
    handle = conv.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["out"]


@pytest.mark.parametrize("layer", ["conv1", "relu1", "relu1-inplace"])
def test_a_bias_of_minus_1000_is_dead_on_one_probe(make_cnn, make_images, layer):
    # relu1's output is >= 0 whatever the bias: the analysis reads the ReLU's input
    model = make_cnn(relu="inplace" if layer.endswith("inplace") else "module")
    with torch.no_grad():
        model.conv1.bias[2] = -1000.0
    res = activations(model, make_images(n=1), [layer.split("-")[0]])
    la = res.layers[0]
    assert la.dead.tolist() == [False, False, True, False, False, False]
    assert not la.silent.any()
    assert la.never_fire.tolist() == la.dead.tolist()


def test_a_channel_merely_silent_on_one_probe_is_not_dead(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=1)
    pre = _pre_activations(model, x, model.conv1)
    spread = 1.4826 * float((pre - pre.median()).abs().median())
    with torch.no_grad():   # channel 4 peaks just below zero: quiet on this image, not dead
        model.conv1.bias[4] -= float(pre[:, 4].max()) + 0.5 * spread
    la = activations(model, x, ["relu1"]).layers[0]
    assert la.silent.tolist() == [False, False, False, False, True, False]
    assert not la.dead.any()


def test_dead_and_silent_by_hand():
    # channel 0 and 1 fire, 2 peaks at -1 (quiet), 3 at -29. The layer's spread is
    # robust: 1.4826 x the median absolute deviation from the median (-1 here) is
    # 1.4826 x 1.5 = 2.22, so "far below" is under -6 x 2.22 = -13.3; the dead
    # channel's own values do not widen it
    values = torch.tensor([[[[0.0, 1.0]], [[0.5, 1.5]], [[-2.0, -1.0]], [[-30.0, -29.0]]]])  # (1, 4, 1, 2)
    assert DEAD_SPREADS == 6
    dead, silent = dead_and_silent(values)
    assert dead.tolist() == [False, False, False, True]
    assert silent.tolist() == [False, False, True, False]
    # a dead channel 1000 further down leaves the spread, and so the verdicts, as they were
    values[0, 3] -= 1000.0
    assert [v.tolist() for v in dead_and_silent(values)] == [dead.tolist(), silent.tolist()]


def test_nothing_is_dead_for_certain_without_a_spread():
    # every value equal: no scale to measure "far below zero" against
    values = torch.full((1, 3, 2, 2), -5.0)
    dead, silent = dead_and_silent(values)
    assert not dead.any() and silent.all()

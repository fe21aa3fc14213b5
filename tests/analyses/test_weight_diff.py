"""Weight change between two models of one architecture, on tiny CNNs with known answers."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from reportgen.analyses import weight_diff as wd


def test_identical_models_have_zero_change(make_cnn):
    base = make_cnn(seed=0)
    res = wd.weight_change(base, copy.deepcopy(base))
    assert res.layers == ("conv1", "conv2", "fc")
    assert res.params == (("weight", "bias"),) * 3
    np.testing.assert_array_equal(res.relative, 0.0)
    assert res.total_relative == 0.0
    assert res.sizes.tolist() == [6 * 3 * 9 + 6, 5 * 6 * 9 + 5, 4 * 5 + 4]


def test_a_known_scaling_gives_the_exact_value(make_cnn):
    base = make_cnn(seed=0)
    new = copy.deepcopy(base)
    with torch.no_grad():
        new.conv1.weight.mul_(0.5)    # a power of two: exact in float32, so the answer is exact
        new.conv1.bias.mul_(0.5)      # the whole layer scaled: weight and bias together
        new.fc.bias.add_(1.0)         # only the bias moves: measured against weight and bias
    res = wd.weight_change(base, new).layer_values()
    assert res["conv1"] == pytest.approx(0.5, rel=1e-12)
    assert res["conv2"] == 0.0
    w, b = base.fc.weight.detach().double(), base.fc.bias.detach().double()
    fc_norm = math.sqrt(float((w ** 2).sum() + (b ** 2).sum()))
    assert res["fc"] == pytest.approx(2.0 / fc_norm, rel=1e-6)   # ||(1, 1, 1, 1)|| = 2 (b + 1 rounds)


def test_permuted_channels_are_a_large_change(make_cnn):
    base = make_cnn(seed=0)
    new = copy.deepcopy(base)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    with torch.no_grad():
        new.conv1.weight.copy_(base.conv1.weight[perm])
        new.conv1.bias.copy_(base.conv1.bias[perm])
        new.conv2.weight.copy_(base.conv2.weight[:, perm])
    res = wd.weight_change(base, new).layer_values()
    assert res["conv1"] > 0.8 and res["conv2"] > 0.8   # same function, far-apart weights
    assert res["fc"] == 0.0


def test_a_zero_base_layer_is_measured_against_one(make_cnn):
    base = make_cnn(seed=0)
    new = copy.deepcopy(base)
    with torch.no_grad():
        base.fc.weight.zero_()
        base.fc.bias.zero_()
        new.fc.weight.zero_()
        new.fc.bias.fill_(0.5)
    assert wd.weight_change(base, new).layer_values()["fc"] == pytest.approx(1.0)   # ||0.5 * 1_4||


def test_same_architecture(make_cnn):
    base = make_cnn(seed=0)
    assert wd.same_architecture(base, make_cnn(seed=3))
    other = make_cnn(seed=0, mid=8)
    assert not wd.same_architecture(base, other)
    reasons = wd.architecture_mismatch(base, other)
    assert any("conv1.weight" in r and "(6, 3, 3, 3)" in r for r in reasons)
    assert not wd.same_architecture(base, make_cnn(relu="functional"))     # no relu modules
    assert "modules only in BASE: relu1, relu2" in wd.architecture_mismatch(base, make_cnn(relu="functional"))
    with pytest.raises(ValueError, match="same architecture"):
        wd.weight_change(base, other)


def test_first_layer_filters_and_their_difference(make_cnn):
    base = make_cnn(seed=0)
    new = copy.deepcopy(base)
    with torch.no_grad():
        new.conv1.weight[2].add_(0.25)
    res = wd.filter_difference(base, new)
    assert res.layer == "conv1" and res.filters_total == 6
    assert res.base.shape == res.new.shape == res.diff.shape == (6, 3, 3, 3)
    np.testing.assert_allclose(res.diff[2], 0.25, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(res.diff, 2, axis=0), 0.0)
    np.testing.assert_allclose(res.new - res.base, res.diff, atol=1e-7)
    assert res.diff_limit == pytest.approx(0.25, rel=1e-6)
    assert res.limit == pytest.approx(max(np.abs(res.base).max(), np.abs(res.new).max()))
    deep = wd.filter_difference(base, new, "conv2", max_filters=2)
    assert deep.base.shape == (2, 1, 3, 3) and deep.filters_total == 5    # 6 inputs averaged
    with pytest.raises(ValueError, match="no weight"):
        wd.filter_difference(base, new, "relu1")

"""Feature visualization on a tiny seeded CNN: it works, it is seeded, it leaves no hooks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.analyses import featureviz as fv
from reportgen.model.hooks import count_hooks

MEAN3, STD3 = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are tiny: extra intra-op threads only add sync overhead (10x on a busy CI box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
FAST = fv.FeatureVizParams(steps=64, size=24, lr=0.1, seed=0)


def pattern_net(in_ch: int = 3) -> nn.Module:
    """conv5x5 -> ReLU -> GAP -> linear, with hand-made zero-mean detectors.

    Channel 0 sees vertical stripes (period 4 px), 1 horizontal stripes, 2
    diagonal stripes, 3 a centre-surround blob. Zero-mean kernels and a
    negative bias mean flat images of any colour leave every channel at 0, and
    noise only excites them weakly, so the answer is known: stripes.
    Class c's logit is channel c's mean.
    """
    y, x = np.mgrid[0:5, 0:5].astype(np.float64)
    r2 = (y - 2) ** 2 + (x - 2) ** 2
    kernels = [np.cos(np.pi * x / 2), np.cos(np.pi * y / 2), np.cos(np.pi * (x + y) / 2),
               np.exp(-r2) - 0.35 * np.exp(-r2 / 6.0)]
    conv = nn.Conv2d(in_ch, 4, 5, padding=2)
    fc = nn.Linear(4, 3)
    with torch.no_grad():
        for i, k in enumerate(kernels):
            k = k - k.mean()
            conv.weight[i] = torch.from_numpy(k / np.linalg.norm(k) / np.sqrt(in_ch)).float()
        conv.bias.fill_(-0.1)
        fc.weight.copy_(torch.eye(3, 4))
        fc.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()


def _natural_ish(n: int, c: int, size: int, seed: int = 1) -> torch.Tensor:
    """Uniform noise, smooth blobs and flat greys in [0, 1]: what real inputs roughly look like."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand((n, c, size, size), generator=g)
    blobs = F.interpolate(torch.rand((n, c, 4, 4), generator=g), size=(size, size), mode="bilinear",
                          align_corners=False)
    flat = torch.rand((n, c, 1, 1), generator=g).expand(n, c, size, size)
    return torch.cat([noise, blobs, flat])


def _norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_optimized_image_beats_natural_images_by_far():
    model = pattern_net()
    refs = _norm(_natural_ish(16, 3, 24), MEAN3, STD3)
    objectives = [fv.Objective("channel", c, "1") for c in range(4)] + [fv.Objective("class", 1)]
    res = fv.visualize(model, objectives, 3, MEAN3, STD3, FAST, reference=[refs])
    assert res.images.shape == (5, 24, 24, 3) and res.images.dtype == np.float32
    assert 0.0 <= res.images.min() and res.images.max() <= 1.0
    assert np.all(res.reference_max > 0)
    assert np.all(res.ratio() >= 3.0), res.ratio()
    # the recorded achievement is the objective on the returned image itself
    again = fv.reference_values(model, [_norm(torch.from_numpy(res.images).permute(0, 3, 1, 2),
                                                MEAN3, STD3)], objectives)
    np.testing.assert_allclose(np.diag(again), res.activation, rtol=1e-4, atol=1e-5)
    # and it found the known answer: stripes across x for channel 0, across y for channel 1
    grey = res.images.mean(axis=3)
    dx = np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
    dy = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))
    assert dx[0] > 2 * dy[0] and dy[1] > 2 * dx[1]


def test_same_seed_same_images_and_batch_size_does_not_matter(make_cnn):
    model = make_cnn(seed=0)
    objectives = [fv.Objective("channel", c, "conv2") for c in range(3)]
    params = fv.FeatureVizParams(steps=6, size=12, seed=3)
    a = fv.visualize(model, objectives, 3, MEAN3, STD3, params)
    b = fv.visualize(model, objectives, 3, MEAN3, STD3, params)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.activation, b.activation)
    one_by_one = fv.visualize(model, objectives, 3, MEAN3, STD3,
                              fv.FeatureVizParams(steps=6, size=12, seed=3, batch_size=1))
    np.testing.assert_allclose(one_by_one.images, a.images, atol=1e-5)
    other = fv.visualize(model, objectives, 3, MEAN3, STD3, fv.FeatureVizParams(steps=6, size=12, seed=4))
    assert not np.allclose(other.images, a.images)


def test_greyscale_model():
    model = pattern_net(in_ch=1)
    res = fv.visualize(model, [fv.Objective("channel", 0, "1"), fv.Objective("class", 1)], 1,
                       [0.5], [0.25], FAST, reference=[_norm(_natural_ish(8, 1, 24), [0.5], [0.25])])
    assert res.images.shape == (2, 24, 24, 3)
    np.testing.assert_array_equal(res.images[..., 0], res.images[..., 2])   # grey shown as RGB
    assert res.meta["decorrelate"] is False
    assert np.all(res.ratio() >= 3.0), res.ratio()


@pytest.mark.parametrize("fft,decorrelate,tv", [(False, False, 0.1), (True, False, 0.0)])
def test_parameterizations_run(make_cnn, fft, decorrelate, tv):
    model = make_cnn(seed=0)
    params = fv.FeatureVizParams(steps=4, size=16, fft=fft, decorrelate=decorrelate, tv=tv)
    res = fv.visualize(model, [fv.Objective("channel", 1, "relu1")], 3, MEAN3, STD3, params)
    assert np.isfinite(res.images).all()


def test_no_hooks_left_and_model_untouched_even_on_error(make_cnn):
    model = make_cnn(seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fv.visualize(model, [fv.Objective("channel", 0, "relu2")], 3, MEAN3, STD3,
                 fv.FeatureVizParams(steps=2, size=16))
    assert count_hooks(model) == 0
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="out of range"):
        fv.visualize(model, [fv.Objective("channel", 99, "relu2")], 3, MEAN3, STD3,
                     fv.FeatureVizParams(steps=2, size=16))
    assert count_hooks(model) == 0
    with pytest.raises(ValueError, match="unknown layer"):
        fv.visualize(model, [fv.Objective("channel", 0, "nope")], 3, MEAN3, STD3,
                     fv.FeatureVizParams(steps=2, size=16))
    assert count_hooks(model) == 0 and model.training


def test_bad_inputs():
    with pytest.raises(ValueError):
        fv.Objective("neuron", 0)
    with pytest.raises(ValueError):
        fv.Objective("channel", 0)


def test_top_channels_and_budget():
    acts = np.array([[0.0, 2.0, 1.0, 2.0], [0.0, 2.0, 5.0, 2.0]])
    assert fv.top_channels(acts, 3) == [2, 1, 3]          # ties: lower index first
    macs = {s: s * s * 1000 for s in range(16, 257, 16)}
    size, steps = fv.plan_budget(macs.get, 128, 128, 4, budget_macs=3.0 * 4 * 128 * 128 * 128 * 1000)
    assert (size, steps) == (128, 128)                    # fits: nothing shrinks
    size, steps = fv.plan_budget(macs.get, 128, 128, 4, budget_macs=1e7)
    assert (size, steps) == (64, 32)                      # floors reached, never below
    size, steps = fv.plan_budget(macs.get, 128, 128, 4, budget_macs=3.0 * 4 * 96 * 96 * 96 * 1000)
    assert size <= 112 and steps <= 128 and 3.0 * 4 * steps * macs[size] <= 3.0 * 4 * 96 ** 3 * 1000


def test_forward_macs_none_for_fixed_size_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 14 * 14, 3))
    assert fv.forward_macs(model, 3, 16) is not None
    assert fv.forward_macs(model, 3, 32) is None
    assert count_hooks(model) == 0


def test_redirected_relu_gradient_is_relus_unless_a_whole_image_is_dead():
    """Olah et al.'s redirect: a plain ReLU gradient, except for an image whose units all
    block it, where the gradient flows on but never pushes a negative input lower."""
    from reportgen.analyses.featureviz import _RedirectedReLU

    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5)
    x[1] = -x[1].abs() - 0.1                     # image 1: every unit dead
    x.requires_grad_(True)
    grad = torch.randn(3, 4, 5, 5)
    (got,) = torch.autograd.grad(_RedirectedReLU.apply(x), x, grad)
    xd = x.detach()
    assert torch.equal(got[0], torch.where(xd[0] < 0, 0.0, grad[0]))
    assert torch.equal(got[2], torch.where(xd[2] < 0, 0.0, grad[2]))
    assert torch.equal(got[1], torch.where(grad[1] > 0, 0.0, grad[1]))   # only the raising part flows
    assert (got[1] != 0).any()


def test_redirected_clipped_relu_counts_saturated_units_as_off():
    """ReLU6: the plain gradient passes where 0 < x < 6; an image whose units are all off or
    saturated gets the redirect, which never pushes a negative unit lower nor a saturated one higher."""
    from reportgen.analyses.featureviz import _RedirectedReLU

    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5) * 4 + 3
    x[1] = torch.where(x[1] > 3, x[1].abs() + 6.5, -x[1].abs() - 0.1)   # image 1: off or saturated
    x.requires_grad_(True)
    grad = torch.randn(2, 4, 5, 5)
    out = _RedirectedReLU.apply(x, 6.0)
    assert float(out.max()) == 6.0
    (got,) = torch.autograd.grad(out, x, grad)
    xd = x.detach()
    assert torch.equal(got[0], torch.where((xd[0] < 0) | (xd[0] > 6), 0.0, grad[0]))
    blocked = ((xd[1] < 0) & (grad[1] > 0)) | ((xd[1] > 6) & (grad[1] < 0))
    assert torch.equal(got[1], torch.where(blocked, 0.0, grad[1])) and (got[1] != 0).any()


class _NormAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: batch norm, then its ``act`` module."""

    def __init__(self, c):
        super().__init__(c)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        return self.act(super().forward(x))


def test_objectives_on_a_clipped_output_read_the_preactivation():
    """A channel objective on a ReLU6 (or a norm+ReLU6 block) is the clip's input: it can grow
    past 6 and go below 0, where the clipped output would be stuck."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _NormAct(4), nn.Conv2d(4, 4, 1), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    assert fv.preactivation_module(model, "1") == "1.act" and fv.preactivation_module(model, "3") == "3"
    assert fv.preactivation_module(model, "0") is None and fv.preactivation_module(model, "2") is None
    x = torch.randn(2, 3, 8, 8) * 20
    objectives = [fv.Objective("channel", c, "1") for c in range(4)] + \
                 [fv.Objective("channel", c, "3") for c in range(4)]
    got = fv.objective_values(model, x, objectives, pair=False)
    with torch.no_grad():
        pre1 = nn.BatchNorm2d.forward(model[1], model[0](x))
        pre3 = model[2](torch.clamp(pre1, 0, 6))
    want = torch.cat([pre1.mean(dim=(2, 3)), pre3.mean(dim=(2, 3))], dim=1)
    torch.testing.assert_close(got, want)
    assert float(got.max()) > 6 or float(got.min()) < 0

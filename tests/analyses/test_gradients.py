"""Gradient attributions: parity with Captum, every ReLU form, IG completeness, SmoothGrad."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.analyses import gradients as G
from reportgen.analyses.explain import explain

captum_attr = pytest.importorskip("captum.attr")


def _close(ours: np.ndarray, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    """Same float32 gradients from the same autograd graph, so only summation order differs:
    1e-5 relative to the attribution's scale is ~100x float32 epsilon."""
    ref = ref.detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()))


TARGETS = [0, 3, 1]


@pytest.mark.parity
def test_saliency_matches_captum(make_cnn, make_images):
    model, x = make_cnn(), make_images()
    ref = captum_attr.Saliency(model).attribute(x, target=TARGETS, abs=True)
    _close(explain(model, x, "saliency", target=TARGETS), ref)


def test_saliency_of_a_linear_model_is_its_weight_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    x = torch.randn(2, 2, 3, 3)
    out = explain(model, x, "saliency", target=[1, 2])
    w = model[1].weight.detach().abs().reshape(4, 2, 3, 3)
    np.testing.assert_allclose(out, w[[1, 2]].numpy(), rtol=1e-6)


@pytest.mark.parity
@pytest.mark.parametrize("method,cls", [("deconvnet", "Deconvolution"), ("guided_backprop", "GuidedBackprop")])
def test_modified_relu_methods_match_captum(make_cnn, make_images, method, cls):
    model, x = make_cnn(relu="module"), make_images()   # Captum's hooks need out-of-place nn.ReLU
    ref = getattr(captum_attr, cls)(model).attribute(x, target=TARGETS)
    _close(explain(model, x, method, target=TARGETS), ref)


@pytest.mark.parametrize("relu", ["inplace", "functional", "tensor"])
@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop"])
def test_modified_relu_methods_see_every_relu_form(make_cnn, make_images, method, relu):
    # same weights; only how forward calls ReLU differs. Module hooks would miss
    # F.relu / x.relu_() and silently return plain gradients.
    x = make_images()
    expected = explain(make_cnn(relu="module"), x, method, target=TARGETS)
    got = explain(make_cnn(relu=relu), x, method, target=TARGETS)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    plain = explain(make_cnn(relu=relu), x, "saliency", target=TARGETS)
    assert not np.allclose(np.abs(got), plain)


def test_relu_override_leaves_torch_as_it_was(make_cnn, make_images):
    model, x = make_cnn(relu="functional"), make_images(n=1)
    with pytest.raises(ValueError, match="out of range"):
        explain(model, x, "guided_backprop", target=99)
    assert torch._C._len_torch_function_stack() == 0
    t = torch.tensor([-1.0, 2.0], requires_grad=True)
    F.relu(t * 3).sum().backward()
    assert t.grad.tolist() == [0.0, 3.0]


def test_modified_relu_methods_refuse_models_without_visible_relus(make_images):
    x = make_images(n=1, h=8, w=8)
    torch.manual_seed(0)
    gelu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    with pytest.raises(ValueError, match="does not apply.*nonlinearities are GELU"):
        explain(gelu, x, "guided_backprop")
    silu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.SiLU(), nn.Hardswish(), nn.Flatten(), nn.Linear(72, 3)).eval()
    with pytest.raises(ValueError, match=r"Hardswish, SiLU \(x·sigmoid\(x\)\)"):
        explain(silu, x, "deconvnet")
    relu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    scripted = torch.jit.script(relu)
    with pytest.raises(ValueError, match="TorchScript"):
        explain(scripted, x, "deconvnet")


# --------------------------------------------------------------------------- clipped ReLUs

@pytest.mark.parity
@pytest.mark.parametrize("clip", [lambda: nn.ReLU6(), lambda: nn.ReLU6(inplace=True),
                                  lambda: nn.Hardtanh(0.0, 6.0)])
@pytest.mark.parametrize("method,cls", [("deconvnet", "Deconvolution"), ("guided_backprop", "GuidedBackprop")])
def test_clipped_relu_methods_match_captum_where_the_clip_does_not_trigger(make_cnn, make_images,
                                                                           method, cls, clip):
    """A ReLU6 model whose units all stay under 6 computes what its ReLU twin does: the
    reference is Captum's (module hooks on nn.ReLU) on the twin."""
    x = make_images() * 0.5
    relu = make_cnn(relu="module")
    relu6 = make_cnn(relu="module")
    relu6.relu1, relu6.relu2 = clip(), clip()
    peak = []
    hooks = [m.register_forward_pre_hook(lambda m, a: peak.append(float(a[0].detach().max())))
             for m in (relu6.relu1, relu6.relu2)]
    ref = getattr(captum_attr, cls)(relu).attribute(x, target=TARGETS)
    got = explain(relu6, x, method, target=TARGETS)
    for h in hooks:
        h.remove()
    assert 0 < max(peak) < 6, peak            # the clip never triggers, the gate does
    _close(got, ref)
    assert not np.allclose(got, explain(relu6, x, "saliency", target=TARGETS))


@pytest.mark.parametrize("clip,cap", [(lambda: nn.ReLU6(), 6.0), (lambda: nn.Hardtanh(0.0, 2.0), 2.0)])
def test_guided_backprop_through_a_saturating_clipped_relu_follows_the_relu_rule(clip, cap):
    """Where units saturate: the gradient passes where 0 < z < cap and the upstream gradient
    is positive (the ReLU rule on the positive part), written out by hand here."""
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 3)
    model = nn.Sequential(conv, clip(), nn.Flatten(), fc).eval()
    x = torch.randn(2, 3, 6, 6) * 2 * cap
    z = conv(x).detach()
    assert ((z > cap).float().mean() > 0.1) and ((z < 0).float().mean() > 0.1)
    targets = [0, 2]
    upstream = fc.weight.detach()[targets].view(2, 4, 6, 6)
    passed = upstream.clamp(min=0) * ((z > 0) & (z < cap))
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(conv(xr), xr, grad_outputs=passed)
    np.testing.assert_allclose(explain(model, x, "guided_backprop", target=targets), expected.numpy(),
                               rtol=1e-5, atol=1e-6)
    deconv = torch.autograd.grad(conv(xr), xr, grad_outputs=upstream.clamp(min=0))[0]
    np.testing.assert_allclose(explain(model, x, "deconvnet", target=targets), deconv.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_hardtanh_that_is_not_a_clipped_relu_is_not_overridden(make_images):
    x = make_images(n=1, h=8, w=8)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Hardtanh(-1.0, 1.0), nn.Flatten(), nn.Linear(72, 3)).eval()
    with pytest.raises(ValueError, match="does not apply"):
        explain(model, x, "guided_backprop")


@pytest.mark.parity
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left"])
@pytest.mark.parametrize("baseline", ["zero", "tensor"])
def test_integrated_gradients_matches_captum(make_cnn, make_images, method, baseline):
    model, x = make_cnn(), make_images()
    b = 0.0 if baseline == "zero" else make_images(n=1, seed=7)[0] * 0.5
    ref_b = 0.0 if baseline == "zero" else b[None].expand_as(x)
    ref = captum_attr.IntegratedGradients(model).attribute(x, baselines=ref_b, target=TARGETS,
                                                            n_steps=16, method=method)
    ours = explain(model, x, "integrated_gradients", target=TARGETS, steps=16, rule=method,
                   baseline=b, batch_size=20)
    _close(ours, ref)


def _smooth_cnn() -> nn.Module:
    """Tanh/Softplus/average-pool: a smooth path integrand, where quadrature error is tiny."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.Softplus(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 4)).eval()


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("baseline", [0.0, 0.3, "random"])
def test_integrated_gradients_completeness(make_cnn, make_images, baseline, smooth):
    model = _smooth_cnn() if smooth else make_cnn()
    x = make_images() * 2
    b = make_images(n=3, seed=5) if baseline == "random" else baseline
    attr, delta = G.integrated_gradients_with_delta(model, x, TARGETS, steps=32, baseline=b)
    with torch.no_grad():
        base = b if torch.is_tensor(b) else torch.full_like(x, b)
        gap = (model(x) - model(base))[range(3), TARGETS].numpy()
    sums = attr.reshape(3, -1).sum(axis=1)
    # the reported delta is exactly the completeness gap sum(attr) - (F(x) - F(baseline)) ...
    np.testing.assert_allclose(sums - gap, delta, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(sums - gap) <= np.abs(delta) + 1e-6)
    if smooth:
        # ... and on a smooth model 32 Gauss-Legendre nodes all but close it. (ReLU
        # kinks and max-pool switches are what a non-zero delta reveals; the
        # ReLU model above only checks that delta reports them faithfully.)
        assert np.all(np.abs(delta) <= 1e-3 * np.abs(gap) + 1e-6)


def test_integrated_gradients_batch_size_is_only_a_speed_knob(make_cnn, make_images):
    model, x = make_cnn(), make_images()
    runs = [explain(model, x, "integrated_gradients", steps=10, batch_size=b) for b in (1, 7, 1000)]
    for r in runs[1:]:
        np.testing.assert_allclose(r, runs[0], rtol=1e-5, atol=1e-9)


def test_integrated_gradients_checks_its_parameters(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=2)
    with pytest.raises(ValueError, match="gausslegendre"):
        explain(model, x, "integrated_gradients", rule="simpson")
    with pytest.raises(ValueError, match="does not broadcast"):
        explain(model, x, "integrated_gradients", baseline=torch.zeros(3, 5, 5))


def test_smoothgrad_is_seeded_and_per_image(make_cnn, make_images):
    model, x = make_cnn(), make_images()
    a = explain(model, x, "smoothgrad", target=TARGETS, samples=4, batch_size=3)
    b = explain(model, x, "smoothgrad", target=TARGETS, samples=4, batch_size=8)
    alone = np.concatenate([explain(model, x[i:i + 1], "smoothgrad", target=TARGETS[i], samples=4)
                            for i in range(3)])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(a, alone, rtol=1e-5, atol=1e-9)
    other = explain(model, x, "smoothgrad", target=TARGETS, samples=4, seed=1)
    assert not np.allclose(a, other)
    # zero noise is the plain gradient
    plain = explain(model, x, "smoothgrad", target=TARGETS, samples=2, noise_level=0.0)
    np.testing.assert_allclose(np.abs(plain), explain(model, x, "saliency", target=TARGETS), rtol=1e-6)


@pytest.mark.parametrize("method", ["saliency", "deconvnet", "guided_backprop", "integrated_gradients", "smoothgrad"])
def test_batch_of_three_equals_each_alone(make_cnn, make_images, method):
    model, x = make_cnn(), make_images()
    params = {"steps": 8} if method == "integrated_gradients" else {"samples": 4} if method == "smoothgrad" else {}
    together = explain(model, x, method, **params)
    alone = np.concatenate([explain(model, x[i:i + 1], method, **params) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-9)


def test_model_grads_are_untouched(make_cnn, make_images):
    model, x = make_cnn(), make_images()
    for method in ("saliency", "guided_backprop", "integrated_gradients"):
        explain(model, x, method, **({"steps": 4} if method == "integrated_gradients" else {}))
    assert all(p.grad is None for p in model.parameters())

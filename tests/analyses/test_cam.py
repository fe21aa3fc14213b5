"""The CAM family: parity with pytorch-grad-cam, hand-checked Grad-CAM++, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses import cam as cam_mod
from reportgen.analyses.explain import explain

gradcam_lib = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

CAM_METHODS = ["cam", "gradcam", "gradcampp", "scorecam", "eigencam"]

# Parity tolerance against pytorch-grad-cam: both maps live in [0, 1].
# Ours is ReLU -> torch bilinear upsample -> min-max; theirs is ReLU -> min-max
# with a 1e-7 guard -> cv2.resize (float32, half-pixel centres, the same
# bilinear kernel) -> min-max again. Min-max commutes with bilinear
# interpolation (both affine / convex), so the only differences are the 1e-7
# guards and float32 rounding in different orders: 1e-5 absolute is ~100x
# that noise and still far below one 8-bit colour step (1/255).
ATOL = 1e-5


def _reference(cls, model, layer, x, targets, **attrs):
    with cls(model=model, target_layers=[layer], **attrs.pop("init", {})) as ref:
        for k, v in attrs.items():
            setattr(ref, k, v)
        return ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


@pytest.mark.parity
@pytest.mark.parametrize("layer", ["conv2", "relu2", "conv1"])
@pytest.mark.parametrize("method,cls_name", [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus")])
def test_gradient_cams_match_pytorch_grad_cam(make_cnn, make_images, method, cls_name, layer):
    model, x = make_cnn(), make_images(n=3, h=16, w=12)      # non-square, 8x6 maps after the pool
    targets = [0, 3, 1]
    ours = explain(model, x, method, target=targets, layer=layer)
    ref = _reference(getattr(gradcam_lib, cls_name), model, dict(model.named_modules())[layer], x, targets)
    assert ours.shape == ref.shape == (3, 16, 12)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parity
def test_scorecam_matches_pytorch_grad_cam_at_input_resolution(make_cnn, make_images):
    # conv1 keeps the input's 16x12, so no mask upsampling happens on either side
    model, x = make_cnn(), make_images(n=2)
    ours = explain(model, x, "scorecam", target=[2, 1], layer="conv1", batch_size=4)
    ref = _reference(gradcam_lib.ScoreCAM, model, model.conv1, x, [2, 1], batch_size=4)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parity
def test_scorecam_matches_pytorch_grad_cam_with_upsampled_masks(make_cnn, make_images, monkeypatch):
    # pytorch-grad-cam upsamples Score-CAM's masks with nn.UpsamplingBilinear2d,
    # i.e. align_corners=True, unlike its own final cv2 resize and unlike the
    # Score-CAM authors' code (align_corners=False), which we follow. Give it our
    # resampling to compare everything else (mask scaling, scores, softmax, sum).
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d",
                        lambda size: nn.Upsample(size=size, mode="bilinear", align_corners=False))
    model, x = make_cnn(), make_images(n=2)
    ours = explain(model, x, "scorecam", target=[0, 3], layer="relu2", batch_size=2)
    ref = _reference(gradcam_lib.ScoreCAM, model, model.relu2, x, [0, 3], batch_size=2)
    np.testing.assert_allclose(ours, ref, atol=ATOL)


@pytest.mark.parity
@pytest.mark.parametrize("layer", ["conv2", "conv1"])
def test_eigencam_matches_pytorch_grad_cam_sign_corrected(make_cnn, make_images, monkeypatch, layer):
    # SVD fixes the first component only up to sign; plain EigenCAM's map then
    # depends on the LAPACK build. We use pytorch-grad-cam's own sign-corrected
    # projection, so compare against EigenCAM running that one.
    from pytorch_grad_cam import eigen_cam
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    monkeypatch.setattr(eigen_cam, "get_2d_projection", get_2d_projection_with_sign_correction)
    model, x = make_cnn(), make_images(n=3)
    ours = explain(model, x, "eigencam", target=[0, 0, 0], layer=layer)
    ref = _reference(gradcam_lib.EigenCAM, model, dict(model.named_modules())[layer], x, [0, 0, 0])
    # the SVD runs in torch here and in numpy there (different LAPACK calls, same float32)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_cam_equals_gradcam_on_gap_linear_head(make_cnn, make_images):
    # With GAP + linear, d logit_c / d A_k(i,j) = W[c, k] / (h w): Grad-CAM's
    # weights are CAM's divided by a constant, which min-max scaling removes.
    model, x = make_cnn(), make_images()
    a = explain(model, x, "cam", target=[1, 2, 3], layer="relu2")
    b = explain(model, x, "gradcam", target=[1, 2, 3], layer="relu2")
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_cam_refuses_a_head_that_is_not_gap_linear(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=1)
    with pytest.raises(ValueError, match="global-average-pool.*'fc'.*gradcam"):
        explain(model, x, "cam", layer="conv1")           # conv1 does not feed the pooling
    flat_head = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    with pytest.raises(ValueError, match="global-average-pool"):
        explain(flat_head, torch.randn(1, 3, 8, 8), "cam")
    no_linear = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no nn.Linear"):
        explain(no_linear, torch.randn(1, 3, 8, 8), "cam", layer="0")


def test_gradcampp_alphas_by_hand():
    # One channel, A = [[1, 2], [3, -2]] (sum S = 4), score = sum(w * A), so the
    # gradient g is w = [[1, -1], [0.5, 2]]. alpha = g^2 / (2 g^2 + S g^3):
    #   g=1:   1 / (2 + 4)       = 1/6
    #   g=-1:  1 / (2 - 4)       = -1/2   (times relu(g) = 0: no contribution)
    #   g=0.5: 0.25 / (0.5 + 0.5) = 1/4
    #   g=2:   4 / (8 + 32)      = 1/10
    # weight = 1 * 1/6 + 0.5 * 1/4 + 2 * 1/10 = 59/120
    # map = relu(59/120 * A) = 59/120 * [[1, 2], [3, 0]] -> min-max [[1/3, 2/3], [1, 0]]
    acts = torch.tensor([[[[1.0, 2.0], [3.0, -2.0]]]])
    w = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    alphas = cam_mod.gradcampp_alphas(acts, w[None, None])
    expected = torch.tensor([[1 / 6, -1 / 2], [1 / 4, 1 / 10]])
    torch.testing.assert_close(alphas[0, 0], expected, atol=1e-5, rtol=0)   # eps=1e-6 in denominators

    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[2].weight.copy_(torch.stack([w.flatten(), torch.ones(4)]))
    cap = cam_mod.GradCAMPlusPlus(model, "0").capture(acts, 0, "0")
    torch.testing.assert_close(cam_mod.GradCAMPlusPlus(model, "0").weights(cap), torch.tensor([[59 / 120]]),
                               atol=1e-5, rtol=0)
    out = explain(model, acts, "gradcampp", target=0, layer="0")
    np.testing.assert_allclose(out[0], [[1 / 3, 2 / 3], [1, 0]], atol=1e-5)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_batch_gives_each_image_its_own_map(make_cnn, make_images, method):
    model, x = make_cnn(), make_images(n=3)
    together = explain(model, x, method, target=[0, 1, 2])
    alone = np.concatenate([explain(model, x[i:i + 1], method, target=i) for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_scorecam_chunk_size_never_changes_the_result(make_cnn, make_images):
    model, x = make_cnn(feat=5), make_images(n=2)          # 5 channels: no chunk size divides it but 1, 5
    maps = [explain(model, x, "scorecam", target=1, batch_size=b) for b in (1, 2, 3, 5, 16)]
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], atol=1e-6)


def test_scale_per_image_is_finite_for_constant_and_bad_maps():
    maps = torch.stack([torch.zeros(4, 5), torch.full((4, 5), 3.0), torch.full((4, 5), float("nan")),
                        torch.arange(20.0).reshape(4, 5)])
    out = cam_mod.scale_per_image(maps)
    assert torch.isfinite(out).all()
    assert (out[:3] == 0).all()
    assert out[3].min() == 0 and out[3].max() == 1


class _Negate(nn.Module):
    def forward(self, x):
        return -x - 1.0


class _NegativeLayer(nn.Module):
    """Layer "neg" outputs only negative values, so CAM weighted sums can be all negative."""

    def __init__(self):
        super().__init__()
        self.neg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), _Negate())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.gap(self.neg(x)), 1))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_constant_maps_stay_finite(method):
    # a 1x1 conv maps a zero image to its bias: a constant map (no padding borders)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    out = explain(model.eval(), torch.zeros(2, 3, 8, 8), method)
    assert np.isfinite(out).all() and (out == 0).all()


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "scorecam", "eigencam"])
def test_all_negative_maps_stay_finite(method):
    torch.manual_seed(0)
    model = _NegativeLayer().eval()
    with torch.no_grad():
        model.fc.weight.abs_()       # positive weights on negative activations
    out = explain(model, torch.randn(2, 3, 8, 8), method, target=0, layer="neg")
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    if method in ("gradcam", "scorecam"):   # positive channel weights x negative activations
        assert (out == 0).all()


def test_inplace_relu_after_the_layer_does_not_corrupt_it(make_cnn, make_images):
    # conv2 is followed by ReLU(inplace=True): the recorded activations and their
    # gradient must be conv2's own, as with an out-of-place ReLU.
    x = make_images()
    a = explain(make_cnn(relu="module"), x, "gradcampp", target=1, layer="conv2")
    b = explain(make_cnn(relu="inplace"), x, "gradcampp", target=1, layer="conv2")
    np.testing.assert_allclose(a, b, atol=1e-6)


class TinyViT(nn.Module):
    """Patch embedding -> tokens (N, L, D) -> a token MLP block -> mean-pool -> linear."""

    def __init__(self, d: int = 6, classes: int = 3):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.block = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)      # (N, L, D)
        return self.head(self.block(tokens).mean(dim=1))


def _tokens_to_map(t: torch.Tensor) -> torch.Tensor:
    n, length, d = t.shape
    return t.transpose(1, 2).reshape(n, d, 4, length // 4)


@pytest.mark.parity
def test_token_layer_is_read_on_its_grid_or_through_a_reshape():
    """A (N, L, D) token layer is detected as a 4x4 grid (the patch conv's) and read like
    pytorch-grad-cam's reshape_transform reads it; a reshape callable still overrides."""
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(2, 3, 16, 16)
    ref = _reference(gradcam_lib.GradCAM, model, model.block, x, [0, 2],
                     init={"reshape_transform": _tokens_to_map})
    detected = explain(model, x, "gradcam", layer="block", target=[0, 2])
    stated = explain(model, x, "gradcam", layer="block", target=[0, 2], layout="tokens")
    ours = explain(model, x, "gradcam", layer="block", target=[0, 2], reshape=_tokens_to_map)
    for maps in (detected, stated, ours):
        np.testing.assert_allclose(maps, ref, atol=ATOL)
    with pytest.raises(ValueError, match=r"layer 'block'.*\(2, 16, 6\).*not a nhwc"):
        explain(model, x, "gradcam", layer="block", layout="nhwc")
    with pytest.raises(ValueError, match="reshape callable returned shape"):
        explain(model, x, "eigencam", layer="block", reshape=lambda t: t)

"""Faithfulness checks: deletion/insertion with hand-computed curves, the randomization
sanity check on a method that ignores the model, and border concentration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses import faithfulness as fa
from reportgen.model.hooks import count_hooks


class RegionNet(nn.Module):
    """Two classes: logit 0 = 0.25 * sum of the top-left 4x4 block (all channels), logit 1 = 4.

    Only that block matters, so the right saliency is known exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0.25 * x[:, :, :4, :4].sum(dim=(1, 2, 3))
        return torch.stack([s, torch.full_like(s, 4.0)], dim=1)


def _region_image() -> torch.Tensor:
    """8x8, 3 channels: 1 inside the block, seeded noise in [0, 0.2) outside (irrelevant to the model)."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.rand((1, 3, 8, 8), generator=g)
    x[:, :, :4, :4] = 1.0
    return x


def _right_map() -> np.ndarray:
    m = np.zeros((8, 8))
    m[:4, :4] = 1.0
    return m


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def test_deletion_curve_matches_the_hand_computed_one():
    # 64 pixels, 16 steps: 4 pixels per step, the 16 block pixels go in steps 1-4.
    # Each step removes 4 px * 3 ch * 1.0 from the sum, i.e. 3 from logit 0 (12 at the start):
    # p(class 0) = sigmoid(12 - 3k - 4) for k <= 4, then flat.
    res = fa.deletion_insertion(RegionNet(), _region_image(), _right_map(), target=0, steps=16)
    k = np.minimum(np.arange(17), 4)
    np.testing.assert_allclose(res["deletion_curve"], _sigmoid(8 - 3 * k), rtol=1e-5)
    np.testing.assert_allclose(res["fractions"], np.arange(17) / 16)
    assert res["deletion_auc"] == pytest.approx(fa.trapezoid_auc(res["fractions"], _sigmoid(8 - 3 * k)), rel=1e-5)


def test_the_right_map_beats_random_and_the_inverted_map_loses():
    # insertion from zeros: at 8 px the paper's blur (scaled) barely changes the image
    model, x = RegionNet(), _region_image()
    kw = dict(steps=16, insertion_baseline="zero")
    right = fa.deletion_insertion(model, x, _right_map(), 0, **kw)
    inverted = fa.deletion_insertion(model, x, 1 - _right_map(), 0, **kw)
    random = fa.deletion_insertion(model, x, fa.random_saliency((8, 8), 3), 0, **kw)
    assert right["deletion_auc"] < random["deletion_auc"] < inverted["deletion_auc"]
    assert right["insertion_auc"] > random["insertion_auc"] > inverted["insertion_auc"]
    for r in (right, inverted, random):
        assert 0.0 <= r["deletion_auc"] <= 1.0 and 0.0 <= r["insertion_auc"] <= 1.0


def test_curve_end_points_are_the_image_and_the_baselines():
    model, x = RegionNet(), _region_image()
    res = fa.deletion_insertion(model, x, _right_map(), 0, steps=8, insertion_baseline="zero")
    p = lambda t: float(torch.softmax(model(t), 1)[0, 0])  # noqa: E731
    assert res["deletion_curve"][0] == pytest.approx(p(x))
    assert res["deletion_curve"][-1] == pytest.approx(p(torch.zeros_like(x)))
    assert res["insertion_curve"][0] == pytest.approx(p(torch.zeros_like(x)))
    assert res["insertion_curve"][-1] == pytest.approx(p(x))
    assert len(res["deletion_curve"]) == len(res["insertion_curve"]) == 9
    assert res["deletion_baseline"].startswith("zero") and res["steps"] == 8


def test_insertion_starts_from_a_blur_by_default():
    res = fa.deletion_insertion(RegionNet(), _region_image(), _right_map(), 0, steps=4)
    assert res["insertion_baseline"].startswith("blur")
    blurred = fa.gaussian_blur(_region_image(), fa.blur_sigma(8, 8))
    expected = float(torch.softmax(RegionNet()(blurred), 1)[0, 0])
    assert res["insertion_curve"][0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_changes_speed_not_results(batch_size, make_cnn, make_images):
    model, x = make_cnn(), make_images(n=1, h=8, w=8)
    sal = fa.random_saliency((8, 8), 0)
    ref = fa.deletion_insertion(model, x, sal, 1, steps=6, batch_size=64)
    res = fa.deletion_insertion(model, x, sal, 1, steps=6, batch_size=batch_size)
    np.testing.assert_allclose(res["deletion_curve"], ref["deletion_curve"], rtol=1e-6)
    np.testing.assert_allclose(res["insertion_curve"], ref["insertion_curve"], rtol=1e-6)


def test_channel_attributions_are_reduced_and_ties_follow_raster_order():
    attr = np.zeros((1, 3, 8, 8))
    attr[0, 1, :4, :4] = -2.0           # negative values count by magnitude
    a = fa.deletion_insertion(RegionNet(), _region_image(), attr, 0, steps=16)
    b = fa.deletion_insertion(RegionNet(), _region_image(), _right_map(), 0, steps=16)
    np.testing.assert_allclose(a["deletion_curve"], b["deletion_curve"])
    np.testing.assert_array_equal(fa.pixel_order(np.zeros((2, 3))), np.arange(6))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="saliency has shape"):
        fa.deletion_insertion(RegionNet(), _region_image(), np.zeros((4, 4)), 0)
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        fa.deletion_insertion(RegionNet(), _region_image()[0], _right_map(), 0)
    with pytest.raises(ValueError, match="unknown baseline"):
        fa.deletion_insertion(RegionNet(), _region_image(), _right_map(), 0, baseline="pink")


def test_trapezoid_auc():
    x = np.linspace(0, 1, 5)
    assert fa.trapezoid_auc(x, np.ones(5)) == pytest.approx(1.0)
    assert fa.trapezoid_auc(x, 1 - x) == pytest.approx(0.5)


# --------------------------------------------------------------------------- similarity

def test_similarity_of_identical_and_reversed_maps():
    a = np.arange(64, dtype=float).reshape(8, 8)
    same = fa.map_similarity(a, a)
    assert same["spearman"] == pytest.approx(1) and same["pearson"] == pytest.approx(1)
    assert same["ssim"] == pytest.approx(1)
    assert fa.map_similarity(a, 63 - a)["spearman"] == pytest.approx(-1)
    assert fa.map_similarity(a, -a)["spearman"] == pytest.approx(1)       # magnitudes compared
    assert fa.map_similarity(a, np.zeros_like(a))["spearman"] == 0.0      # flat: no agreement, no NaN


# --------------------------------------------------------------------------- randomization

def _quadrant_data(n: int, seed: int):
    """16x16 noise with a bright 4x4 blob in the quadrant named by the label."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    y = torch.arange(n) % 4
    for i in range(n):
        cy, cx = (int(y[i]) // 2) * 8, (int(y[i]) % 2) * 8
        oy, ox = torch.randint(0, 4, (2,), generator=g).tolist()
        x[i, :, cy + oy:cy + oy + 4, cx + ox:cx + ox + 4] += 2.0
    return x, y


@pytest.fixture(scope="module")
def trained_cnn():
    """TinyCNN after a few Adam steps on the quadrant task: weights that mean something."""
    from tests.conftest import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN(classes=4, mid=8, feat=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = _quadrant_data(64, 0)
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _edges(model, images, targets):
    """A 'method' that never looks at the model: the input's gradient magnitude."""
    g = images.detach().abs().sum(1).cpu().numpy()
    return np.abs(np.diff(g, axis=1, append=0)) + np.abs(np.diff(g, axis=2, append=0))


def test_sanity_check_flags_a_method_that_ignores_the_weights(trained_cnn):
    x, _ = _quadrant_data(4, 1)
    res = fa.sanity_randomization(trained_cnn, x, _edges, [0, 1, 2, 3], seed=0)
    assert res.mean_spearman == pytest.approx(1.0)
    assert not res.passed and res.method == "_edges"
    assert res.summary()["passed"] is False


def test_sanity_check_passes_gradcam(trained_cnn):
    x, y = _quadrant_data(8, 1)
    res = fa.sanity_randomization(trained_cnn, x, "gradcam", y.tolist(), seed=0, layer="conv2")
    assert res.passed, res.summary()
    assert res.mean_spearman < fa.SANITY_THRESHOLD
    assert res.spearman.shape == res.pearson.shape == res.ssim.shape == (8,)
    assert count_hooks(trained_cnn) == 0


def test_shared_randomized_copy_and_precomputed_maps_give_the_same_answer(trained_cnn):
    x, y = _quadrant_data(4, 2)
    rand = fa.randomize_weights(trained_cnn, seed=0)
    from reportgen.analyses.explain import explain
    orig = explain(trained_cnn, x, "saliency", target=y.tolist())
    a = fa.sanity_randomization(trained_cnn, x, "saliency", y.tolist(), seed=0)
    b = fa.sanity_randomization(trained_cnn, x, "saliency", y.tolist(), randomized=rand, original=orig)
    np.testing.assert_allclose(a.spearman, b.spearman)


def test_randomize_weights_is_a_seeded_copy(make_cnn):
    model = make_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    a, b, c = fa.randomize_weights(model, 1), fa.randomize_weights(model, 1), fa.randomize_weights(model, 2)
    assert torch.equal(torch.get_rng_state(), rng), "the caller's RNG must not move"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"original {k} changed"
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        assert not torch.equal(p, r), name
        assert not torch.equal(p, dict(model.named_parameters())[name]), name
    assert not a.training


def test_cascade_goes_from_the_logits_down(trained_cnn):
    assert fa.cascade_order(trained_cnn) == ["fc", "conv2", "conv1"]
    x, y = _quadrant_data(2, 3)
    rows = fa.sanity_cascade(trained_cnn, x, "gradcam", y.tolist(), layer="conv2")
    assert [r["layer"] for r in rows] == ["fc", "conv2", "conv1"]
    assert all(-1 <= r["spearman"] <= 1 for r in rows)


# --------------------------------------------------------------------------- border

def test_border_concentration():
    h = w = 20                                         # 10 % band = 2 px
    band = fa.border_mask(h, w, 0.1)
    assert band.sum() == 20 * 20 - 16 * 16
    frame = band.astype(float)
    centre = (~band).astype(float)
    assert fa.border_concentration(frame) == pytest.approx(1.0)
    assert fa.border_concentration(centre) == pytest.approx(0.0)
    assert fa.border_concentration(np.ones((h, w))) == pytest.approx(fa.border_area_share(h, w))
    assert fa.border_concentration(np.zeros((h, w))) == 0.0
    both = fa.border_concentration(np.stack([frame, -centre])[:, None].repeat(3, axis=1))   # (N, C, H, W)
    np.testing.assert_allclose(both, [1.0, 0.0])


def test_border_flag_needs_far_more_than_the_band_area():
    share = fa.border_area_share(64, 64)               # 6 px band: ~34 % of the area
    assert fa.border_flag([0.9, 0.8], 64, 64)
    assert not fa.border_flag([share, share], 64, 64)
    assert not fa.border_flag([0.6], 64, 64)            # above half but not 2x the area share
    assert not fa.border_flag([], 64, 64)


def test_spearman_needs_no_scipy_and_ranks_ties_as_scipy_does(monkeypatch):
    """A plain install has no scipy: the demo's compare ranks maps with numpy alone."""
    import sys

    from reportgen.analyses.faithfulness import _ranks, spearman

    scipy_stats = pytest.importorskip("scipy.stats")          # the reference (a test extra's dependency)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(7, 9)).astype(np.float32)   # many ties
    b = rng.random((7, 9))
    expected = scipy_stats.spearmanr(a.ravel(), b.ravel()).statistic
    np.testing.assert_array_equal(_ranks(a.ravel()), scipy_stats.rankdata(a.ravel()))
    monkeypatch.setitem(sys.modules, "scipy", None)            # any import of scipy now fails
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)

"""Streamed linear CKA against the textbook formulas on full matrices, and on tiny CNNs."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reportgen.analyses import cka as ck
from reportgen.model.hooks import count_hooks

RTOL = 1e-9


# --------------------------------------------------------------------------- references: numpy, full matrices

def ref_biased(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def ref_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012, on n x n Gram matrices."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def ref_debiased(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return ref_hsic_unbiased(k, l) / np.sqrt(ref_hsic_unbiased(k, k) * ref_hsic_unbiased(l, l))


def related(n: int = 40, p: int = 7, q: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) + 3.0
    y = x[:, :q] @ rng.normal(size=(q, q)) + 0.7 * rng.normal(size=(n, q)) - 10.0
    return x, y


def streamed(x, y, batch: int) -> ck.CKAValue:
    acc = ck.CKAAccumulator()
    for lo in range(0, len(x), batch):
        acc.update(x[lo:lo + batch], y[lo:lo + batch])
    return acc.value()


# --------------------------------------------------------------------------- the accumulator

@pytest.mark.parametrize("batch", [1, 3, 7, 40])
def test_streamed_equals_full_matrix_formulas_for_any_batch_size(batch):
    x, y = related()
    v = streamed(x, y, batch)
    assert v.n == 40
    assert v.biased == pytest.approx(ref_biased(x, y), rel=RTOL)
    assert v.debiased == pytest.approx(ref_debiased(x, y), rel=1e-8)
    assert 0.3 < v.debiased < v.biased < 1


def test_merge_of_shards_equals_one_pass_and_an_empty_state_adopts_the_other():
    x, y = related(n=31)
    single = streamed(x, y, 31)
    shards = []
    for r in (0, 2, 4):       # interleaved pairs of rows, uneven, each shard with its own shift
        acc = ck.CKAAccumulator()
        for lo in range(r, 31, 6):
            acc.update(x[lo:lo + 2] * 1.0, y[lo:lo + 2])
        shards.append(acc)
    merged = ck.CKAAccumulator()      # empty: takes the first shard's shift
    for acc in shards:
        merged.merge(acc)
    merged.merge(ck.CKAAccumulator())  # an empty shard changes nothing
    v = merged.value()
    assert v.n == 31
    assert v.biased == pytest.approx(single.biased, rel=RTOL)
    assert v.debiased == pytest.approx(single.debiased, rel=RTOL)
    np.testing.assert_allclose(v.hsic_debiased, single.hsic_debiased, rtol=RTOL)


def test_rebase_keeps_every_estimate():
    x, y = related()
    acc = ck.CKAMatrixAccumulator(1, 1)
    acc.update([x], [y])
    before = acc.value(0, 0)
    acc.rebase([torch.full((7,), 5.0)], [torch.zeros(5)])
    after = acc.value(0, 0)
    np.testing.assert_allclose(after.hsic_biased, before.hsic_biased, rtol=1e-9)
    np.testing.assert_allclose(after.hsic_debiased, before.hsic_debiased, rtol=1e-9)


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = related()
    v = streamed(x, x, 8)
    assert v.biased == pytest.approx(1.0, abs=1e-12)
    assert v.debiased == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = related(p=6)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(6, 6)))
    base = streamed(x, y, 9)
    moved = streamed(3.5 * x @ q, y * 0.01, 9)
    assert moved.biased == pytest.approx(base.biased, rel=1e-9)
    assert moved.debiased == pytest.approx(base.debiased, rel=1e-9)
    # a non-isotropic scaling is not an invariance: the test can tell
    skew = streamed(x * np.arange(1, 7), y, 9)
    assert abs(skew.biased - base.biased) > 1e-3


def test_large_offsets_do_not_cancel_the_sums():
    """Activations far from 0 relative to their spread: the shift keeps float64 exact enough."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 10)) * 0.01 + 1e3
    y = x[:, :5] * 2 + rng.normal(size=(60, 5)) * 0.01
    v = streamed(x, y, 5)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert v.biased == pytest.approx(ref_biased(xc, yc), rel=1e-9)
    assert v.debiased == pytest.approx(ref_debiased(xc, yc), rel=1e-7)


def test_debiased_estimator_removes_the_many_features_bias():
    """Independent representations, p >> n: biased CKA is near 1, debiased near 0."""
    rng = np.random.default_rng(1)
    v = streamed(rng.normal(size=(50, 500)), rng.normal(size=(50, 500)), 16)
    assert v.biased > 0.8
    assert abs(v.debiased) < 0.05


def test_undefined_cases_are_nan():
    acc = ck.CKAAccumulator()
    assert np.isnan(acc.value().biased)
    acc.update(np.ones((5, 3)), np.arange(10.0).reshape(5, 2))    # X has no variance
    assert np.isnan(acc.value().biased) and np.isnan(acc.value().debiased)
    few = ck.CKAAccumulator()
    x, y = related(n=3)
    few.update(x, y)
    assert few.value().biased == pytest.approx(ref_biased(x, y)) and np.isnan(few.value().debiased)


def test_matrix_accumulator_shares_sides_and_checks_widths():
    x, y = related(n=20)
    acc = ck.CKAMatrixAccumulator(2, 2)
    acc.update([x, x[:, :3]], [y, x])
    biased, debiased = acc.matrices()
    assert biased[0, 0] == pytest.approx(ref_biased(x, y), rel=RTOL)
    assert biased[1, 1] == pytest.approx(ref_biased(x[:, :3], x), rel=RTOL)
    assert debiased[0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="widths changed"):
        acc.update([x, x], [y, x])
    pairs = ck.CKAMatrixAccumulator(2, 2, pairs=[(0, 0), (1, 1)])
    pairs.update([x, x[:, :3]], [y, x])
    assert np.isnan(pairs.matrices()[0][0, 1])
    assert pairs.nbytes() < acc.nbytes() == ck.state_bytes([7, 3], [5, 7], acc.pairs)


# --------------------------------------------------------------------------- feature reduction

def test_reduction_plan():
    plan = ck.plan_reduction("a", (64, 56, 56))
    assert plan.grid == (2, 2) and plan.features == 256
    assert ck.plan_reduction("b", (2048, 7, 7)).grid == (1, 1)            # 2048 * 4 > 4096
    assert ck.plan_reduction("c", (512, 14, 14), grid=4).grid == (2, 2)   # 512 * 16 > 4096
    assert ck.plan_reduction("d", (8, 1, 3), grid=4).grid == (1, 3)       # never beyond the map
    assert ck.plan_reduction("e", (6, 4, 4), grid="full").features == 96
    assert ck.plan_reduction("f", (10,)).grid is None
    assert "average-pooled to 2x2" in plan.describe()
    with pytest.raises(ValueError, match="max_features"):
        ck.plan_reduction("g", (5000, 7, 7))
    with pytest.raises(ValueError, match="use a pooling grid"):
        ck.plan_reduction("h", (64, 56, 56), grid="full")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ck.plan_reduction("i", (3, 4))
    with pytest.raises(ValueError, match="grid"):
        ck.plan_reduction("j", (3, 4, 4), grid=0)


# --------------------------------------------------------------------------- the pass on models

class Indexed(torch.utils.data.Dataset):
    """(image, global index) items, like ``topk.ImageDataset``."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i


LAYERS = ["conv1", "relu1", "conv2", "relu2", "fc"]


@pytest.fixture
def data(make_images):
    return Indexed(make_images(n=24, h=12, w=12, seed=1))


def pooled(model, x, layers, grid=2):
    """Reference features: the layer outputs cloned in a hook, then pooled like the plan says."""
    got = {}
    handles = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: got.__setitem__(n, o.detach().clone())) for n in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for n in layers:
        t = got[n]
        if t.ndim == 4:
            t = F.adaptive_avg_pool2d(t, (min(grid, t.shape[2]), min(grid, t.shape[3])))
        out.append(t.reshape(len(t), -1).double().numpy())
    return out


def test_pass_equals_reference_on_the_pooled_features(make_cnn, data):
    base, new = make_cnn(seed=0), make_cnn(seed=1)
    res = ck.layer_pairs_cka(base, new, data, LAYERS, batch_size=5)
    fb, fn = pooled(base, data.x, LAYERS), pooled(new, data.x, LAYERS)
    for i, name in enumerate(LAYERS):
        # float32 features from batches of 5 against one batch of all: the kernels (and so the last
        # bits) differ with the batch and the CPU, so 1e-5 relative, as fits float32 sums
        assert res.biased[i, i] == pytest.approx(ref_biased(fb[i], fn[i]), rel=1e-5), name
        assert res.debiased[i, i] == pytest.approx(ref_debiased(fb[i], fn[i]), rel=1e-5), name
    assert res.n == 24 and res.estimator == "debiased" and res.estimator_note is None
    assert np.isnan(res.biased[0, 1])
    assert [r.features for r in res.base_reduction] == [24, 24, 20, 20, 4]
    assert set(res.layer_values()) == set(LAYERS)
    meta = res.meta()
    assert meta["reduction"]["base"]["conv1"]["grid"] == [2, 2] and meta["estimator"] == "debiased"


def test_batch_size_does_not_change_the_pass(make_cnn, data):
    base, new = make_cnn(seed=0), make_cnn(seed=1)
    a = ck.layer_pairs_cka(base, new, data, LAYERS, batch_size=1)
    b = ck.layer_pairs_cka(base, new, data, LAYERS, batch_size=24)
    # float32 convolutions may round differently per batch shape (oneDNN picks kernels by shape):
    # the features agree to ~1e-7, the estimates to that, not bit for bit
    np.testing.assert_allclose(a.biased, b.biased, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.debiased, b.debiased, rtol=1e-6, atol=1e-6)


def test_a_model_against_a_copy_of_itself_is_one_everywhere(make_cnn, data):
    base = make_cnn(seed=0)
    res = ck.layer_pairs_cka(base, copy.deepcopy(base), data, LAYERS, batch_size=7)
    np.testing.assert_allclose(np.diag(res.cka), 1.0, atol=1e-9)
    same = ck.layer_pairs_cka(base, base, data, LAYERS, batch_size=7)   # one module hooked twice
    np.testing.assert_allclose(np.diag(same.cka), 1.0, atol=1e-9)


def permuted(model, seed=5):
    """conv1's output channels shuffled (conv2's inputs with them): the same function."""
    out = copy.deepcopy(model)
    perm = torch.randperm(out.conv1.out_channels, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out.conv1.weight.copy_(model.conv1.weight[perm])
        out.conv1.bias.copy_(model.conv1.bias[perm])
        out.conv2.weight.copy_(model.conv2.weight[:, perm])
    return out


def test_a_channel_permutation_gives_cka_one(make_cnn, data):
    base = make_cnn(seed=0)
    res = ck.layer_pairs_cka(base, permuted(base), data, LAYERS, batch_size=8)
    np.testing.assert_allclose(np.diag(res.debiased), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.diag(res.biased), 1.0, atol=1e-4)


def test_a_reinitialized_layer_gives_a_clear_drop(make_cnn, data):
    base = make_cnn(seed=0)
    new = copy.deepcopy(base)
    torch.manual_seed(123)
    new.conv2.reset_parameters()
    res = ck.layer_pairs_cka(base, new, data, LAYERS, batch_size=8)
    v = res.layer_values()
    assert v["conv1"] == pytest.approx(1.0) and v["relu1"] == pytest.approx(1.0)
    assert v["conv2"] < 0.8 and v["relu2"] < 0.8
    assert v["conv2"] < v["relu1"] - 0.2


def test_cross_matrix_between_architectures(make_cnn, data):
    base, new = make_cnn(seed=0), make_cnn(seed=2, mid=8, feat=3)
    res = ck.cross_cka_matrix(base, new, data, ["relu1", "relu2"], ["relu1", "relu2", "fc"], batch_size=6)
    assert res.cka.shape == (2, 3) and res.mode == "matrix" and np.isfinite(res.cka).all()
    fb, fn = pooled(base, data.x, ["relu1", "relu2"]), pooled(new, data.x, ["relu1", "relu2", "fc"])
    for i in range(2):
        for j in range(3):
            assert res.debiased[i, j] == pytest.approx(ref_debiased(fb[i], fn[j]), rel=1e-6)
    assert [r.features for r in res.new_reduction] == [32, 12, 4]
    with pytest.raises(ValueError, match="cross matrix"):
        res.layer_values()


def test_estimator_falls_back_to_biased_below_four_images(make_cnn, data):
    base = make_cnn(seed=0)
    res = ck.layer_pairs_cka(base, make_cnn(seed=1), Indexed(data.x[:3]), ["relu2"])
    assert res.estimator == "biased" and "at least 4" in res.estimator_note
    assert np.isfinite(res.cka[0, 0]) and np.isnan(res.debiased[0, 0])
    chosen = ck.layer_pairs_cka(base, make_cnn(seed=1), data, ["relu2"], estimator="biased")
    assert chosen.estimator == "biased" and chosen.cka is chosen.biased
    with pytest.raises(ValueError, match="valid: debiased, biased"):
        ck.layer_pairs_cka(base, base, data, ["relu2"], estimator="minibatch")


def test_features_are_taken_before_a_later_in_place_relu(make_cnn, make_images):
    model = make_cnn(relu="inplace")
    x = make_images(n=4, h=8, w=8)
    with ck.LayerFeatures(model, ["conv1"], grid="full") as feats, torch.no_grad():
        model(x)
        (got,) = feats.take()
    assert (got < 0).any()      # conv1's own output, not the ReLU'd one
    np.testing.assert_allclose(got.numpy(), pooled(make_cnn(relu="module"), x, ["conv1"], grid=8)[0],
                               rtol=1e-6, atol=1e-6)


def test_hooks_and_modes_are_restored_even_on_an_error(make_cnn, data):
    base, new = make_cnn(seed=0).train(), make_cnn(seed=1)
    with pytest.raises(ValueError, match="unknown layer"):
        ck.layer_pairs_cka(base, new, data, ["relu1", "nope"])
    with pytest.raises(ValueError, match="MiB allowed"):
        ck.layer_pairs_cka(base, new, data, ["relu1"], max_state_bytes=1000)
    base.unused = torch.nn.Identity()
    with pytest.raises(ValueError, match="'unused' was not called"):
        ck.layer_pairs_cka(base, new, data, ["unused"], new_layers=["relu1"])
    assert count_hooks(base) == 0 and count_hooks(new) == 0
    assert base.training and all(m.training for m in base.modules())
    assert not new.training

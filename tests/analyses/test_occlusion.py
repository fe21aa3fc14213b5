"""Occlusion sensitivity: captum parity, hand-checked maps, batching, incremental exactness, bad input."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.analyses import occlusion as occlusion_module
from reportgen.analyses.occlusion import make_baseline, occlusion, occlusion_cost, occlusion_details, window_starts
from reportgen.engine.batching import ThroughputBatcher
from reportgen.engine.memory import probe_shapes
from reportgen.model.hooks import count_hooks

captum_attr = pytest.importorskip("captum.attr")

# Parity tolerance against captum. Both compute mean over covering windows of
# p(x) - p(occluded) with the same window placement; captum's forward_func
# returns float32 softmax probabilities (so its attributions are in
# probability units like ours) while we take the softmax in float64. The
# difference is float32 rounding of probabilities (~6e-8 relative), so 1e-6
# absolute is ~10x that noise and far below anything visible in a heatmap.
ATOL = 1e-6
# Incremental vs full recomputation: the same maths in another order (BN folded
# into convs, convs over sub-regions); for a random-init ResNet-18 the logits
# move by ~1e-6, probabilities by less. 1e-5 still catches any wrong pixel,
# which shifts probabilities by orders of magnitude more.
ATOL_INCREMENTAL = 1e-5


def captum_occlusion(model, x, window, stride, targets, baselines):
    """captum's Occlusion on softmax probabilities, one channel of its (N, C, H, W) answer."""
    c = x.shape[1]
    occ = captum_attr.Occlusion(lambda z: torch.softmax(model(z), dim=1))
    attr = occ.attribute(x, sliding_window_shapes=(c,) + window, strides=(c,) + stride,
                         target=torch.as_tensor(targets), baselines=baselines, perturbations_per_eval=5)
    assert torch.allclose(attr, attr[:, :1].expand_as(attr))    # one window spans all channels
    return attr[:, 0].numpy()


def naive_occlusion(model, x, window, stride, target, fill):
    """The SPEC.md definition, written as plainly as possible: one occluded image at a time."""
    h, w = x.shape[2:]
    with torch.no_grad():
        p0 = torch.softmax(model(x), 1)[:, target].double()
        total = torch.zeros(h, w, dtype=torch.float64)
        count = torch.zeros(h, w, dtype=torch.float64)
        for y in window_starts(h, window[0], stride[0]):
            for xx in window_starts(w, window[1], stride[1]):
                occ = x.clone()
                occ[:, :, y:y + window[0], xx:xx + window[1]] = fill
                p = torch.softmax(model(occ), 1)[:, target].double()
                total[y:y + window[0], xx:xx + window[1]] += (p0 - p)[0]
                count[y:y + window[0], xx:xx + window[1]] += 1
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros(())).numpy()


# ------------------------------------------------------------------ parity

@pytest.mark.parity
@pytest.mark.parametrize("baseline", ["mean", "zero", "grey", 0.25, "blur"])
def test_matches_captum_non_square(make_cnn, make_images, baseline):
    model, x = make_cnn(), make_images(n=2, h=16, w=12)
    targets = [1, 3]
    ours = occlusion(model, x, target=targets, window=(5, 4), stride=(3, 2), baseline=baseline)
    fill, _ = make_baseline(x, baseline, (5, 4))
    ref = captum_occlusion(model, x, (5, 4), (3, 2), targets, fill.expand_as(x).contiguous())
    assert ours.shape == (2, 16, 12) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=ATOL)
    assert np.abs(ours).max() > 1e-4                              # not trivially zero


@pytest.mark.parity
def test_single_channel_and_predicted_target(make_cnn, make_images):
    model, x = make_cnn(in_ch=1), make_images(n=2, c=1, h=8, w=8)
    d = occlusion_details(model, x, window=3, stride=2)
    with torch.no_grad():
        np.testing.assert_array_equal(d.targets, model(x).argmax(1).numpy())
    ref = captum_occlusion(model, x, (3, 3), (2, 2), d.targets, x.mean(dim=(2, 3), keepdim=True))
    np.testing.assert_allclose(d.sensitivity, ref, atol=ATOL)


# ------------------------------------------------------------------ by hand

class SumModel(nn.Module):
    """Two classes, logits (sum(x) / 16, 0): p(class 0) = sigmoid(sum / 16)."""

    def forward(self, x):
        s = x.sum(dim=(1, 2, 3)) / 16
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_hand_computed_8x8():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, :4, :4] = 1.0                                         # sum 16: logit 1
    sig = lambda v: 1 / (1 + np.exp(-v))
    # 4x4 windows, stride 4, zero fill: only the top-left window changes the sum (to 0)
    got = occlusion(SumModel(), x, target=0, window=4, stride=4, baseline="zero")
    want = np.zeros((8, 8))
    want[:4, :4] = sig(1) - sig(0)
    np.testing.assert_allclose(got[0], want, atol=1e-7)
    # stride 2: windows at 0, 2, 4 per axis; window (r, c) hides (4 - 2r)(4 - 2c) ones
    # when r, c <= 1, so pixel (y, x) averages over the windows covering it
    got = occlusion(SumModel(), x, target=0, window=4, stride=2, baseline="zero")[0]
    diff = {(r, c): sig(1) - sig((16 - max(0, 4 - 2 * r) * max(0, 4 - 2 * c)) / 16)
            for r in range(3) for c in range(3)}
    want = np.zeros((8, 8))
    for y in range(8):
        for xx in range(8):
            cover = [(r, c) for r in range(3) for c in range(3)
                     if 2 * r <= y < 2 * r + 4 and 2 * c <= xx < 2 * c + 4]
            want[y, xx] = np.mean([diff[k] for k in cover])
    np.testing.assert_allclose(got, want, atol=1e-7)


@pytest.mark.parity
def test_edge_windows_are_clipped_like_captum(make_cnn, make_images):
    # (10 - 4) / 4 is not whole: windows start at 0, 4, 8 and the last one is clipped to 2 pixels
    model, x = make_cnn(), make_images(n=1, h=10, w=10)
    d = occlusion_details(model, x, target=2, window=4, stride=4, baseline="zero")
    assert d.grid == (3, 3) and d.positions[-1].tolist() == [8, 8]
    ref = captum_occlusion(model, x, (4, 4), (4, 4), [2], 0.0)
    np.testing.assert_allclose(d.sensitivity, ref, atol=ATOL)
    np.testing.assert_allclose(d.sensitivity[0], naive_occlusion(model, x, (4, 4), (4, 4), 2, 0.0), atol=ATOL)


def test_stride_larger_than_window_leaves_zeros(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=1, h=8, w=8)
    got = occlusion(model, x, target=0, window=2, stride=4, baseline="zero")[0]
    covered = np.zeros((8, 8), bool)
    for y in (0, 4):
        for xx in (0, 4):
            covered[y:y + 2, xx:xx + 2] = True
    assert (got[~covered] == 0).all() and np.abs(got[covered]).max() > 0
    np.testing.assert_allclose(got, naive_occlusion(model, x, (2, 2), (4, 4), 0, 0.0), atol=ATOL)


# ------------------------------------------------------------------ maps and baselines

def test_prob_and_top_class_maps(make_cnn, make_images):
    model, x = make_cnn(classes=5), make_images(n=2, h=9, w=6)
    d = occlusion_details(model, x, target=[4, 0], window=(3, 2), stride=(3, 2), baseline="zero")
    assert d.prob_map.shape == d.top_class.shape == (2, 3, 3) and d.top_class.dtype == np.int64
    sens, top = occlusion(model, x, target=[4, 0], window=(3, 2), stride=(3, 2), baseline="zero",
                          return_top_class=True)
    np.testing.assert_array_equal(top, d.top_class)
    with torch.no_grad():
        for k, (y, xx) in enumerate(d.positions):
            occ = x.clone()
            occ[:, :, y:y + 3, xx:xx + 2] = 0
            p = torch.softmax(model(occ), 1)
            iy, ix = divmod(k, 3)
            np.testing.assert_array_equal(d.top_class[:, iy, ix], p.argmax(1).numpy())
            np.testing.assert_allclose(d.prob_map[:, iy, ix], p[[0, 1], [4, 0]].numpy(), atol=ATOL)
    assert d.forward_passes == 2 + 2 * 9
    # non-overlapping windows tile the image: each pixel's value is its window's drop
    drop = d.base_prob - d.prob_map[:, 0, 0]
    np.testing.assert_allclose(sens[:, :3, :2], np.broadcast_to(drop[:, None, None], (2, 3, 2)), atol=ATOL)


def test_baselines():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    mean, _ = make_baseline(x, "mean", (2, 2))
    np.testing.assert_allclose(mean[:, :, 0, 0], x.mean(dim=(2, 3)))
    assert float(make_baseline(x, "zero", (2, 2))[0].sum()) == 0
    assert float(make_baseline(x, "gray", (2, 2))[0].flatten()[0]) == 0.5
    per_channel, _ = make_baseline(x, [0.1, 0.2, 0.3], (2, 2))
    assert per_channel.shape == (1, 3, 1, 1)
    const = torch.full((1, 3, 6, 6), 0.7)
    np.testing.assert_allclose(make_baseline(const, "blur", (4, 4))[0], const, atol=1e-6)
    blurred, desc = make_baseline(x, "blur", (4, 4))
    assert blurred.shape == x.shape and "blur" in desc
    assert blurred.std() < x.std()                                # smoother
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(x, "noise", (2, 2))
    with pytest.raises(ValueError, match="channels"):
        make_baseline(x, [0.1, 0.2], (2, 2))


def test_output_key(make_cnn, make_images):
    class DictModel(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return {"aux": x.mean(), "scores": self.inner(x)}

    model, x = make_cnn(), make_images(n=1, h=8, w=8)
    want = occlusion(model, x, target=1, window=4, stride=2)
    got = occlusion(DictModel(model), x, target=1, window=4, stride=2, output_key="scores")
    np.testing.assert_allclose(got, want, atol=0)


# ------------------------------------------------------------------ batching

@pytest.mark.parametrize("incremental", [False, True])
def test_batch_size_does_not_change_results(make_cnn, make_images, incremental):
    model, x = make_cnn(), make_images(n=2, h=12, w=10)
    runs = [occlusion_details(model, x, window=4, stride=3, memory_budget=b, incremental=incremental,
                              batch_size="memory") for b in (1, 50_000, 1 << 30)]   # batch 1, a few, everything
    assert runs[0].batch_size == 1 and runs[2].batch_size > 2 * 12      # 12 positions per image
    assert runs[0].batches > runs[1].batches > runs[2].batches
    for r in runs[1:]:
        np.testing.assert_allclose(r.sensitivity, runs[0].sensitivity, atol=1e-7)
        np.testing.assert_array_equal(r.top_class, runs[0].top_class)


class ScriptedBatcher(ThroughputBatcher):
    """The throughput search with timings from a curve (fastest at 16) instead of a clock; keeps
    every instance, so a test can read the chunk sizes a run used."""

    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made.append(self)

    def _record(self, size, seconds):
        super()._record(size, size * (1 + abs(size - 16) / 16))


@pytest.fixture
def scripted(monkeypatch):
    ScriptedBatcher.made = []
    monkeypatch.setattr(occlusion_module, "ThroughputBatcher", ScriptedBatcher)
    return ScriptedBatcher.made


@pytest.mark.parametrize("incremental", [False, True])
def test_throughput_batches_match_any_fixed_batch(make_cnn, make_images, scripted, incremental):
    # 2 images x 165 positions: work enough (per image, too) for the search to find 16 and time
    # both its neighbours, from wherever it starts
    model, x = make_cnn(), make_images(n=2, h=12, w=16)
    auto = occlusion_details(model, x, window=2, stride=1, incremental=incremental)
    (batcher,) = scripted
    assert auto.batch_size == 16 and batcher.sizes[0] == batcher.start
    assert auto.notes["batch_policy"] == "auto" and {"8", "16", "32"} <= set(auto.notes["batch_ms_per_sample"])
    assert auto.batches == len(batcher.sizes) + (2 if incremental else 0)          # + clean passes
    for fixed in (5, "memory"):
        d = occlusion_details(model, x, window=2, stride=1, incremental=incremental, batch_size=fixed)
        np.testing.assert_allclose(d.sensitivity, auto.sensitivity, atol=1e-7)
        np.testing.assert_allclose(d.prob_map, auto.prob_map, atol=1e-7)
        np.testing.assert_array_equal(d.top_class, auto.top_class)
        np.testing.assert_array_equal(d.targets, auto.targets)


def test_throughput_batches_stay_under_the_memory_cap(make_cnn, make_images, scripted):
    model, x = make_cnn(), make_images(n=2, h=12, w=16)
    free = occlusion_details(model, x, window=2, stride=(2, 1), incremental=False)
    per_sample, _ = probe_shapes(model, x[:1])
    capped = occlusion_details(model, x, window=2, stride=(2, 1), incremental=False, memory_budget=12 * per_sample)
    assert capped.notes["batch_cap"] == 12
    assert max(scripted[-1].sizes) <= 12 and capped.batch_size == 8
    assert scripted[-1].sizes[:2] == [8, 4]                 # starts at the cap's power of two; 16 is over it
    np.testing.assert_allclose(capped.sensitivity, free.sensitivity, atol=1e-7)
    np.testing.assert_array_equal(capped.top_class, free.top_class)


def test_real_throughput_search_is_deterministic_in_results(make_cnn, make_images):
    """Real clocks: whatever sizes the timings pick, the map is the same up to float rounding."""
    model, x = make_cnn(), make_images(n=2, h=12, w=16)
    runs = [occlusion_details(model, x, window=2, stride=(2, 1), incremental=False, memory_budget=b)
            for b in (None, None, 40_000)]
    for r in runs:
        assert 1 <= r.batch_size <= r.notes["batch_cap"]
        np.testing.assert_allclose(r.sensitivity, runs[0].sensitivity, atol=1e-7)
        np.testing.assert_array_equal(r.top_class, runs[0].top_class)


@pytest.mark.parametrize("batch_size", [0, -1, "fast", True, 2.5])
def test_bad_batch_size(make_cnn, make_images, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        occlusion(make_cnn(), make_images(n=1, h=8, w=8), window=4, batch_size=batch_size)


# ------------------------------------------------------------------ incremental

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:                                           # data-dependent: fx cannot trace it
            x = -x
        return self.fc(x.mean(dim=(2, 3)))


class TinyResNet(nn.Module):
    """conv-bn-relu-maxpool stem, one identity and one strided (1x1 downsample) basic block, GAP, fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, padding=1))
        self.a1, self.a2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, dilation=1)
        self.b1 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.b2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.down = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2), nn.BatchNorm2d(6))
        self.pool = nn.AvgPool2d(2, 1)
        self.fc = nn.Linear(6, 3)
        for m in self.modules():                                  # non-trivial BN statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.a2(torch.relu(self.a1(x))) + x)
        x = torch.relu(self.b2(torch.relu(self.b1(x))) + self.down(x))
        return self.fc(self.pool(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("relu", ["module", "inplace", "functional", "tensor"])
def test_incremental_exact_sequential(make_cnn, make_images, relu):
    model, x = make_cnn(relu=relu), make_images(n=2, h=16, w=12)
    full = occlusion_details(model, x, window=(5, 4), stride=(3, 2), incremental=False)
    inc = occlusion_details(model, x, window=(5, 4), stride=(3, 2), incremental=True)
    assert inc.incremental and not full.incremental
    np.testing.assert_allclose(inc.sensitivity, full.sensitivity, atol=ATOL_INCREMENTAL)
    np.testing.assert_allclose(inc.prob_map, full.prob_map, atol=ATOL_INCREMENTAL)
    np.testing.assert_array_equal(inc.top_class, full.top_class)


@pytest.mark.parametrize("window,stride", [(4, 2), (6, 5), (16, 16)])
def test_incremental_exact_residual(window, stride):
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 20, 16)
    full = occlusion_details(model, x, window=window, stride=stride, baseline="blur", incremental=False)
    inc = occlusion_details(model, x, window=window, stride=stride, baseline="blur", incremental=True)
    np.testing.assert_allclose(inc.sensitivity, full.sensitivity, atol=ATOL_INCREMENTAL)
    np.testing.assert_array_equal(inc.top_class, full.top_class)


def test_incremental_exact_resnet18_small():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    full = occlusion_details(model, x, window=32, stride=16, incremental=False)   # 3 x 3 positions: quick
    inc = occlusion_details(model, x, window=32, stride=16, incremental=True)
    assert inc.notes["incremental_cost"] < 1
    np.testing.assert_allclose(inc.sensitivity, full.sensitivity, atol=ATOL_INCREMENTAL)
    np.testing.assert_allclose(inc.prob_map, full.prob_map, atol=ATOL_INCREMENTAL)


class PerPixelZoo(nn.Module):
    """Per-pixel ops of every form fxops names: functions, methods, modules, scalar arithmetic."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(2)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.lrn(F.selu(self.c1(x)) / 2)
        z = torch.maximum(self.c2(y).clamp_max(3.0), y).exp()
        return self.fc((1 - z).mean(dim=(2, 3)))


def test_incremental_covers_every_per_pixel_kind():
    from reportgen.engine.incremental import IncrementalEngine, trace

    torch.manual_seed(0)
    model = PerPixelZoo().eval()
    x = torch.randn(2, 3, 12, 12)
    engine = IncrementalEngine(trace(model))
    engine.clean_pass(x[:1])
    engine.build_plan((4, 4), np.array([[0, 0], [8, 8]]))
    kinds = {n.name: engine.plan[n].kind for n in engine.nodes}
    assert kinds["selu"] == kinds["lrn"] == kinds["clamp_max"] == kinds["exp"] == "point"
    assert kinds["truediv"] == kinds["maximum"] == kinds["sub"] == "binary"      # sub: 1 - z
    full = occlusion_details(model, x, window=4, stride=4, incremental=False)
    inc = occlusion_details(model, x, window=4, stride=4, incremental=True)
    np.testing.assert_allclose(inc.prob_map, full.prob_map, atol=ATOL_INCREMENTAL)


def test_incremental_plan_from_the_meta_device_equals_the_real_one():
    from reportgen.engine.incremental import IncrementalEngine, trace

    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 20, 16)
    starts = np.array([[0, 0], [6, 5], [14, 10]])
    plans = []
    for run in ("shape_pass", "clean_pass"):
        engine = IncrementalEngine(trace(model))
        getattr(engine, run)(x)
        engine.build_plan((6, 6), starts)
        plans.append(({n.name: (p.kind, p.size, None if p.off is None else p.off.tolist())
                       for n, p in engine.plan.items()}, engine.cost_fraction(), engine.peak_bytes()))
    assert plans[0] == plans[1]
    assert not any(p.is_meta for p in model.parameters())


def test_incremental_needs_a_traceable_model(make_images):
    x = make_images(n=1, h=8, w=8)
    with pytest.raises(ValueError, match="traceable"):
        occlusion(Branchy(), x, window=4, stride=4, incremental=True)
    d = occlusion_details(Branchy(), x, window=4, stride=4, incremental="auto")
    assert not d.incremental and "incremental_skipped" in d.notes


# ------------------------------------------------------------------ cost estimate

@pytest.mark.parametrize("shape,window,stride", [((2, 3, 16, 12), (5, 4), (3, 2)), ((1, 3, 10, 10), 4, 4),
                                                 ((3, 3, 8, 8), 2, 4), ((1, 3, 9, 7), (9, 7), 1)])
def test_cost_counts_the_plain_engines_passes_exactly(make_cnn, shape, window, stride):
    model = make_cnn()
    x = torch.randn(shape)
    cost = occlusion_cost(model, shape, window=window, stride=stride)
    d = occlusion_details(model, x, window=window, stride=stride, incremental=False)
    assert cost.plain == d.forward_passes == cost.passes("plain")
    assert cost.images == shape[0] and cost.positions == d.grid[0] * d.grid[1]
    assert occlusion_cost(model, x, window=window, stride=stride) == cost          # a tensor works too


def test_cost_of_the_incremental_engine_is_its_planned_share():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 20, 16)
    cost = occlusion_cost(model, x.shape, window=6, stride=5)
    inc = occlusion_details(model, x, window=6, stride=5, incremental=True)
    auto = occlusion_details(model, x, window=6, stride=5)
    assert round(cost.incremental_fraction, 4) == inc.notes["incremental_cost"] < 1
    assert cost.incremental == pytest.approx(2 * (1 + cost.positions * cost.incremental_fraction))
    assert cost.incremental < cost.plain
    assert cost.auto == ("incremental" if auto.incremental else "plain") == "incremental"
    assert cost.passes() == cost.incremental
    # a window covering the whole image changes every activation: nothing to save, auto runs plain
    whole = occlusion_cost(model, x.shape, window=(20, 16), stride=1)
    assert whole.auto == "plain" and "planned work" in whole.reason
    assert not occlusion_details(model, x, window=(20, 16), stride=1).incremental


def test_cost_runs_nothing_on_real_data(make_cnn):
    model = make_cnn()
    devices = []
    model.conv1.register_forward_pre_hook(lambda m, args: devices.append(args[0].device.type))
    model.train()
    cost = occlusion_cost(model, (4, 3, 16, 12), window=4, stride=2)
    assert devices and set(devices) == {"meta"}                  # shapes only, no forward pass
    assert model.training and model.conv1.weight.device.type == "cpu"
    assert cost.plain == 4 * (1 + 7 * 5)


def test_cost_of_an_untraceable_model(make_images):
    model = Branchy()
    cost = occlusion_cost(model, (1, 3, 8, 8), window=4, stride=4)
    assert cost.incremental is None and cost.auto == "plain" and "traceable" in cost.reason
    assert cost.passes() == cost.plain == 5
    with pytest.raises(ValueError, match="no 'incremental' engine"):
        cost.passes("incremental")
    with pytest.raises(ValueError, match="larger than the image"):
        occlusion_cost(model, (1, 3, 8, 8), window=9)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        occlusion_cost(model, (3, 8, 8))


# ------------------------------------------------------------------ bad input

def test_bad_inputs_raise_and_leave_model_clean(make_cnn, make_images):
    model, x = make_cnn(classes=4), make_images(n=2, h=8, w=8)
    model.train()
    with pytest.raises(ValueError, match="larger than the image"):
        occlusion(model, x, window=(9, 2))
    with pytest.raises(ValueError, match="out of range"):
        occlusion(model, x, target=4, window=4)
    with pytest.raises(ValueError, match="out of range"):
        occlusion(model, x, target=[0, -1], window=4, incremental=True)
    with pytest.raises(ValueError, match="3 targets for 2 images"):
        occlusion(model, x, target=[0, 1, 2], window=4)
    with pytest.raises(ValueError, match="positive"):
        occlusion(model, x, window=4, stride=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        occlusion(model, x[0], window=4)
    with pytest.raises(ValueError, match="incremental"):
        occlusion(model, x, window=4, incremental="yes")
    assert count_hooks(model) == 0
    assert all(m.training for m in model.modules())


def test_torchscript_model_gives_the_eager_result(make_cnn, make_images):
    """No hooks on TorchScript, even wrapped to pick the class scores: the memory probe guesses instead."""
    model, x = make_cnn(), make_images(n=2, h=8, w=8)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, x), buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer)          # as a `torchscript:` model is loaded: no hooks at all
    eager = occlusion_details(model, x, window=4, stride=2)
    traced = occlusion_details(scripted, x, window=4, stride=2)
    np.testing.assert_allclose(traced.sensitivity, eager.sensitivity, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(traced.top_class, eager.top_class)

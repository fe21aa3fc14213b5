"""Each finding rule on a tiny constructed project: one case that triggers it, one that does not,
and the spec's ``findings:`` thresholds changing the outcome.

The projects are seconds-cheap (16x16 inputs, a conv layer and a linear head),
so every rule is exercised end to end through ``reportgen.build`` without the
trained demo; ``tests/test_findings_series.py`` checks the same rules on
series derived from the demo.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.analyses import filters as flt
from reportgen.cli import main
from reportgen.sections import attribution as attr_sections
from tests.project import GOOD, make_project

CONVNET = '''
import torch
from torch import nn

class ConvNet(nn.Module):
    """One kxk conv on RGB, ReLU, global average pool, linear: filters-rule test bed."""

    def __init__(self, out=8, kernel=7, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out, kernel, padding=kernel // 2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv1(x))), 1))
'''

CONV_SPEC = """\
title: filters
model:
  factory: convnet:ConvNet
  kwargs: {{out: {out}, kernel: {kernel}, num_classes: 3}}
  input_size: [3, 16, 16]
checkpoints:
  - ckpt/*.pt
probes:
  images: [probes/*.png]
classes: [cat, dog, bird]
"""


# --------------------------------------------------------------------------- helpers

def smooth_bank(n: int, k: int, in_ch: int = 3, seed: int = 0) -> np.ndarray:
    """``n`` smooth (in_ch, k, k) filters: Gaussian first derivatives, and for k >= 5 blobs and Gabors.

    Each spatial pattern is scaled per input channel by a random colour, the
    structure of trained first-layer filters (luminance and colour-opponent
    edges and blobs). 3x3 gets edges and ramps only: a Gabor that fits in 3
    taps is the Nyquist checkerboard, and a one-colour 3x3 blob is, once its
    mean is removed, a centre-surround pattern at the measure's own lag, which
    roughness cannot tell from noise (a known limit of the score on 3x3).
    """
    rng = np.random.default_rng(seed)
    r = (k - 1) / 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    sigma = max(k / 4, 1.0)
    out = []
    for i in range(n):
        theta = np.pi * rng.uniform()
        xr = x * np.cos(theta) + y * np.sin(theta)
        yr = -x * np.sin(theta) + y * np.cos(theta)
        g = np.exp(-(xr ** 2 + yr ** 2) / (2 * sigma ** 2))
        kinds = ([g, -xr * g, g * np.cos(2 * np.pi * xr / (0.8 * k) + rng.uniform(0, np.pi))]
                 if k >= 5 else [-xr * g, xr])
        colour = rng.normal(size=in_ch)
        out.append(colour[:, None, None] * kinds[i % len(kinds)][None])
    return np.stack(out).astype(np.float32)


def random_conv(out: int, kernel: int, seed: int = 0) -> np.ndarray:
    """PyTorch's default (Kaiming-uniform) initialization: i.i.d. noise filters."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, out, kernel).weight.detach().numpy()


def _save(root: Path, states: Sequence[Dict[str, torch.Tensor]],
          metrics: Optional[Sequence[Dict[str, float]]] = None) -> None:
    for old in (root / "ckpt").glob("*.pt"):
        old.unlink()
    for t, sd in enumerate(states):
        torch.save({"model_state_dict": sd, "epoch": t + 1,
                    "metrics": dict(metrics[t]) if metrics else {}}, root / "ckpt" / f"epoch_{t + 1}.pt")


def conv_project(root: Path, weights: np.ndarray, extra: str = "") -> Path:
    """A ConvNet project whose single checkpoint has ``weights`` as its first layer."""
    out, _, k, _ = weights.shape
    root.mkdir(parents=True, exist_ok=True)
    spec = make_project(root, CONV_SPEC.format(out=out, kernel=k) + extra, checkpoints=0)
    (root / "convnet.py").write_text(CONVNET)
    sys.path.insert(0, str(root))
    try:
        sys.modules.pop("convnet", None)
        sd = importlib.import_module("convnet").ConvNet(out, k).state_dict()
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("convnet", None)
    sd["conv1.weight"] = torch.from_numpy(weights)
    _save(root, [sd])
    return spec


def tiny_series(root: Path, n: int = 3, extra: str = "", frozen_conv: bool = False,
                fc_last: float = 1.0, accs: Optional[Sequence[float]] = None,
                conv_bias: Optional[Sequence[float]] = None) -> Path:
    """TinyNet (conv1 3->4 3x3, relu, GAP, fc) with ``n`` checkpoints that all move a little.

    ``frozen_conv`` keeps conv1 identical in every checkpoint; ``fc_last``
    scales fc (weight and bias) in the last one; ``accs`` are val_acc per
    checkpoint; ``conv_bias`` sets conv1's bias (a large negative bias kills
    the channel) in every checkpoint.
    """
    root.mkdir(parents=True, exist_ok=True)
    spec = make_project(root, GOOD + extra, checkpoints=1)
    base = torch.load(root / "ckpt" / "epoch_1.pt", weights_only=True)["model_state_dict"]
    g = torch.Generator().manual_seed(1)
    states = []
    for t in range(n):
        sd = {k: v.clone() for k, v in base.items()}
        for key in sd:
            if not (frozen_conv and key.startswith("conv1")):
                sd[key] = sd[key] + 0.05 * (t + 1) * torch.randn(sd[key].shape, generator=g)
        if conv_bias is not None:
            sd["conv1.bias"] = torch.tensor(conv_bias, dtype=torch.float32)
        if t == n - 1:
            sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"] * fc_last, sd["fc.bias"] * fc_last
        states.append(sd)
    accs = accs or [0.5 + 0.1 * t for t in range(n)]
    _save(root, states, [{"val_acc": a, "val_loss": 1.0 - a / 2} for a in accs])
    return spec


def findings(spec: Path, only: List[str], **kw) -> Dict[str, dict]:
    """Build (no cache: some tests monkeypatch a section) and return the findings by id."""
    report = reportgen.build(spec, only=only, quiet=True, use_cache=False, **kw)
    return {f["id"]: f for f in report.findings}


def warnings_of(found: Dict[str, dict]) -> List[str]:
    return sorted(i for i, f in found.items() if f["severity"] in ("warning", "error"))


# --------------------------------------------------------------------------- noisy-filters (analysis)

def test_white_noise_scores_one_whatever_the_kernel_size():
    """The unbiased variance keeps i.i.d. noise at ~1 (the biased one read 1.12 for 3x3x1)."""
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 3), (3, 3, 3), (3, 7, 7), (3, 11, 11)]:
        assert abs(float(flt.roughness(rng.standard_normal((3000,) + shape)).mean()) - 1) < 0.02, shape


def test_noise_band_narrows_as_kernels_grow():
    """Fewer neighbour pairs, wider spread of pure noise: the band's lower edge sits lower."""
    bands = [flt.noise_band(s) for s in [(1, 3, 3), (3, 3, 3), (3, 5, 5), (3, 7, 7), (3, 11, 11)]]
    assert bands == sorted(bands) and 0.5 < bands[0] < 0.75 < bands[-1] < 1
    assert flt.noise_band((3, 1, 1)) == 0.0
    assert 0.9 < flt.noise_band((256, 3, 3)) < 1    # the normal-fit path for many taps


def test_random_init_resnet_conv1_is_noisy_and_smooth_banks_are_not():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    res = flt.first_layer_filters(model, "conv1")
    assert res.noisy.mean() > 0.85 and res.noise_band > 0.85
    for k in (3, 7):
        conv = nn.Conv2d(3, 64, k, padding=k // 2)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(smooth_bank(64, k)))
        smooth = flt.first_layer_filters(nn.Sequential(conv), "0")
        assert not smooth.noisy.any(), (k, smooth.noise.round(2))
        conv_random = flt.first_layer_filters(nn.Sequential(nn.Conv2d(3, 64, k)), "0")
        if k >= flt.MIN_NOISE_KERNEL:
            assert conv_random.noisy.mean() > 0.85 and conv_random.noise_note == ""
        else:   # under the floor: nothing is judged, and the result says why
            assert not conv_random.noisy.any() and "3x3 kernels are not judged" in conv_random.noise_note


def test_noise_test_has_a_floor_kernel_side_and_filter_count():
    """Below 5x5 kernels, or under 8 filters, random filters are not called noisy: the rule
    cannot tell them from trained ones there, so it stays silent and says why."""
    torch.manual_seed(0)
    for conv, judged in ((nn.Conv2d(3, 32, 3), False), (nn.Conv2d(3, 32, (5, 3)), False),
                         (nn.Conv2d(3, 7, 7), False), (nn.Conv2d(3, 8, 5), True)):
        res = flt.first_layer_filters(nn.Sequential(conv), "0")
        assert (res.noise_note == "") is judged, (conv, res.noise_note)
        assert bool(res.noisy.any()) == judged


# --------------------------------------------------------------------------- noisy-filters / dead-filters

def test_noisy_filters_fire_on_random_7x7_filters(tmp_path):
    found = findings(conv_project(tmp_path, random_conv(16, 7)), ["filters"])
    assert found["noisy-filters"]["severity"] == "warning" and found["noisy-filters"]["layer"] == "conv1"
    assert "dead-filters" not in found


def test_noisy_filters_stay_quiet_on_random_3x3_filters(tmp_path):
    """Under the evidence floor: no finding, and the section says why in report.json."""
    found = findings(conv_project(tmp_path, random_conv(32, 3)), ["filters"])
    assert "noisy-filters" not in found


def test_noisy_filters_stay_quiet_on_a_smooth_bank(tmp_path):
    found = findings(conv_project(tmp_path, smooth_bank(16, 7)), ["filters"])
    assert found == {}


@pytest.mark.parametrize("extra", ["findings: {noisy_filter_fraction: 1.0}\n",
                                   "sections: {filters: {noise_threshold: 5.0}}\n"])
def test_noisy_filter_thresholds_come_from_the_spec(tmp_path, extra):
    assert "noisy-filters" not in findings(conv_project(tmp_path, random_conv(16, 7), extra), ["filters"])


def test_dead_filters_info_for_a_few_warning_for_many(tmp_path):
    bank = smooth_bank(8, 7)
    bank[0] = 0
    found = findings(conv_project(tmp_path / "one", bank), ["filters"])
    assert found["dead-filters"]["severity"] == "info" and warnings_of(found) == []
    bank[:4] = 0
    found = findings(conv_project(tmp_path / "half", bank), ["filters"])
    assert found["dead-filters"]["severity"] == "warning"
    assert "noisy-filters" not in found


# --------------------------------------------------------------------------- --fail-on

def test_fail_on_warning_trips_on_a_warning_not_on_info(tmp_path):
    bank = smooth_bank(8, 7)
    bank[0] = 0                      # one dead filter of eight: an info finding only
    info_only = conv_project(tmp_path / "info", bank)
    assert main(["build", str(info_only), "--quiet", "--only", "filters", "--fail-on", "warning"]) == 0
    noisy = conv_project(tmp_path / "warn", random_conv(16, 7))
    assert main(["build", str(noisy), "--quiet", "--only", "filters", "--fail-on", "warning"]) == 3
    assert main(["build", str(noisy), "--quiet", "--only", "filters", "--fail-on", "error"]) == 0
    assert main(["build", str(noisy), "--quiet", "--only", "filters"]) == 0


def test_fail_on_follows_the_spec_thresholds(tmp_path):
    relaxed = conv_project(tmp_path, random_conv(16, 7), "findings: {noisy_filter_fraction: 1.0}\n")
    assert main(["build", str(relaxed), "--quiet", "--only", "filters", "--fail-on", "warning"]) == 0


# --------------------------------------------------------------------------- dead channels

def _third_probe(spec):
    from PIL import Image
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(spec.parent / "probes" / "c.png")
    return spec


def test_dead_channels_on_the_probes(tmp_path):
    spec = _third_probe(tiny_series(tmp_path / "dead", n=1, conv_bias=[-100, -100, 0, 0]))
    found = findings(spec, ["activations"])
    dead = [f for i, f in found.items() if i.startswith("dead-channels-")]
    assert len(dead) == 1 and dead[0]["severity"] == "warning" and "2 of 4" in dead[0]["title"]
    alive = _third_probe(tiny_series(tmp_path / "alive", n=1, conv_bias=[0, 0, 0, 0]))
    assert findings(alive, ["activations"]) == {}
    relaxed = _third_probe(tiny_series(tmp_path / "relaxed", n=1, conv_bias=[-100, -100, 0, 0],
                                       extra="findings: {dead_channel_fraction: 0.5}\n"))
    assert findings(relaxed, ["activations"]) == {}


def _one_probe(spec: Path, quiet_channel: Optional[int] = None) -> Path:
    """Keep probe a.png only; ``quiet_channel`` of conv1 outputs -0.01 everywhere: silent, barely."""
    (spec.parent / "probes" / "b.png").unlink()
    if quiet_channel is not None:
        ck = spec.parent / "ckpt" / "epoch_1.pt"
        state = torch.load(ck, weights_only=True)
        state["model_state_dict"]["conv1.weight"][quiet_channel] = 0.0
        state["model_state_dict"]["conv1.bias"][quiet_channel] = -0.01
        torch.save(state, ck)
    return spec


ONE_CHANNEL = "findings: {dead_channel_fraction: 0.2}\n"   # one channel of TinyNet's four is 25 %


def test_certainly_dead_channels_warn_even_on_one_probe(tmp_path):
    spec = _one_probe(tiny_series(tmp_path / "dead", n=1, conv_bias=[-1000, 0, 0, 0], extra=ONE_CHANNEL))
    report = reportgen.build(spec, only=["activations"], quiet=True, use_cache=False)
    dead = [f for f in report.findings if f["id"].startswith("dead-channels-")]
    assert len(dead) == 1 and dead[0]["severity"] == "warning", dead
    assert "1 of 4" in dead[0]["title"] and "1 probe" in dead[0]["evidence"]
    assert "only a hint" not in dead[0]["evidence"]
    summary = report.data["sections"]["activations"]["per_layer"]["relu"]
    assert (summary["dead_channels"], summary["certain_dead"]) == (1, 1)


def test_dead_channels_on_too_few_probes_are_only_a_hint(tmp_path):
    # a channel merely silent on one probe: it may just be selective
    spec = _one_probe(tiny_series(tmp_path / "quiet", n=1, extra=ONE_CHANNEL), quiet_channel=0)
    report = reportgen.build(spec, only=["activations"], quiet=True, use_cache=False)
    dead = [f for f in report.findings if f["id"].startswith("dead-channels-")]
    assert len(dead) == 1 and dead[0]["severity"] == "info" and "only a hint" in dead[0]["evidence"]
    summary = report.data["sections"]["activations"]["per_layer"]["relu"]
    assert (summary["dead_channels"], summary["certain_dead"]) == (1, 0)


def test_dead_channels_on_the_dataset(tmp_path):
    data = "dataset: {root: 'probes/*.png'}\n"
    found = findings(tiny_series(tmp_path / "dead", n=1, conv_bias=[-100, -100, 0, 0], extra=data), ["topk"])
    dead = [f for i, f in found.items() if i.startswith("dataset-dead-channels-")]
    assert len(dead) == 1 and dead[0]["severity"] == "warning"
    assert findings(tiny_series(tmp_path / "alive", n=1, conv_bias=[0, 0, 0, 0], extra=data), ["topk"]) == {}


# --------------------------------------------------------------------------- evolution rules

def test_frozen_layers(tmp_path):
    found = findings(tiny_series(tmp_path / "frozen", frozen_conv=True), ["evolution"])
    assert found["frozen-layers"]["layer"] == "conv1" and found["frozen-layers"]["severity"] == "warning"
    assert list(found) == ["frozen-layers"]
    assert findings(tiny_series(tmp_path / "moving"), ["evolution"]) == {}
    strict = tiny_series(tmp_path / "strict", extra="findings: {frozen_change: 10}\n")
    assert "2 of 2 layers" in findings(strict, ["evolution"])["frozen-layers"]["title"]


def test_frozen_change_zero_turns_the_rule_off(tmp_path):
    off = tiny_series(tmp_path, frozen_conv=True, extra="findings: {frozen_change: 0}\n")
    assert findings(off, ["evolution"]) == {}


def test_weight_norm_explosion(tmp_path):
    found = findings(tiny_series(tmp_path / "boom", fc_last=20.0), ["evolution"])
    assert found["weight-norm-explosion"]["layer"] == "fc" and "weight-norm-vanishing" not in found
    relaxed = tiny_series(tmp_path / "relaxed", fc_last=20.0, extra="findings: {norm_growth: 100}\n")
    assert findings(relaxed, ["evolution"]) == {}


def test_weight_norm_vanishing(tmp_path):
    found = findings(tiny_series(tmp_path / "fade", fc_last=0.01), ["evolution"])
    assert found["weight-norm-vanishing"]["layer"] == "fc" and "weight-norm-explosion" not in found
    relaxed = tiny_series(tmp_path / "relaxed", fc_last=0.01, extra="findings: {norm_shrink: 0.001}\n")
    assert findings(relaxed, ["evolution"]) == {}


def test_metric_regression(tmp_path):
    report = reportgen.build(tiny_series(tmp_path / "worse", accs=[0.5, 0.9, 0.7]), only=["curves"],
                             quiet=True, use_cache=False)
    titles = [f["title"] for f in report.findings if f["id"] == "metric-regression"]
    assert any(t.startswith("val_acc") for t in titles) and any(t.startswith("val_loss") for t in titles)
    assert findings(tiny_series(tmp_path / "better", accs=[0.5, 0.7, 0.9]), ["curves"]) == {}
    relaxed = tiny_series(tmp_path / "relaxed", accs=[0.5, 0.9, 0.7],
                          extra="findings: {regression_points: 50, regression_loss: 1.0}\n")
    assert findings(relaxed, ["curves"]) == {}


# --------------------------------------------------------------------------- attribution rules

SALIENCY = "sections: {gradients: {methods: [saliency]}}\n"


def _maps_from(make):
    """A GradientsSection.compute stand-in whose maps come from ``make(model, images)``."""
    def compute(self, name, model, images, targets, ctx, options, plan):
        maps = np.asarray(make(model, images), dtype=np.float32)
        return maps, maps[:, None].repeat(images.shape[1], axis=1), {}
    return compute


def _image_structure(model, images):
    """Maps that ignore the weights: the image's own edges (what fails Adebayo's check)."""
    x = images.detach().abs().sum(1).numpy()
    return np.abs(np.diff(x, axis=-1, append=x[..., -1:])) + 1e-3


def _weight_noise(model, images):
    """Maps that depend on nothing but the weights: randomizing them changes the map."""
    seed = int(abs(sum(float(p.detach().sum()) for p in model.parameters())) * 1e6) % (2 ** 31)
    return np.random.default_rng(seed).random((images.shape[0],) + tuple(images.shape[-2:]))


def _border(model, images):
    n, _, h, w = images.shape
    maps = np.zeros((n, h, w))
    maps[:, :2, :] = maps[:, -2:, :] = 1.0
    return maps + 1e-6


def _centre(model, images):
    n, _, h, w = images.shape
    maps = np.full((n, h, w), 1e-6)
    maps[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1.0
    return maps


def test_sanity_check_failure(tmp_path, monkeypatch):
    spec = tiny_series(tmp_path, n=1, extra=SALIENCY)
    monkeypatch.setattr(attr_sections.GradientsSection, "compute", _maps_from(_image_structure))
    found = findings(spec, ["gradients"])
    assert found["sanity-saliency"]["severity"] == "warning"
    monkeypatch.setattr(attr_sections.GradientsSection, "compute", _maps_from(_weight_noise))
    assert "sanity-saliency" not in findings(spec, ["gradients"])


def test_sanity_threshold_from_the_section(tmp_path, monkeypatch):
    spec = tiny_series(tmp_path, n=1, extra="sections: {gradients: {methods: [saliency], sanity_threshold: 1.0}}\n")
    monkeypatch.setattr(attr_sections.GradientsSection, "compute", _maps_from(_image_structure))
    assert "sanity-saliency" not in findings(spec, ["gradients"])


def test_sanity_threshold_from_findings(tmp_path, monkeypatch):
    spec = tiny_series(tmp_path, n=1, extra=SALIENCY + "findings: {sanity_spearman: 1.0}\n")
    monkeypatch.setattr(attr_sections.GradientsSection, "compute", _maps_from(_image_structure))
    assert "sanity-saliency" not in findings(spec, ["gradients"])


def test_border_concentration(tmp_path, monkeypatch):
    spec = tiny_series(tmp_path / "a", n=1, extra=SALIENCY)
    monkeypatch.setattr(attr_sections.GradientsSection, "compute", _maps_from(_border))
    assert findings(spec, ["gradients"])["border-saliency"]["severity"] == "warning"
    monkeypatch.setattr(attr_sections.GradientsSection, "compute", _maps_from(_centre))
    assert "border-saliency" not in findings(spec, ["gradients"])
    monkeypatch.setattr(attr_sections.GradientsSection, "compute", _maps_from(_border))
    relaxed = tiny_series(tmp_path / "b", n=1, extra=SALIENCY + "findings: {border_share: 1.0}\n")
    assert "border-saliency" not in findings(relaxed, ["gradients"])

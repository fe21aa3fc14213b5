"""The streaming evolution pass on a constructed series whose answers are known by hand."""
from __future__ import annotations

import copy
import weakref
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from reportgen.analyses import evolution as evo
from reportgen.model.checkpoints import load_checkpoint
from reportgen.model.hooks import count_hooks


def make_series(model: torch.nn.Module, folder: Path, n: int) -> List[Path]:
    """Checkpoint t: conv1.weight += t-th fixed delta, conv2 untouched (frozen), fc doubled each step."""
    g = torch.Generator().manual_seed(1)
    m = copy.deepcopy(model)
    paths = []
    for t in range(n):
        with torch.no_grad():
            if t:
                m.conv1.weight.add_(0.05 * torch.randn(m.conv1.weight.shape, generator=g))
                m.fc.weight.mul_(2.0)
                m.fc.bias.mul_(2.0)
        p = folder / f"epoch_{t + 1}.pt"
        torch.save({"state_dict": m.state_dict(), "epoch": t + 1}, p)
        paths.append(p)
    return paths


class CountingLoader:
    """load_checkpoint that records how many earlier loads are still alive at each call.

    Every tensor a load returned is tracked by weak reference: a load is
    "alive" while any of its tensors is, which is exactly what the analysis
    holds on to (the first checkpoint, the previous one), whatever it names them.
    """

    def __init__(self):
        self.calls = 0
        self.refs: List[List[weakref.ref]] = []
        self.alive_at_call: List[int] = []

    def alive(self) -> int:
        # no gc.collect(): tensors are freed by reference counting the moment
        # nothing holds them, which is the property under test (and gc is slow)
        return sum(any(r() is not None for r in refs) for refs in self.refs)

    def __call__(self, path):
        self.alive_at_call.append(self.alive())
        self.calls += 1
        loaded = load_checkpoint(path)
        self.refs.append([weakref.ref(t) for t in loaded.state_dict.values()])
        return loaded


@pytest.fixture
def series(tmp_path, make_cnn):
    model = make_cnn()
    return model, make_series(model, tmp_path, 5)


def run(model, paths, **kw):
    return evo.evolution(model, paths, [p.stem for p in paths], "conv1", **kw)


def test_drift_norms_and_frozen_layer_match_hand_computation(series):
    model, paths = series
    res = run(model, paths)
    assert res.labels == [f"epoch_{i}" for i in range(1, 6)]
    d = evo.layer_drift(res)
    layers = list(d["layers"])
    assert layers == ["conv1", "conv2", "fc"]
    # fc doubles each step: ||2W - W|| / ||W|| = 1, and vs first 2^t - 1
    np.testing.assert_allclose(d["step"][:, 2], 1.0, rtol=1e-6)
    np.testing.assert_allclose(d["total"][:, 2], [0, 1, 3, 7, 15], rtol=1e-6)
    np.testing.assert_allclose(d["norms"][:, 2], d["norms"][0, 2] * 2.0 ** np.arange(5), rtol=1e-6)
    # conv2 never changes: exactly zero, and the only frozen layer
    assert (d["step"][:, 1] == 0).all() and (d["total"][:, 1] == 0).all()
    assert evo.frozen_layers(d["step"], layers) == ["conv2"]
    # conv1: the per-tensor change is the norm of the added noise
    ck = [load_checkpoint(p).state_dict for p in paths]
    j = res.param_names.index("conv1.weight")
    for t in range(1, 5):
        want = torch.linalg.vector_norm((ck[t]["conv1.weight"] - ck[t - 1]["conv1.weight"]).double())
        assert res.step_change[t - 1, j] == pytest.approx(float(want), rel=1e-6)
        norm = torch.linalg.vector_norm(ck[t]["conv1.weight"].double())
        assert res.norms[t, j] == pytest.approx(float(norm), rel=1e-6)
    assert res.loads == len(paths) + 1


def test_filters_are_each_checkpoints_kernel(series):
    model, paths = series
    res = run(model, paths)
    assert res.filters.shape == (5, 6, 3, 3, 3) and res.filters_total == 6
    for t, p in enumerate(paths):
        np.testing.assert_array_equal(res.filters[t], load_checkpoint(p).state_dict["conv1.weight"].numpy())
    capped = run(model, paths, max_filters=4)
    assert capped.filters.shape[1] == 4 and capped.filters_total == 6


def test_histograms_share_edges_and_count_every_value(series):
    model, paths = series
    res = run(model, paths, bins=16)
    assert res.hist_names == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                              "fc.weight", "fc.bias"]
    assert res.hist_edges.shape == (6, 17) and res.hist_counts.shape == (5, 6, 16)
    sizes = [dict(model.named_parameters())[n].numel() for n in res.hist_names]
    np.testing.assert_array_equal(res.hist_counts.sum(-1) + res.hist_outside.sum(-1),
                                  np.broadcast_to(sizes, (5, 6)))
    # small tensors: the range is min..max of first and last, so both fit entirely
    assert res.hist_outside[0].sum() == 0 and res.hist_outside[-1].sum() == 0
    fc = res.hist_names.index("fc.weight")
    last = load_checkpoint(paths[-1]).state_dict["fc.weight"]
    assert res.hist_edges[fc, 0] <= float(last.min()) and res.hist_edges[fc, -1] >= float(last.max())


def test_feature_maps_follow_the_final_top_channels(series, make_images):
    model, paths = series
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = make_images(n=1, h=12, w=12)[0]
    res = run(model, paths, probe=probe, probe_name="p.png", fmap_layer="conv2", channels=3)
    assert res.fmaps.shape == (5, 3, 6, 6) and res.fmap_shape == [5, 6, 6]
    last = copy.deepcopy(model)
    last.load_state_dict(load_checkpoint(paths[-1]).state_dict)
    with torch.no_grad():
        out = last.conv2(last.pool(last.relu1(last.conv1(probe[None]))))[0]
    want = np.lexsort((np.arange(5), -out.mean(dim=(1, 2)).numpy()))[:3]
    np.testing.assert_array_equal(res.fmap_channels, want)
    np.testing.assert_allclose(res.fmaps[-1], out[want].numpy(), rtol=1e-5, atol=1e-6)
    # the template model is untouched: same weights, no hooks left behind
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert count_hooks(model) == 0


def test_large_feature_maps_are_pooled(series, make_images):
    model, paths = series
    res = run(model, paths[:2], probe=make_images(n=1, h=80, w=40)[0], fmap_layer="conv1", channels=2)
    assert res.fmap_shape == [6, 80, 40] and res.fmaps.shape == (2, 2, 32, 16)


@pytest.mark.parametrize("with_probe", [False, True])
def test_streams_holding_at_most_first_and_previous(tmp_path, make_cnn, make_images, with_probe):
    """20 checkpoints: before each load at most two earlier loads are alive (three during it)."""
    model = make_cnn()
    paths = make_series(model, tmp_path, 20)
    loader = CountingLoader()
    kw = {"probe": make_images(n=1)[0], "fmap_layer": "conv2"} if with_probe else {}
    res = run(model, paths, loader=loader, **kw)
    assert loader.calls == 21 == res.loads
    assert max(loader.alive_at_call) <= (1 if with_probe else 2), loader.alive_at_call
    assert loader.alive() == 0           # nothing kept after the pass


def test_single_checkpoint_and_bad_layer(series):
    model, paths = series
    res = run(model, paths[:1])
    assert res.loads == 1 and res.step_change.shape == (0, len(res.param_names))
    assert evo.frozen_layers(evo.layer_drift(res)["step"], ["conv1", "conv2", "fc"]) == []
    with pytest.raises(ValueError, match="not a 4-D"):
        evo.evolution(model, paths[:2], ["a", "b"], "fc")
    with pytest.raises(ValueError, match="no weight"):
        evo.evolution(model, paths[:2], ["a", "b"], "pool")


def test_helpers():
    assert evo.pick_even(3, 12) == [0, 1, 2]
    assert evo.pick_even(50, 8)[0] == 0 and evo.pick_even(50, 8)[-1] == 49 and len(evo.pick_even(50, 8)) == 8
    names, agg = evo.aggregate(np.array([[3.0, 4.0, 1.0]]), ["a", "a", "b"])
    assert names == ["a", "b"] and agg.tolist() == [[5.0, 1.0]]
    np.testing.assert_array_equal(evo.relative(np.array([1.0, 1.0]), np.array([2.0, 0.0])), [0.5, 1.0])
    edges = evo.hist_edges(np.zeros(4), np.zeros(4), 4)
    assert edges[0] < 0 < edges[-1]

"""Top-k dataset patches: answers worked out by hand, then invariances against brute force.

The hand-checkable model is a greyscale 3x3 conv whose channel 0 is a box
filter (all ones: it counts the white pixels under the window) and whose
channel 1 is its negative (never positive after the ReLU: a dead channel,
all ties). Images are black with white squares, normalized with mean 0 and
std 1, so every activation is a small integer computed exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reportgen.analyses import topk as tk
from reportgen.model.hooks import count_hooks

SIZE = (1, 8, 8)


class BoxNet(nn.Module):
    """conv3x3 (box, -box) -> ReLU ("relu", RF 3, jump 1) -> maxpool 2 ("pool", RF 4, jump 2)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack([torch.ones(1, 3, 3), -torch.ones(1, 3, 3)]))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).amax(dim=(2, 3)))


# (top, left, side) of the white square in each image
SQUARES = [(0, 0, 2), (4, 4, 3), (2, 3, 1), (5, 0, 3), (1, 1, 2), (6, 6, 2)]


def write_images(root: Path, squares=SQUARES, size: int = 8) -> List[Tuple[Path, None]]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (t, l, s) in enumerate(squares):
        a = np.zeros((size, size), dtype=np.uint8)
        a[t:t + s, l:l + s] = 255
        p = root / f"img{i:02d}.png"
        Image.fromarray(a).save(p)
        items.append((p, None))
    return items


def box_dataset(tmp_path: Path, squares=SQUARES) -> tk.ImageDataset:
    return tk.ImageDataset(write_images(tmp_path / "data", squares), SIZE, mean=[0.0], std=[1.0])


@pytest.fixture
def boxnet() -> BoxNet:
    return BoxNet().eval()


# ----------------------------------------------------------------- by hand

def test_box_filter_ranks_images_by_white_pixels_under_the_window(boxnet, tmp_path):
    r = tk.topk_patches(boxnet, box_dataset(tmp_path), ["relu"], channels=[0, 1], k=4, batch_size=2)
    la = r.layers[0]
    # 3x3 squares (images 1, 3) fill the window: 9; 2x2 squares (0, 4): 4; tie -> lower index first
    assert la.values[0].tolist() == [9, 9, 4, 4]
    assert la.images[0].tolist() == [1, 3, 0, 4]
    # the 3x3 square at (4, 4) peaks at its centre (5, 5); the one at (5, 0) at (6, 1).
    # A 2x2 square at (0, 0) is fully seen by the windows centred on (0,0),(0,1),(1,0),(1,1):
    # the first in raster order wins.
    assert list(zip(la.ys[0], la.xs[0])) == [(5, 5), (6, 1), (0, 0), (1, 1)]
    # channel 1 never fires: every image ties at 0, ranked by index, first position
    assert la.values[1].tolist() == [0, 0, 0, 0]
    assert la.images[1].tolist() == [0, 1, 2, 3]
    assert la.ys[1].tolist() == [0, 0, 0, 0] and la.xs[1].tolist() == [0, 0, 0, 0]
    assert la.channel_max.tolist() == [9, 0]


def test_patches_are_the_receptive_field_of_the_winning_unit(boxnet, tmp_path):
    r = tk.topk_patches(boxnet, box_dataset(tmp_path), ["relu"], channels=[0], k=2, batch_size=4)
    la = r.layers[0]
    assert la.rf["size"] == [3, 3]
    assert la.patches.shape == (1, 2, 3, 3, 3)
    assert (la.patches[0] == 255).all()          # a full 3x3 white square fills both windows
    assert la.boxes[0].tolist() == [[4, 4, 7, 7], [5, 0, 8, 3]]
    assert la.sources[0] == ["img01.png", "img03.png"]


def test_auto_channels_pick_the_strongest_and_record_every_score(boxnet, tmp_path):
    r = tk.topk_patches(boxnet, box_dataset(tmp_path), ["relu"], channels=1, k=2)
    la = r.layers[0]
    assert la.channels.tolist() == [0]
    assert la.score.tolist() == [9.0, 0.0]       # mean of the top-2 values per channel
    assert r.channel_rule == tk.CHANNEL_RULE


def test_guided_projection_of_a_box_unit_is_the_box(boxnet, tmp_path):
    r = tk.topk_patches(boxnet, box_dataset(tmp_path), ["relu"], channels=[0], k=2,
                        projection="guided")
    proj = r.layers[0].projections
    assert proj.shape == (1, 2, 3, 3, 1)
    np.testing.assert_array_equal(proj, np.ones_like(proj))   # d(sum of window)/d(pixel) = 1


# ----------------------------------------------------------------- geometry

POOL_RF = {"size": (4, 4), "jump": (2, 2), "start": (0.5, 0.5)}


def test_crop_interior_unit_is_exact():
    img = np.arange(64).reshape(8, 8)
    np.testing.assert_array_equal(tk.crop_patch(img, POOL_RF, 1, 1, fill=-1), img[1:5, 1:5])


def test_crop_clipped_at_top_left_is_padded_to_full_size():
    img = np.arange(64).reshape(8, 8)
    patch = tk.crop_patch(img, POOL_RF, 0, 0, fill=-1)      # window rows/cols -1..2
    assert patch.shape == (4, 4)
    assert (patch[0] == -1).all() and (patch[:, 0] == -1).all()
    np.testing.assert_array_equal(patch[1:, 1:], img[0:3, 0:3])


def test_crop_clipped_at_bottom_right_keeps_colour_fill():
    img = np.arange(8 * 8 * 3).reshape(8, 8, 3).astype(np.uint8)
    patch = tk.crop_patch(img, POOL_RF, 3, 3, fill=[1, 2, 3])  # window rows/cols 5..8
    assert patch.shape == (4, 4, 3)
    np.testing.assert_array_equal(patch[:3, :3], img[5:8, 5:8])
    assert (patch[3] == [1, 2, 3]).all() and (patch[:, 3] == [1, 2, 3]).all()


def test_pool_layer_patches_align_with_the_unit(boxnet, tmp_path):
    ds = box_dataset(tmp_path)
    r = tk.topk_patches(boxnet, ds, ["pool"], channels=[0], k=len(SQUARES), batch_size=4)
    la = r.layers[0]
    assert la.rf["size"] == [4, 4] and la.patches.shape[2:4] == (4, 4)
    fill = ds.fill_colour()
    for j in range(la.images.shape[1]):
        display = ds.load(int(la.images[0, j]))[1]
        expected = tk.crop_patch(display, la.rf, int(la.ys[0, j]),
                                 int(la.xs[0, j]), fill)
        np.testing.assert_array_equal(la.patches[0, j], expected)
    assert tuple(fill) == (0, 0, 0)              # mean 0: zero padding looks black


def test_large_receptive_fields_are_stored_downscaled():
    assert tk.stored_side((40, 20)) == (40, 20)
    assert tk.stored_side((400, 200)) == (tk.MAX_PATCH, tk.MAX_PATCH // 2)


# ----------------------------------------------------------------- against brute force

def brute_force(model: nn.Module, x: torch.Tensor, layer: str, k: int):
    """Every activation in memory: per channel, images by (max desc, index asc)."""
    acts = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.update(o=o))
    with torch.no_grad():
        model(x)
    h.remove()
    a = acts["o"].flatten(2)                       # (N, C, HW)
    best, pos = a.max(dim=2)                       # first max in raster order
    out = []
    for c in range(a.shape[1]):
        v = best[:, c].numpy()
        order = np.lexsort((np.arange(len(v)), -v))[:k]
        out.append((v[order], order, pos[order, c].numpy()))
    return out


class Indexed(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_streaming_equals_brute_force_for_any_batch_size(make_cnn, make_images, batch_size):
    model, x = make_cnn(), make_images(n=13, h=12, w=12)
    state = tk.stream_topk(model, Indexed(x), ["relu1", "relu2"], k=5, batch_size=batch_size)
    assert state.n_images == 13
    for layer in ("relu1", "relu2"):
        got = state.layers[layer]
        for c, (v, idx, pos) in enumerate(brute_force(model, x, layer, 5)):
            assert got["images"][c].tolist() == idx.tolist()
            assert got["positions"][c].tolist() == pos.tolist()
            np.testing.assert_allclose(got["values"][c], v, rtol=1e-5, atol=1e-6)


def test_k_larger_than_the_dataset_lists_every_image_once(boxnet, tmp_path):
    r = tk.topk_patches(boxnet, box_dataset(tmp_path), ["relu"], channels=2, k=50)
    assert r.k == len(SQUARES)
    for la in r.layers:
        assert la.values.shape == (2, len(SQUARES))
        for row in la.images:
            assert sorted(row.tolist()) == list(range(len(SQUARES)))


def test_merge_breaks_ties_by_image_index_whatever_the_input_order():
    values = torch.tensor([[1.0, 2.0, 2.0, 1.0, float("nan"), 2.0]])
    images = torch.tensor([[5, 9, 3, 0, 1, 4]])
    positions = torch.tensor([[50, 90, 30, 0, 10, 40]])
    want = None
    for perm in (torch.arange(6), torch.tensor([5, 4, 3, 2, 1, 0]), torch.tensor([2, 0, 4, 1, 5, 3])):
        v, i, p = tk.merge_topk(values[:, perm], images[:, perm], positions[:, perm], k=5)
        got = (v.tolist(), i.tolist(), p.tolist())
        assert i.tolist() == [[3, 4, 9, 0, 5]]
        assert p.tolist() == [[30, 40, 90, 0, 50]]
        want = want or got
        assert got == want


def test_shard_merge_is_exact(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=11, h=12, w=12)
    whole = tk.stream_topk(model, Indexed(x), ["relu2"], k=4, batch_size=4)
    shards = [tk.stream_topk(model, torch.utils.data.Subset(Indexed(x), range(r, 11, 3)), ["relu2"],
                             k=4, batch_size=2) for r in range(3)]
    merged = tk.merge_states(shards, k=4)
    assert merged.n_images == 11
    for f in ("images", "positions"):
        np.testing.assert_array_equal(merged.layers["relu2"][f], whole.layers["relu2"][f])
    np.testing.assert_allclose(merged.layers["relu2"]["values"], whole.layers["relu2"]["values"], rtol=1e-5)


# ----------------------------------------------------------------- memory, hooks, errors

def test_running_state_does_not_grow_with_the_dataset(make_cnn, make_images):
    model = make_cnn()
    sizes = []
    for n in (4, 40):
        state = tk.RunningTopK(channels=5, k=3, device=torch.device("cpu"))
        sizes.append(state.nbytes())
        for lo in range(0, n, 4):
            state.update(torch.randn(4, 5, 6, 6), torch.arange(lo, lo + 4))
            assert state.nbytes() == sizes[-1]
    assert sizes[0] == sizes[1] == 5 * 3 * (4 + 8 + 8)
    small = tk.stream_topk(model, Indexed(make_images(n=4, h=8, w=8)), ["relu2"], k=3, batch_size=2)
    large = tk.stream_topk(model, Indexed(make_images(n=40, h=8, w=8)), ["relu2"], k=3, batch_size=2)
    assert {f: a.shape for f, a in small.layers["relu2"].items()} == \
           {f: a.shape for f, a in large.layers["relu2"].items()}


def test_hooks_are_removed_and_modes_restored(make_cnn, make_images):
    model = make_cnn().train()
    tk.stream_topk(model, Indexed(make_images(n=3, h=8, w=8)), ["relu1"], k=2)
    assert count_hooks(model) == 0 and model.training
    with pytest.raises(ValueError, match="not .N, C, H, W."):
        tk.stream_topk(model, Indexed(make_images(n=3, h=8, w=8)), ["fc"], k=2)
    assert count_hooks(model) == 0 and model.training


def test_dataset_is_deterministic_and_labels_images(tmp_path):
    items = write_images(tmp_path / "d")
    items = [(p, "square") for p, _ in items]
    ds = tk.ImageDataset(items, SIZE, mean=[0.0], std=[1.0])
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and a[1] == 1
    assert ds.name(1) == "square/img01.png"
    assert a[0].shape == SIZE and float(a[0].max()) == 1.0


def test_bad_options_are_refused(boxnet, tmp_path):
    ds = box_dataset(tmp_path)
    with pytest.raises(ValueError, match="projection"):
        tk.topk_patches(boxnet, ds, ["relu"], 1, 2, projection="magic")
    with pytest.raises(ValueError, match="out of range"):
        tk.topk_patches(boxnet, ds, ["relu"], [7], 2)


# ----------------------------------------------------------------- the section in a build

def test_section_without_dataset_shows_a_note(tmp_path):
    import reportgen
    from tests.project import make_project

    spec = make_project(tmp_path)
    report = reportgen.build(spec, out_dir=tmp_path / "site", only=["topk"], use_cache=False)
    assert report.data["sections"]["topk"] == {"skipped": "no dataset in the spec"}
    assert "Not shown: no dataset in the spec. Add a dataset: with root:" in report.path.read_text()


def test_section_with_dataset_renders_a_grid_and_summary(tmp_path):
    import reportgen
    from tests.project import GOOD, make_project

    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "data" / cls / f"{i}.png")
    spec = make_project(tmp_path, GOOD + "dataset: {root: data, batch_size: 4}\n"
                                          "sections: {topk: {channels: 2, k: 3}}\n")
    report = reportgen.build(spec, out_dir=tmp_path / "site", only=["topk"], use_cache=False)
    s = report.data["sections"]["topk"]
    assert s["layers_auto"] is True and s["layers"] and s["k"] == 3 and s["images"] == 6
    layer = s["layers"][-1]
    assert len(s["per_layer"][layer]["channels"]) == 2
    html = report.path.read_text()
    assert "Top-k dataset patches" in html and "data:image/" in html



def test_an_unknown_layer_leaves_no_hook_behind(make_cnn):
    model = make_cnn().train()
    with pytest.raises(ValueError, match="unknown layer"):
        with tk.TopKTracker(model, ["relu1", "nope"], k=2):
            pass
    assert count_hooks(model) == 0 and model.training


def test_tracker_steps_match_the_streaming_pass(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=6, h=8, w=8)
    with tk.TopKTracker(model, ["relu2"], k=3) as tracker:
        tracker.step(x[:4], torch.arange(4))
        tracker.step(x[4:], torch.arange(4, 6))
    want = tk.stream_topk(model, Indexed(x), ["relu2"], k=3, batch_size=4)
    for f in ("images", "positions", "values"):
        np.testing.assert_array_equal(tracker.result().layers["relu2"][f], want.layers["relu2"][f])


# ----------------------------------------------------------------- layouts

class _Reshape(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _with_lead_token(tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)


class BoxNetLayouts(BoxNet):
    """BoxNet whose ReLU map is also offered channels-last and as tokens (N, 64, 2) with a lead token."""

    def __init__(self):
        super().__init__()
        self.last = _Reshape(lambda x: x.permute(0, 2, 3, 1))
        self.tokens = _Reshape(lambda x: _with_lead_token(x.flatten(2).transpose(1, 2)))

    def forward(self, x):
        r = self.relu(self.conv(x))
        return self.fc(self.pool(r).amax(dim=(2, 3)) + 0 * self.last(r).sum() + 0 * self.tokens(r).sum())


def test_channels_last_and_token_layers_rank_like_their_channels_first_map(tmp_path):
    """The same map read through three layouts gives the same top-k units; a token layer
    (its field untraceable) is cropped from the whole input, centred on the unit."""
    model, ds = BoxNetLayouts().eval(), box_dataset(tmp_path)
    r = tk.topk_patches(model, ds, ["relu", "last", "tokens"], channels=[0, 1], k=4, batch_size=4)
    first, last, tokens = r.layers
    assert [la.layout for la in r.layers] == ["nchw", "nhwc", "tokens"]
    for other in (last, tokens):
        assert other.shape == first.shape == [2, 8, 8]
        for f in ("values", "images", "ys", "xs"):
            np.testing.assert_array_equal(getattr(other, f), getattr(first, f))
    assert last.rf == first.rf and last.patches.tobytes() == first.patches.tobytes()
    assert tokens.rf == {"size": [8, 8], "jump": [1, 1], "start": [0.0, 0.0]}
    assert first.rf_note == last.rf_note == "" and "whole input" in tokens.rf_note


class _UnknownGeometry(nn.Module):
    """A childless module of unknown geometry: receptive_field refuses it."""

    def forward(self, x):
        return x.roll(1, dims=-1)


class BoxNetUntraceable(BoxNet):
    def __init__(self):
        super().__init__()
        self.shift = _UnknownGeometry()

    def forward(self, x):
        return self.fc(self.pool(self.shift(self.relu(self.conv(x)))).amax(dim=(2, 3)))


def test_a_channels_first_layer_whose_field_cannot_be_traced_shows_whole_input_patches(tmp_path):
    """Not a failed section: the patches are the whole input centred on the unit's cell, and
    the layer says so and why, in place."""
    model, ds = BoxNetUntraceable().eval(), box_dataset(tmp_path)
    r = tk.topk_patches(model, ds, ["relu", "shift"], channels=[0], k=2, batch_size=4)
    traced, untraced = r.layers
    assert traced.rf_note == "" and traced.rf["size"] == [3, 3]
    assert untraced.rf == {"size": [8, 8], "jump": [1, 1], "start": [0.0, 0.0]}
    assert "whole input" in untraced.rf_note and "'roll'" in untraced.rf_note
    from reportgen.render.topk import layer_view
    assert layer_view(untraced)["rf_note"] == untraced.rf_note


def test_a_page_share_shrinks_the_stored_patches(tmp_path, monkeypatch):
    """Top-k takes part in the page budget: its weight is its patches at their stored side (the field,
    capped), and a small share caps the patch side, never below MIN_PATCH."""
    from types import SimpleNamespace

    from reportgen.analyses.dataset_pass import Taps
    from reportgen.sections.topk import MIN_PATCH, TopKSection

    section = TopKSection({})
    opts = section.options
    tiles = 2 * 16 * 9
    full = SimpleNamespace(dataset=[None] * 200, page_share=lambda name: None, model=None, input_size=(3, 224, 224))
    monkeypatch.setattr(TopKSection, "_taps", lambda self, ctx, o: Taps(topk_layers=("small", "deep"), topk_k=9))
    fields = {"small": (20, 20), "deep": (300, 300)}      # the deep one is stored at the 128 px cap
    monkeypatch.setattr(tk, "unit_field", lambda model, name, *a: {"size": fields[name]})
    assert section.page_bytes(full, opts) == tiles / 2 * (20 * 20 + tk.MAX_PATCH ** 2)
    assert section.patch_cap(full, opts) == tk.MAX_PATCH
    half = SimpleNamespace(dataset=[None] * 200, page_share=lambda name: tiles * 64 ** 2)
    assert section.patch_cap(half, opts) == 64
    tiny = SimpleNamespace(dataset=[None] * 200, page_share=lambda name: 1000)
    assert section.patch_cap(tiny, opts) == MIN_PATCH
    assert tk.stored_side((200, 100), 64) == (64, 32)

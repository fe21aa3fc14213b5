"""reportgen/render/evolution.py on hand-made series: frames, drift table, ridgelines, curves."""
from __future__ import annotations

import base64
import io
import re
from typing import List, Optional, Sequence

import matplotlib
import numpy as np
import pytest
from PIL import Image

from reportgen.analyses import metrics as mt
from reportgen.analyses.evolution import EvolutionResult
from reportgen.render import evolution as rev


def decode(uri: str) -> np.ndarray:
    """A data: URI's image as an array."""
    head, _, data = uri.partition(",")
    assert head in ("data:image/png;base64", "data:image/webp;base64"), head
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def viridis(v: float) -> np.ndarray:
    return np.array(matplotlib.colormaps["viridis"](v, bytes=True)[:3])


def result(labels: Sequence[str], filters: Optional[np.ndarray] = None, **kw) -> EvolutionResult:
    """An EvolutionResult with the fields a test does not care about left empty."""
    t = len(labels)
    fields = dict(labels=list(labels), param_names=[], layer_of=[], norms=np.zeros((t, 0)),
                  step_change=np.zeros((t - 1, 0)), total_change=np.zeros((t, 0)), filter_layer="conv",
                  filters=filters if filters is not None else np.zeros((t, 1, 1, 1, 1), np.float32),
                  filters_total=1, hist_names=[], hist_edges=np.zeros((0, 3)),
                  hist_counts=np.zeros((t, 0, 2), np.int64), hist_outside=np.zeros((t, 0, 2), np.int64))
    fields.update(kw)
    return EvolutionResult(**fields)


# --------------------------------------------------------------------------- frames

def test_sprite_stacks_frames_top_to_bottom():
    frames = [np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30)]
    view = rev.sprite(frames)
    assert (view["frame_w"], view["frame_h"], view["n"]) == (3, 2, 3)
    img = decode(view["image"])
    assert img.shape == (6, 3, 3)
    assert [int(img[2 * i, 0, 0]) for i in range(3)] == [10, 20, 30]


def test_strip_keeps_first_and_last_of_a_long_series():
    frames = [np.full((1, 1, 3), i, np.uint8) for i in range(20)]
    labels = [f"e{i}" for i in range(20)]
    items = rev.strip(frames, labels)
    assert len(items) == rev.STRIP_FRAMES
    assert items[0]["label"] == "e0" and items[-1]["label"] == "e19"
    for item in items:
        assert item["label"] == f"e{item['index']}"
        assert int(decode(item["image"])[0, 0, 0]) == item["index"]


def test_filter_frames_share_each_filters_scale_over_time():
    # 1x1 greyscale kernels: filter 0 grows 0.5 -> 1.0, filter 1 shrinks -2 -> -1, filter 2 stays 0
    w = np.array([[0.5, -2.0, 0.0], [1.0, -1.0, 0.0]], np.float32).reshape(2, 3, 1, 1, 1)
    frames = rev.filter_frames(result(["a", "b"], filters=w))
    assert len(frames) == 2 and frames[0].shape == (3, 7, 3)   # three 1x1 cells, 1 px padding
    # per filter, +-max|w| over the series is white/black and zero is grey
    assert frames[0][1, 1].tolist() == [191] * 3    # 0.5 of max 1.0 -> 0.75
    assert frames[1][1, 1].tolist() == [255] * 3    # 1.0 -> white
    assert frames[0][1, 3].tolist() == [0] * 3      # -2 of max 2 -> black
    assert frames[1][1, 3].tolist() == [64] * 3     # -1 of max 2 -> 0.25, not re-stretched to black
    assert frames[0][1, 5].tolist() == frames[1][1, 5].tolist() == [128] * 3   # zero -> grey
    assert frames[0][0, 0].tolist() == [255] * 3    # white padding


def test_fmap_frames_keep_one_colour_scale_per_channel():
    maps = np.array([1.0, 2.0], np.float32).reshape(2, 1, 1, 1)    # one channel doubling
    fr = result(["a", "b"], fmaps=maps)
    frames = rev.fmap_frames(fr)
    np.testing.assert_array_equal(frames[0][1, 1], viridis(0.5))
    np.testing.assert_array_equal(frames[1][1, 1], viridis(1.0))


def test_frames_view_scales_cells_to_the_target_within_the_width():
    frames = [np.zeros((4, 6, 3), np.uint8) for _ in range(3)]
    view = rev.frames_view(frames, ["a", "b", "c"], cell=2, target=8, max_width=1000)
    assert view["scale"] == 4
    assert (view["width"], view["height"], view["total_height"]) == (24, 16, 48)
    assert view["strip_width"] == 12 and len(view["strip"]) == 3
    narrow = rev.frames_view(frames, ["a", "b", "c"], cell=2, target=8, max_width=13)
    assert narrow["scale"] == 2 and narrow["width"] == 12     # 13 px wide: 6 px frames fit twice


def test_thumbnail_fits_the_slot_keeping_the_aspect():
    photo = np.zeros((100, 200, 3), np.uint8)
    assert decode(rev.thumbnail(photo, side=96)).shape == (48, 96, 3)


# --------------------------------------------------------------------------- drift table

def test_heat_levels_are_log_spaced_above_the_threshold():
    levels, legend = rev.heat_levels(np.array([1e-8, 1e-3, 1e-2, 1e-1]), threshold=1e-6)
    # 1e-3 .. 1e-1 is two decades: eight quarter-decade levels
    assert levels.tolist() == [0, 1, 5, 8]
    assert len(legend) == rev.HEAT_LEVELS + 1
    assert legend[0] == {"level": 0, "color": "", "label": "< 1e-06 (not moving)"}
    assert legend[1]["label"] == "0.001 – 0.0018" and legend[-1]["label"] == "0.056 – 0.1"
    assert all(re.fullmatch(r"#[0-9a-f]{6}", item["color"]) for item in legend[1:])


def test_heat_levels_of_a_frozen_series_with_a_zero_threshold():
    levels, legend = rev.heat_levels(np.zeros(3), threshold=0.0)
    assert levels.tolist() == [0, 0, 0] and len(legend) == 2


def drift_result() -> EvolutionResult:
    """conv (weight 3, bias 4: norm 5) moves by 5 then not at all; fc never moves; a root scale."""
    return result(["e0", "e1", "e2"],
                  param_names=["conv.weight", "conv.bias", "fc.weight", "scale"],
                  layer_of=["conv", "conv", "fc", ""],
                  norms=np.tile([3.0, 4.0, 2.0, 1.0], (3, 1)),
                  step_change=np.array([[3.0, 4.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]),
                  total_change=np.array([[0.0] * 4, [3.0, 4.0, 0.0, 0.5], [3.0, 4.0, 0.0, 0.5]]))


def test_drift_view_rows_columns_and_frozen_layers():
    view = rev.drift_view(drift_result(), threshold=1e-6)
    assert [r["layer"] for r in view["rows"]] == ["conv", "fc", "(root)"]
    conv, fc, root = view["rows"]
    assert [c["v"] for c in conv["cells"]] == ["1.00e+00", "0.00e+00"]       # 5 / 5, then 0
    assert [c["v"] for c in root["cells"]] == ["5.00e-01", "0.00e+00"]
    assert conv["total"]["v"] == "1.00e+00" and fc["total"]["v"] == "0.00e+00"
    assert (conv["norm_first"], conv["norm_last"]) == (5.0, 5.0)
    # moving cells get a level above 0, still ones level 0
    assert [c["q"] for c in conv["cells"]] == [conv["total"]["q"], 0] and conv["total"]["q"] > 0
    assert 0 < root["cells"][0]["q"] < conv["cells"][0]["q"]
    assert [c["q"] for c in fc["cells"]] == [0, 0] and fc["total"]["q"] == 0
    assert [r["frozen"] for r in view["rows"]] == [False, True, False] and view["n_frozen"] == 1
    assert view["columns"] == [{"n": 1, "title": "e0 → e1"}, {"n": 2, "title": "e1 → e2"}]
    assert (view["first"], view["last"], view["threshold"]) == ("e0", "e2", 1e-6)


# --------------------------------------------------------------------------- ridgelines

def test_ridgeline_draws_one_ridge_per_checkpoint_on_shared_scales():
    counts = np.array([[3, 1], [1, 1]])
    svg = rev.ridgeline_svg(np.array([-1.0, 0.0, 1.0]), counts, ["old", "<new>"], "w & b")
    polygons = re.findall(r'<polygon points="([^"]+)"', svg)
    assert len(polygons) == 2
    # heights are fractions of values per bin, the fullest (3/4) reaching the ridge
    # height: 2.2 gaps (28.6 px) above the first baseline (y = 32.6)
    assert polygons[0] == "136.5,32.6 136.5,4.0 253.5,23.1 253.5,32.6"
    # half the values per bin: 2/3 of that height, above a baseline 13 px lower
    assert polygons[1] == "136.5,45.6 136.5,26.5 253.5,26.5 253.5,45.6"
    assert "<title>w &amp; b</title>" in svg and "&lt;new&gt;" in svg and "<new>" not in svg
    assert re.findall(r'class="tick">([^<]+)</text>', svg)[2:] == ["-1", "1", "0"]


def test_histograms_view_groups_tensors_by_layer():
    t = 20
    counts = np.zeros((t, 3, 2), np.int64)
    counts[:, :, 0] = 8
    outside = np.zeros((t, 3, 2), np.int64)
    outside[-1, 0] = [1, 1]                          # conv.weight: 2 of 10 values off the edges
    res = result([f"e{i}" for i in range(t)], hist_names=["conv.weight", "conv.bias", "fc.weight"],
                 hist_edges=np.tile([-1.0, 0.0, 1.0], (3, 1)), hist_counts=counts, hist_outside=outside)
    view = rev.histograms_view(res)
    assert (view["n_shown"], view["n_total"]) == (rev.RIDGES, t)
    assert view["labels"][0] == "e0" and view["labels"][-1] == "e19" and len(view["labels"]) == rev.RIDGES
    assert [(g["layer"], [p["kind"] for p in g["panels"]]) for g in view["layers"]] == \
        [("conv", ["weight", "bias"]), ("fc", ["weight"])]
    weight = view["layers"][0]["panels"][0]
    assert weight["name"] == "conv.weight"
    assert weight["svg"].count("<polygon") == rev.RIDGES
    assert weight["outside"] == pytest.approx(0.2)
    assert view["layers"][1]["panels"][0]["outside"] == 0.0


# --------------------------------------------------------------------------- line charts

@pytest.mark.parametrize("lo,hi,n,ticks", [(0, 1, 5, [0, 0.25, 0.5, 0.75, 1.0]),
                                           (0, 10, 6, [0, 2, 4, 6, 8, 10]),
                                           (0.3, 1.7, 5, [0.5, 1.0, 1.5]),
                                           (2, 2, 5, [2])])
def test_nice_ticks(lo, hi, n, ticks):
    assert rev.nice_ticks(lo, hi, n) == pytest.approx(ticks)


def test_decimate_keeps_spikes_and_ends():
    x = np.arange(1000.0)
    y = np.zeros(1000)
    y[537], y[800] = 50.0, -50.0
    dx, dy = rev.decimate(x, y, limit=100)
    assert dx.size <= 102 and dx[0] == 0 and dx[-1] == 999
    assert 537 in dx and 800 in dx and np.all(np.diff(dx) > 0)
    np.testing.assert_array_equal(dy, y[dx.astype(int)])
    short = np.arange(5.0)
    assert rev.decimate(short, short, limit=100)[0] is short


def _polyline_ys(svg: str) -> List[List[float]]:
    return [[float(p.split(",")[1]) for p in pts.split()]
            for pts in re.findall(r'<polyline points="([^"]+)"', svg)]


def test_line_chart_uses_a_log_axis_beyond_two_decades():
    x = np.array([1.0, 2.0, 3.0])
    svg, log_y = rev.line_chart_svg([("loss", x, np.array([10.0, 1.0, 0.01]))], "step", "t")
    assert log_y
    ys = _polyline_ys(svg)[0]
    assert ys[0] < ys[1] < ys[2]                         # falling loss goes down the chart
    assert ys[0] - ys[1] == pytest.approx((ys[1] - ys[2]) / 2, abs=0.11)   # one decade, then two
    assert {"1e-2", "1e-1", "1e0", "1e1"} <= set(re.findall(r'class="tick">(1e-?\d+)<', svg))
    svg, log_y = rev.line_chart_svg([("acc", x, np.array([0.2, 0.5, 0.9]))], "step", "t")
    assert not log_y and svg.count("<circle") == 3


def test_line_chart_of_a_constant_series_has_a_usable_range():
    svg, log_y = rev.line_chart_svg([("lr", np.array([5.0]), np.array([0.0]))], "epoch", "<lr>")
    assert not log_y and "nan" not in svg and "inf" not in svg
    assert "<title>&lt;lr&gt;</title>" in svg


def test_curves_view_groups_losses_and_accuracies():
    steps = np.array([1.0, 2.0, 3.0])
    table = mt.MetricsTable(series={"train_loss": mt.Series(steps, np.array([3.0, 2.0, 2.5])),
                                    "val_loss": mt.Series(steps, np.array([4.0, 1.0, 1.5])),
                                    "val_acc": mt.Series(steps, np.array([0.1, 0.7, 0.6])),
                                    "lr": mt.Series(steps, np.array([0.1, 0.1, 0.01]))},
                            x_label="epoch", source="csv")
    charts = rev.curves_view(table)
    assert [(c["kind"], [s["name"] for s in c["legend"]]) for c in charts] == \
        [("loss", ["train_loss", "val_loss"]), ("accuracy", ["val_acc"]), ("other", ["lr"])]
    loss, acc, other = charts
    assert [(s["last"], s["best"], s["points"]) for s in loss["legend"]] == [(2.5, 2.0, 3), (1.5, 1.0, 3)]
    assert (acc["legend"][0]["last"], acc["legend"][0]["best"]) == (0.6, 0.7)
    assert other["legend"][0]["best"] is None
    assert loss["legend"][0]["color"] != loss["legend"][1]["color"]
    assert loss["title"] == "train_loss, val_loss against epoch"
    assert loss["svg"].count("<polyline") == 2 and acc["svg"].count("<polyline") == 1
    split = rev.curves_view(table, max_series=1)
    assert [c["kind"] for c in split] == ["loss", "loss", "accuracy", "other"]

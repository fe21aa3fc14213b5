"""Pictures of a checkpoint series: packed frame sprites, a heat table, hand-built SVG.

Size is the design constraint: a 50-checkpoint report must stay a few MB.
So frames are stored at native resolution (a 7x7 kernel is 7x7 pixels) and
blown up by the browser (``image-rendering: pixelated``); all frames of a
figure live in ONE vertically stacked PNG that the slider scrolls; plots are
inline SVG polylines with rounded coordinates rather than raster images; and
the heat table is plain cells with a class per colour level.

Every string that reaches SVG markup here is escaped: labels and metric names
come from user files.
"""
from __future__ import annotations

import html
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps

from reportgen.analyses import metrics as mt
from reportgen.analyses.evolution import EvolutionResult, frozen_layers, layer_drift, pick_even
from reportgen.render.heatmap import colorize
from reportgen.render.images import pack_grid, png_uri, webp_uri

STRIP_FRAMES = 8          # frames in the static (print) strip
RIDGES = 12               # checkpoints drawn per ridgeline plot
HEAT_LEVELS = 8           # colour levels of the drift table above the frozen level
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
MAX_PLOT_POINTS = 600     # per polyline: a 10^5-step log is drawn as min/max per bucket


def _hex(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb[:3])


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v: float) -> str:
    """Compact, deterministic numbers for SVG text and titles."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.2g}"


# --------------------------------------------------------------------------- frame sprites

def sprite(frames: Sequence[np.ndarray]) -> Dict[str, Any]:
    """Equal-size RGB frames stacked vertically into one PNG, plus the geometry the slider needs."""
    h, w = frames[0].shape[:2]
    return {"image": png_uri(np.concatenate(list(frames), axis=0)), "frame_w": int(w),
            "frame_h": int(h), "n": len(frames)}


def strip(frames: Sequence[np.ndarray], labels: Sequence[str]) -> List[Dict[str, Any]]:
    """A few evenly spread frames (first and last included) as separate small images, for print."""
    return [{"label": labels[i], "image": png_uri(frames[i]), "index": i}
            for i in pick_even(len(frames), STRIP_FRAMES)]


def _scale(native: int, target: int, width: int, max_width: int) -> int:
    """Integer blow-up so a native-size frame shows at about ``target`` px per cell."""
    return max(1, min(max(1, target // max(native, 1)), max(1, max_width // max(width, 1))))


def filter_frames(res: EvolutionResult) -> List[np.ndarray]:
    """One uint8 RGB grid per checkpoint, each filter in the same cell every time.

    Normalization is per filter but common to all checkpoints (zero is grey,
    +-max|w| over the series is white/black), so a filter that grows gets
    brighter instead of being re-stretched frame by frame.
    """
    w = res.filters                                  # (T, O, C, kh, kw)
    scale = np.abs(w).reshape(w.shape[0], w.shape[1], -1).max(axis=(0, 2))   # (O,)
    scale = np.where(scale > 0, scale, 1.0)[None, :, None, None, None]
    img = 0.5 + w / (2 * scale)
    img = img.transpose(0, 1, 3, 4, 2)               # (T, O, kh, kw, C)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    n = img.shape[1]
    cols = n if n <= 16 else min(16, int(math.ceil(math.sqrt(n))))   # 64 filters: an 8x8 square
    frames = []
    for t in range(img.shape[0]):
        tiles = [(np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8) for f in img[t]]
        grid, _ = pack_grid(tiles, cols=cols, pad=1, background=1.0)
        frames.append(grid)
    return frames


def fmap_frames(res: EvolutionResult) -> List[np.ndarray]:
    """One row of colour-mapped channels per checkpoint; each channel keeps one scale over time."""
    maps = res.fmaps                                 # (T, K, h, w)
    vmax = maps.max(axis=(0, 2, 3))
    vmin = np.minimum(0.0, maps.min(axis=(0, 2, 3)))
    cols = min(8, maps.shape[1])
    frames = []
    for t in range(maps.shape[0]):
        tiles = [colorize(maps[t, k], "viridis", float(vmin[k]), float(vmax[k]))
                 for k in range(maps.shape[1])]
        grid, _ = pack_grid(tiles, cols=cols, pad=1, background=1.0)
        frames.append(grid)
    return frames


def thumbnail(display: np.ndarray, side: int = 96) -> str:
    """A probe image shrunk for a 64 px slot: the full-size PNG of a photo costs 100+ KB."""
    from PIL import Image

    img = Image.fromarray(display)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return webp_uri(np.asarray(img), quality=85)


def frames_view(frames: List[np.ndarray], labels: Sequence[str], cell: int, target: int,
                max_width: int) -> Dict[str, Any]:
    view = sprite(frames)
    s = _scale(cell, target, view["frame_w"], max_width)
    view.update(scale=s, width=view["frame_w"] * s, height=view["frame_h"] * s,
                total_height=view["frame_h"] * s * view["n"], strip=strip(frames, labels),
                strip_width=view["frame_w"] * s if len(frames) <= 2 else view["frame_w"] * max(1, s // 2))
    return view


# --------------------------------------------------------------------------- drift table

def heat_levels(values: np.ndarray, threshold: float) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Level 0 below ``threshold`` (not moving), 1..HEAT_LEVELS log-spaced over the rest.

    Relative changes span decades (1e-5 for a converged stem, 1e-1 for a head
    early on), so a linear scale would show one hot cell and a cold table.
    """
    threshold = max(threshold, 1e-12)  # frozen_change may be 0: log scales need a floor
    moving = values[values >= threshold]
    lo = float(moving.min()) if moving.size else threshold
    hi = float(moving.max()) if moving.size else threshold
    # quarter-decade boundaries: legend labels read 1e-3, 1.8e-3, 3.2e-3, 5.6e-3, ...
    lo_l = math.floor(math.log10(max(lo, threshold)) * 4) / 4
    hi_l = math.ceil(math.log10(max(hi, threshold)) * 4) / 4
    hi_l = max(hi_l, lo_l + 0.25)
    bounds = np.linspace(lo_l, hi_l, min(HEAT_LEVELS, int(round((hi_l - lo_l) * 4))) + 1)
    n_levels = len(bounds) - 1
    with np.errstate(divide="ignore"):
        logs = np.log10(np.maximum(values, 1e-300))
    level = np.clip(np.searchsorted(bounds, logs, side="right"), 1, n_levels)
    level = np.where(values < threshold, 0, level)
    cmap = colormaps["YlOrRd"]
    legend = [{"level": 0, "color": "", "label": f"< {threshold:.0e} (not moving)"}]
    for i in range(n_levels):
        rgb = cmap(0.08 + 0.84 * i / max(n_levels - 1, 1), bytes=True)
        legend.append({"level": i + 1, "color": _hex(rgb),
                       "label": f"{10 ** bounds[i]:.2g} – {10 ** bounds[i + 1]:.2g}"})
    return level.astype(int), legend


def drift_view(res: EvolutionResult, threshold: float) -> Dict[str, Any]:
    """Rows = layers (model order), columns = transitions t-1 -> t, plus last vs first."""
    d = layer_drift(res)
    layers = [str(x) for x in d["layers"]]
    frozen = set(frozen_layers(d["step"], layers, threshold))
    total_last = d["total"][-1]
    levels, legend = heat_levels(np.concatenate([d["step"].ravel(), total_last]), threshold)
    step_levels = levels[:d["step"].size].reshape(d["step"].shape)
    total_levels = levels[d["step"].size:]
    rows = []
    for j, name in enumerate(layers):
        cells = [{"q": int(step_levels[t, j]), "v": f"{d['step'][t, j]:.2e}"}
                 for t in range(d["step"].shape[0])]
        rows.append({"layer": name or "(root)", "frozen": name in frozen, "cells": cells,
                     "total": {"q": int(total_levels[j]), "v": f"{total_last[j]:.2e}"},
                     "norm_first": float(d["norms"][0, j]), "norm_last": float(d["norms"][-1, j])})
    labels = res.labels
    columns = [{"n": t + 1, "title": f"{labels[t]} → {labels[t + 1]}"} for t in range(len(labels) - 1)]
    return {"rows": rows, "columns": columns, "legend": legend, "n_frozen": len(frozen),
            "threshold": threshold, "first": labels[0], "last": labels[-1]}


# --------------------------------------------------------------------------- ridgelines

def ridgeline_svg(edges: np.ndarray, counts: np.ndarray, labels: Sequence[str], title: str,
                  width: int = 320, gap: int = 13, overlap: float = 2.2) -> str:
    """Histograms of one tensor, one ridge per checkpoint, oldest at the top, newest in front.

    All ridges share the x axis (the fixed bin edges) and one height scale
    (fraction of values per bin), so a spreading distribution is visible as such.
    """
    n, bins = counts.shape
    left, right, top, axis = 78, 8, 4 + gap * overlap, 28
    height = int(top + gap * (n - 1) + axis)
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    peak = float(frac.max()) or 1.0
    xs = left + (np.arange(bins) + 0.5) / bins * (width - left - right)
    cmap = colormaps["viridis"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ridge" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f"<title>{_esc(title)}</title>"]
    for i in range(n):
        base = top + gap * i
        ys = base - frac[i] / peak * gap * overlap
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        colour = _hex(cmap(0.15 + 0.75 * i / max(n - 1, 1), bytes=True))
        parts.append(f'<polygon points="{xs[0]:.1f},{base:.1f} {pts} {xs[-1]:.1f},{base:.1f}" '
                     f'fill="{colour}" fill-opacity="0.85" stroke="var(--bg, #fff)" stroke-width="0.8"/>')
        label = str(labels[i])
        label = label if len(label) <= 12 else label[:11] + "…"
        parts.append(f'<text x="{left - 4}" y="{base:.1f}" text-anchor="end" class="tick">'
                     f"{_esc(label)}</text>")
    y_axis = top + gap * (n - 1) + 4
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y_axis:.1f}" y2="{y_axis:.1f}" '
                 'stroke="currentColor" stroke-opacity="0.4"/>')
    lo, hi = float(edges[0]), float(edges[-1])
    ticks = [lo, hi] + ([0.0] if lo < 0 < hi and min(-lo, hi) > 0.15 * (hi - lo) else [])
    for v in ticks:
        x = left + (v - lo) / (hi - lo) * (width - left - right)
        anchor = "start" if v == lo else "end" if v == hi else "middle"
        parts.append(f'<text x="{x:.1f}" y="{y_axis + 13:.1f}" text-anchor="{anchor}" class="tick">'
                     f"{_esc(_fmt(v))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def histograms_view(res: EvolutionResult) -> Dict[str, Any]:
    """One ridgeline per chosen tensor, grouped by layer (weight, then bias)."""
    shown = pick_even(len(res.labels), RIDGES)
    labels = [res.labels[i] for i in shown]
    layers: Dict[str, Dict[str, Any]] = {}
    for h, name in enumerate(res.hist_names):
        layer, _, kind = name.rpartition(".")
        outside = res.hist_outside[shown, h].sum(axis=-1)
        total = res.hist_counts[shown, h].sum(axis=-1) + outside
        svg = ridgeline_svg(res.hist_edges[h], res.hist_counts[shown, h], labels,
                            f"Distribution of {name} over {len(shown)} checkpoints")
        entry = layers.setdefault(layer, {"layer": layer or "(root)", "panels": []})
        entry["panels"].append({"kind": kind, "name": name, "svg": svg,
                                "outside": float((outside / np.maximum(total, 1)).max())})
    return {"layers": list(layers.values()), "labels": labels, "n_shown": len(shown),
            "n_total": len(res.labels)}


# --------------------------------------------------------------------------- line charts

def nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            ticks.append(round(v, 12))
        v += step
    return ticks


def decimate(x: np.ndarray, y: np.ndarray, limit: int = MAX_PLOT_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """At most ~``limit`` points: the min and the max of each bucket, in x order (keeps spikes)."""
    if x.size <= limit:
        return x, y
    buckets = np.array_split(np.arange(x.size), limit // 2)
    keep: List[int] = []
    for b in buckets:
        pair = sorted({int(b[np.argmin(y[b])]), int(b[np.argmax(y[b])])})
        keep.extend(pair)
    idx = np.array(sorted(set(keep) | {0, x.size - 1}))
    return x[idx], y[idx]


def line_chart_svg(series: Sequence[Tuple[str, np.ndarray, np.ndarray]], x_label: str, title: str,
                   width: int = 640, height: int = 230,
                   markers: Sequence[Tuple[float, str]] = ()) -> Tuple[str, bool]:
    """Several series on shared axes; log y when positive values span more than two decades.

    ``markers``: (x, colour) dashed vertical lines, e.g. where a checkpoint was taken.
    """
    left, right, top, bottom = 58, 14, 10, 34
    xs = np.concatenate([s[1] for s in series])
    ys = np.concatenate([s[2] for s in series])
    log_y = bool(ys.size and ys.min() > 0 and ys.max() / ys.min() > 100)
    ty = np.log10 if log_y else (lambda a: a)
    x0, x1 = float(xs.min()), float(xs.max())
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if log_y:
        y0, y1 = math.floor(math.log10(ys.min())), math.ceil(math.log10(ys.max()))
        yticks = [float(v) for v in range(int(y0), int(y1) + 1)]
    else:
        lo, hi = float(ys.min()), float(ys.max())
        if hi <= lo:
            lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
        yticks = nice_ticks(lo, hi)
        y0, y1 = min(yticks[0], lo), max(yticks[-1], hi)
    pw, ph = width - left - right, height - top - bottom

    def px(v):
        return left + (np.asarray(v, dtype=np.float64) - x0) / (x1 - x0) * pw

    def py(v):
        return top + ph - (ty(np.asarray(v, dtype=np.float64)) - y0) / (y1 - y0) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f"<title>{_esc(title)}</title>",
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
             'stroke="currentColor" stroke-opacity="0.3"/>']
    for v in yticks:
        y = float(py(10 ** v if log_y else v))
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="currentColor" stroke-opacity="0.12"/>')
        text = f"1e{int(v)}" if log_y else _fmt(v)
        parts.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                     f"{_esc(text)}</text>")
    for v in nice_ticks(x0, x1, 6):
        x = float(px(v))
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
                     'stroke="currentColor" stroke-opacity="0.5"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">'
                     f"{_esc(_fmt(v))}</text>")
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" text-anchor="middle" '
                 f'class="tick">{_esc(x_label)}</text>')
    for v, colour in markers:
        if x0 <= v <= x1:
            x = float(px(v))
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="{colour}" '
                         'stroke-width="1.4" stroke-dasharray="4 3"/>')
    for i, (_, x, y) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        dx, dy = decimate(np.asarray(x, float), np.asarray(y, float))
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px(dx), py(dy)))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6" '
                     'stroke-linejoin="round"/>')
        if dx.size <= 60:
            parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.4" fill="{colour}"/>'
                         for a, b in zip(px(dx), py(dy)))
    parts.append("</svg>")
    return "".join(parts), log_y


def curves_view(table: mt.MetricsTable, max_series: int = len(PALETTE)) -> List[Dict[str, Any]]:
    """Charts for one source: loss-like together, accuracy-like together, each other metric alone."""
    groups: Dict[str, List[str]] = {"loss": [], "accuracy": []}
    others: List[str] = []
    for name in table.series:
        k = mt.kind(name)
        (groups[k] if k in groups else others).append(name)
    batches: List[Tuple[str, List[str]]] = []
    for k, names in groups.items():
        for i in range(0, len(names), max_series):
            batches.append((k, names[i:i + max_series]))
    batches += [("other", [n]) for n in others]
    charts = []
    for k, names in batches:
        data = [(n, table.series[n].steps, table.series[n].values) for n in names]
        title = f"{', '.join(names)} against {table.x_label}"
        svg, log_y = line_chart_svg(data, table.x_label, title)
        legend = [{"name": n, "color": PALETTE[i % len(PALETTE)], "points": int(table.series[n].steps.size),
                   "last": float(table.series[n].values[-1]), "best": _best(table.series[n].values, k)}
                  for i, n in enumerate(names)]
        charts.append({"kind": k, "svg": svg, "log_y": log_y, "legend": legend, "title": title})
    return charts


def _best(values: np.ndarray, kind: str) -> Optional[float]:
    if kind == "loss":
        return float(np.min(values))
    if kind == "accuracy":
        return float(np.max(values))
    return None


def overlay_view(tables: Sequence[Tuple[str, Optional[mt.MetricsTable]]],
                 marks: Sequence[Optional[float]] = ()) -> List[Dict[str, Any]]:
    """One chart per metric with each named table's curve of it overlaid (a compare's BASE and NEW).

    Metrics in the order the tables list them; a metric only one table has is drawn alone. Colours
    follow the tables (the first table's curves are always PALETTE[0]). ``marks[i]``: the x where
    table i's model was taken (its audited checkpoint), drawn dashed, its value in the legend.
    """
    marks = list(marks) + [None] * (len(tables) - len(marks))
    names: List[str] = []
    for _, table in tables:
        if table is not None:
            names += [n for n in table.series if n not in names]
    charts = []
    for name in names:
        data, legend = [], []
        for i, (label, table) in enumerate(tables):
            s = table.series.get(name) if table is not None else None
            if s is None:
                continue
            data.append((label, s.steps, s.values))
            at = np.flatnonzero(s.steps == marks[i]) if marks[i] is not None else np.zeros(0, int)
            legend.append({"name": label, "color": PALETTE[i % len(PALETTE)], "points": int(s.steps.size),
                           "last": float(s.values[-1]), "best": _best(s.values, mt.kind(name)),
                           "x": table.x_label, "mark": marks[i],
                           "at_mark": float(s.values[at[-1]]) if at.size else None})
        same = len(data) > 1 and all(np.array_equal(d[1], data[0][1]) and np.array_equal(d[2], data[0][2])
                                     for d in data[1:])
        x_label = " / ".join(dict.fromkeys(entry["x"] for entry in legend))
        title = f"{name}: " + " and ".join(d[0] for d in data) + f" against {x_label}"
        drawn = [(e["mark"], e["color"]) for e in legend if e["mark"] is not None]
        svg, log_y = line_chart_svg(data, x_label, title, markers=drawn)
        charts.append({"metric": name, "kind": mt.kind(name), "svg": svg, "log_y": log_y, "legend": legend,
                       "same": same, "title": title})
    return charts

"""Shortcut figures: each class's mean map, its eigenvalue spectrum, each cluster's maps and its test.

Maps are drawn over images with the attribution colour map (``overlay``); a
cluster's region is outlined in solid red and its control region in dashed
cyan. The spectrum and the transplant-vs-control bars are small inline SVGs
whose numbers the template also writes as text.
"""
from __future__ import annotations

from html import escape
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from reportgen.render.attribution import colorbar_view, compact_uri, label
from reportgen.render.heatmap import DEFAULT_CMAP, overlay
from reportgen.render.images import pack_grid, upscale_nearest
from reportgen.report import Outcome, ran

REGION = (230, 25, 75)       # solid outline: where the cluster's maps concentrate
CONTROL = (0, 190, 220)      # dashed outline: the control region
ALPHA = 0.5
PAD = 4


def tile_side(h: int, w: int, thumb: int, small: bool) -> int:
    """Side of a drawn tile: the thumbnail, doubled when it is under 128 px and the page has room."""
    side = min(max(h, w), thumb)
    return side * (2 if side < 128 and not small else 1)


def _scaled(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _tile(image: np.ndarray, values: np.ndarray, factor: int, boxes: Sequence[Tuple[Tuple[float, ...], bool]] = (),
          top: Optional[float] = None) -> np.ndarray:
    """The image (blown up by ``factor``) under its map, with boxes (fractions; True = dashed control).

    ``top``: the map is drawn on 0..top (shared by maps compared side by side), else scaled to its own range.
    """
    base = upscale_nearest(np.asarray(image, dtype=np.uint8), factor)
    scaled = _scaled(values) if top is None else np.clip(np.asarray(values, dtype=np.float32) / (top or 1.0), 0, 1)
    out = Image.fromarray(overlay(base, scaled, ALPHA, DEFAULT_CMAP, 0.0, 1.0))
    draw = ImageDraw.Draw(out)
    h, w = base.shape[:2]
    for (y0, x0, y1, x1), dashed in boxes:
        rect = [x0 * w, y0 * h, x1 * w - 1, y1 * h - 1]
        if dashed:
            _dashed(draw, rect, CONTROL)
        else:
            draw.rectangle(rect, outline=REGION, width=2)
    return np.asarray(out)


def _dashed(draw: ImageDraw.ImageDraw, rect: List[float], colour: Tuple[int, int, int], dash: int = 4) -> None:
    x0, y0, x1, y1 = rect
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True), (y0, y1, x0, False), (y0, y1, x1, False)):
        t = a
        while t < b:
            e = min(t + dash, b)
            draw.line([(t, fixed), (e, fixed)] if horizontal else [(fixed, t), (fixed, e)], fill=colour, width=2)
            t += 2 * dash


def _packed(tiles: List[np.ndarray]) -> Dict[str, Any]:
    packed, _ = pack_grid(tiles, cols=len(tiles), pad=PAD, background=1.0)
    uri, fmt = compact_uri(packed)
    return {"image": uri, "width": int(packed.shape[1]), "height": int(packed.shape[0]), "format": fmt,
            "tiles": len(tiles)}


def spectrum_svg(eigenvalues: Sequence[float], k: int, width: int = 220, height: int = 90) -> str:
    """The smallest Laplacian eigenvalues as dots, the largest gap (which sets k) as a bracket."""
    ev = [float(v) for v in eigenvalues]
    if not ev:
        return ""
    top = max(max(ev), 1e-9)
    left, right, low, high = 28, width - 8, height - 18, 8
    step = (right - left) / max(len(ev) - 1, 1)

    def xy(i: int, v: float) -> Tuple[float, float]:
        return left + i * step, low - (low - high) * v / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sc-spectrum" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}"><title>Eigenvalues '
             f'{", ".join(f"{v:.3f}" for v in ev)}; largest gap after eigenvalue {k}, so {k} cluster(s)</title>',
             f'<line x1="{left}" y1="{low}" x2="{right}" y2="{low}" stroke="currentColor" stroke-opacity="0.4"/>',
             f'<text x="2" y="{high + 4}" font-size="9" fill="currentColor">{top:.2f}</text>',
             f'<text x="2" y="{low}" font-size="9" fill="currentColor">0</text>']
    if k < len(ev):
        (xa, ya), (xb, yb) = xy(k - 1, ev[k - 1]), xy(k, ev[k])
        parts.append(f'<line x1="{(xa + xb) / 2:.1f}" y1="{ya:.1f}" x2="{(xa + xb) / 2:.1f}" y2="{yb:.1f}" '
                     f'stroke="rgb{REGION}" stroke-width="3"/>')
    for i, v in enumerate(ev):
        x, y = xy(i, v)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="currentColor"/>'
                     f'<text x="{x:.1f}" y="{height - 4}" font-size="9" text-anchor="middle" '
                     f'fill="currentColor">{i + 1}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(rows: Sequence[Tuple[str, float, Tuple[float, float]]], width: int = 260) -> str:
    """Horizontal bars (rate in [0, 1]) with Wilson interval whiskers, one row per (label, rate, ci)."""
    left, right, row = 70, width - 36, 18
    height = row * len(rows) + 14
    span = right - left
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sc-bars" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}"><title>'
             + escape("; ".join(f"{n}: {r:.0%} (95% CI {lo:.0%}–{hi:.0%})" for n, r, (lo, hi) in rows))
             + "</title>"]
    for i, (name, rate, (lo, hi)) in enumerate(rows):
        y = 4 + i * row
        colour = f"rgb{REGION}" if i == 0 else f"rgb{CONTROL}"
        parts.append(f'<text x="0" y="{y + 11}" font-size="11" fill="currentColor">{escape(name)}</text>'
                     f'<rect x="{left}" y="{y + 2}" width="{max(rate * span, 0.5):.1f}" height="{row - 6}" '
                     f'fill="{colour}"/>'
                     f'<line x1="{left + lo * span:.1f}" y1="{y + row / 2 - 1:.1f}" x2="{left + hi * span:.1f}" '
                     f'y2="{y + row / 2 - 1:.1f}" stroke="currentColor" stroke-width="1.5"/>'
                     f'<text x="{right + 4}" y="{y + 11}" font-size="11" fill="currentColor">{rate:.0%}</text>')
    axis = 4 + row * len(rows)
    parts.append(f'<line x1="{left}" y1="{axis}" x2="{right}" y2="{axis}" stroke="currentColor" '
                 f'stroke-opacity="0.4"/><text x="{left}" y="{axis + 10}" font-size="9" fill="currentColor">0</text>'
                 f'<text x="{right}" y="{axis + 10}" font-size="9" text-anchor="end" fill="currentColor">100%</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_shortcuts(result: Any, classes: Sequence[str], seen: Callable[[Any, Any], bool],
                     proven: Callable[[Any, Any], bool], small: bool) -> Dict[str, Any]:
    """The section's view: overview of mean maps, then per class its spectrum and clusters."""
    from reportgen.analyses.confusion import wilson
    from reportgen.analyses.faithfulness import border_area_share, border_flag
    from reportgen.analyses.shortcuts import to_fractions

    h, w = result.input_size
    overview, class_views, proven_names, seen_names = [], [], [], []
    for ca in result.classes:
        name = classes[ca.index]
        thumb = ca.mean_image
        factor = max(1, tile_side(h, w, max(thumb.shape[:2]), small) // max(thumb.shape[:2]))
        overview.append(_tile(thumb, ca.mean_map, factor))
        clusters = []
        for j, cl in enumerate(ca.clusters):
            grid = cl.mean_map.shape
            region, control = to_fractions(cl.region, grid), to_fractions(cl.control, grid)
            tiles = [_tile(cl.mean_image, cl.mean_map, factor, [(region, False), (control, True)])]
            tiles += [_tile(img, m.astype(np.float32), factor, [(region, False)])
                      for img, m in zip(cl.strip, cl.strip_maps)]
            t_ci, c_ci = wilson(cl.transplant_flips, cl.transplanted), wilson(cl.control_flips, cl.transplanted)
            is_seen, is_proven = seen(cl, result), proven(cl, result)
            clusters.append({
                "index": j + 1, "size": int(len(cl.members)), "figure": _packed(tiles),
                "shown": int(len(cl.strip)), "region": [round(v * 100) for v in region],
                "control": [round(v * 100) for v in control], "mass": cl.mass_in_region,
                "spread": cl.location_spread, "seen": is_seen, "proven": is_proven,
                "suspect": is_seen and is_proven, "transplanted": cl.transplanted,
                "t_rate": cl.transplant_flip_rate, "t_ci": t_ci, "c_rate": cl.control_flip_rate, "c_ci": c_ci,
                "p": cl.p_value,
                "bars": bars_svg([("transplant", cl.transplant_flip_rate, t_ci),
                                  ("control", cl.control_flip_rate, c_ci)]) if cl.transplanted else ""})
            if is_seen and is_proven and name not in proven_names:
                proven_names.append(name)
            elif is_seen and not is_proven and name not in seen_names:
                seen_names.append(name)
        class_views.append({
            "name": name, "images": int(len(ca.images)), "k": int(ca.spray.k),
            "neighbours": int(ca.spray.neighbours), "eigenvalues": [float(v) for v in ca.spray.eigenvalues],
            "spectrum": spectrum_svg(ca.spray.eigenvalues, ca.spray.k), "clusters": clusters,
            "border_share": float(np.mean(ca.border_share)) if len(ca.border_share) else 0.0,
            "candidates": ca.candidates, "already": ca.already})
    shares = np.concatenate([ca.border_share for ca in result.classes]) if result.classes else np.zeros(0)
    area = border_area_share(h, w, result.border_band)
    mean_share = float(shares.mean()) if len(shares) else 0.0
    return {
        "method": label(result.method), "layer": result.layer, "layer_auto": result.layer_auto,
        "maps_per_class": result.maps_per_class, "transplants": result.transplants,
        "region_area": result.region_area, "region_mass": result.region_mass, "max_spread": result.max_spread,
        "alpha": result.alpha, "flip_threshold": result.flip_threshold,
        "overview": _packed(overview) if overview else None,
        "overview_labels": [c["name"] for c in class_views],
        "border": {"share": mean_share, "area_share": area, "band": result.border_band,
                   "ratio": result.border_ratio, "min_share": result.border_min_share, "images": int(len(shares)),
                   "flagged": border_flag(shares, h, w, result.border_band, result.border_ratio,
                                          result.border_min_share)},
        "classes": class_views, "proven": proven_names, "seen_only": seen_names,
        "labels_note": result.labels_note, "unlabelled": result.unlabelled,
        "colorbar": colorbar_view(0.0, 1.0, DEFAULT_CMAP, "0 (least)", "1 (most)"),
    }


def compare_view(base_out: Dict[str, Outcome], new_out: Dict[str, Outcome]) -> List[Dict[str, Any]]:
    """The compare page's shortcuts part: per class, BASE's and NEW's mean maps on one scale, side by side.

    Read from each side's ``shortcuts`` results (both sides ran on NEW's dataset, so
    the mean images match); a suspected class has its region outlined on its side.
    Empty when either side lacks the section.
    """
    sides = []
    for out in (base_out, new_out):
        found = ran(out, "shortcuts")
        if found is None or not found.results:
            return []
        results, summary = found.results, found.summary or {}
        names = results["class_names"]
        sides.append(({names[c["index"]]: c for c in results["classes"]},
                      {s["class"]: s for s in summary.get("suspected") or []}, summary.get("classes") or {}))
    (b_maps, b_sus, b_cls), (n_maps, n_sus, n_cls) = sides
    rows = []
    for name in [n for n in n_maps if n in b_maps]:
        b, n = b_maps[name], n_maps[name]
        bm, nm = np.asarray(b["mean_map"], dtype=np.float32), np.asarray(n["mean_map"], dtype=np.float32)
        top = max(float(bm.max()), float(nm.max()), 1e-12)
        row: Dict[str, Any] = {"name": name}
        for side, cls, m, sus, summ in (("base", b, bm, b_sus, b_cls), ("new", n, nm, n_sus, n_cls)):
            image = np.asarray(cls["mean_image"], dtype=np.uint8)
            factor = max(1, 128 // max(image.shape[:2]))
            hit = sus.get(name)
            boxes = [(tuple(hit["region"]), False)] if hit else []
            row[side] = {"image": compact_uri(_tile(image, m, factor, boxes, top))[0], "suspected": bool(hit),
                         "flip": hit["transplant_flip_rate"] if hit else None,
                         "border": (summ.get(name) or {}).get("border_share")}
        rows.append(row)
    return rows

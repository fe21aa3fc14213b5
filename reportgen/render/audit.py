"""Pictures of the audit sections: heat-table cells, the reliability diagram (inline SVG), overlays.

Heat cells carry their colour inline (a colour map sampled at the value), with
black or white text by luminance, so a table reads in print and without CSS
classes per level. The reliability diagram is hand-built SVG like the site's
charts: per equal-width bin, the accuracy as a bar, the gap to the bin's mean
confidence as a hatched bar (red above the bar: overconfident; blue: under),
the diagonal of perfect calibration, and the share of images per bin as a
histogram under it.
"""
from __future__ import annotations

from html import escape
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from reportgen.render.heatmap import colorize, overlay
from reportgen.render.images import thumbnail_uri, webp_uri
from reportgen.report import Outcome, summary_of

HEAT_CMAP = "Blues"
DROP_CMAP = "Reds"


def heat_cell(value: Optional[float], vmin: float, vmax: float, cmap: str = HEAT_CMAP) -> Dict[str, str]:
    """{"bg", "fg"} CSS colours of a cell showing ``value`` (None: no colour)."""
    if value is None or not np.isfinite(value):
        return {"bg": "transparent", "fg": "inherit"}
    r, g, b = (int(v) for v in colorize(np.array([[float(value)]]), cmap, vmin, vmax)[0, 0])
    light = 0.2126 * r + 0.7152 * g + 0.0722 * b > 140
    return {"bg": f"#{r:02x}{g:02x}{b:02x}", "fg": "#111" if light else "#fff"}


def cam_overlay_uri(display: np.ndarray, cam: np.ndarray, side: int = 128) -> str:
    """A CAM over its image, as a small WebP data URI."""
    return webp_uri(_fit(overlay(display, cam, alpha=0.5), side))


def picture_uri(display: np.ndarray, side: int = 128) -> str:
    return webp_uri(_fit(display, side))


def _fit(pic: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = pic.shape[:2]
    if max(h, w) == side:
        return pic
    s = side / max(h, w)
    return np.asarray(Image.fromarray(pic).resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST
                                                  if s > 1 else Image.BILINEAR))


def thumb(pic: np.ndarray, side: int = 96) -> str:
    return thumbnail_uri(pic, side)


# --------------------------------------------------------------------------- reliability diagram

W, H = 320, 300
LEFT, RIGHT, TOP = 40, 10, 10
PLOT = 200                 # height of the reliability plot
HIST = 50                  # height of the histogram under it
GAP = 20


def reliability_svg(reliability: Dict[str, List[Any]], label: str, after: Optional[Dict[str, List[Any]]] = None) -> str:
    """The diagram of one model: bars, gaps, diagonal, histogram; ``after``: the same after temperature, as dots."""
    count = np.asarray(reliability["count"], dtype=np.float64)
    bins = count.size
    pw = W - LEFT - RIGHT
    bw = pw / bins

    def x(v: float) -> float:
        return LEFT + pw * v

    def y(v: float) -> float:
        return TOP + PLOT * (1 - v)

    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{PLOT}" class="rd-frame"/>']
    for i in range(bins):
        acc, conf = reliability["accuracy"][i], reliability["confidence"][i]
        if acc is None:
            continue
        x0 = LEFT + i * bw
        parts.append(f'<rect x="{x0 + 1:.1f}" y="{y(acc):.1f}" width="{bw - 2:.1f}" height="{PLOT * acc:.1f}" '
                     f'class="rd-acc"><title>confidence {i / bins:.2f}–{(i + 1) / bins:.2f}: {int(count[i])} '
                     f'image(s), accuracy {acc:.3f}, mean confidence {conf:.3f}</title></rect>')
        top, bottom = max(acc, conf), min(acc, conf)
        kind = "rd-over" if conf > acc else "rd-under"
        parts.append(f'<rect x="{x0 + 1:.1f}" y="{y(top):.1f}" width="{bw - 2:.1f}" '
                     f'height="{PLOT * (top - bottom):.1f}" class="{kind}"/>')
    parts.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" class="rd-diag"/>')
    if after is not None:
        for i in range(bins):
            acc, conf = after["accuracy"][i], after["confidence"][i]
            if acc is not None:
                parts.append(f'<circle cx="{x(conf):.1f}" cy="{y(acc):.1f}" r="3" class="rd-after">'
                             f'<title>after temperature: confidence {conf:.3f}, accuracy {acc:.3f}</title></circle>')
    for v in (0, 0.5, 1):
        parts.append(f'<text x="{LEFT - 4}" y="{y(v) + 4:.1f}" class="tick" text-anchor="end">{v:g}</text>')
        parts.append(f'<text x="{x(v):.1f}" y="{TOP + PLOT + 12}" class="tick" text-anchor="middle">{v:g}</text>')
    top_h = TOP + PLOT + GAP
    share = count / max(count.sum(), 1)
    peak = max(float(share.max()), 1e-9)
    for i in range(bins):
        if count[i]:
            h = HIST * share[i] / peak
            parts.append(f'<rect x="{LEFT + i * bw + 1:.1f}" y="{top_h + HIST - h:.1f}" width="{bw - 2:.1f}" '
                         f'height="{h:.1f}" class="rd-hist"><title>{int(count[i])} image(s) '
                         f'({share[i]:.1%})</title></rect>')
    parts.append(f'<line x1="{LEFT}" y1="{top_h + HIST}" x2="{W - RIGHT}" y2="{top_h + HIST}" class="axis"/>')
    parts.append(f'<text x="{LEFT - 4}" y="{top_h + 8}" class="tick" text-anchor="end">{peak:.0%}</text>')
    total = top_h + HIST + 16
    parts.append(f'<text x="{LEFT + pw / 2}" y="{total - 2}" class="tick" text-anchor="middle">top-1 confidence</text>')
    return (f'<svg class="rd" viewBox="0 0 {W} {total}" width="{W}" height="{total}" role="img" '
            f'aria-label="{escape(label)}">{"".join(parts)}</svg>')


RELIABILITY_CSS = """
.rd .rd-frame { fill: none; stroke: var(--border); }
.rd .rd-acc { fill: #4c78a8; }
.rd .rd-over { fill: #e45756; fill-opacity: 0.55; }
.rd .rd-under { fill: #72b7b2; fill-opacity: 0.7; }
.rd .rd-diag { stroke: var(--muted); stroke-dasharray: 4 3; }
.rd .rd-after { fill: #f58518; stroke: #fff; stroke-width: 0.5; }
.rd .rd-hist { fill: var(--muted); }
.rd .tick { font-size: 10px; fill: var(--muted); }
.rd .axis { stroke: var(--border); }
"""


def severity_cells(values: Optional[Sequence[float]], vmin: float = 0.0, vmax: float = 1.0,
                   cmap: str = HEAT_CMAP) -> List[Dict[str, Any]]:
    return [dict(value=v, **heat_cell(v, vmin, vmax, cmap)) for v in (values or [])]


# --------------------------------------------------------------------------- compare

def compare_view(base_out: Dict[str, Outcome], new_out: Dict[str, Outcome], audit: Dict[str, Any]) -> Dict[str, Any]:
    """The compare page's audit part: headline numbers, both reliability diagrams, robustness BASE | NEW | Δ."""
    rows = []
    for key, label, scale in (("accuracy", "accuracy", 100), ("ece", "ECE", 1),
                              ("mean_accuracy_drop", "mean accuracy drop under corruptions", 100)):
        b, n = audit[key]["base"], audit[key]["new"]
        if b is None and n is None:
            continue
        rows.append({"label": label, "base": b, "new": n, "scale": scale,
                     "delta": None if b is None or n is None else n - b})
    diagrams = []
    for side, out in (("BASE", base_out), ("NEW", new_out)):
        cal = summary_of(out, "calibration")
        if cal.get("reliability"):
            diagrams.append({"side": side, "ece": cal["ece"], "temperature": cal["temperature"],
                             "svg": reliability_svg(cal["reliability"], f"Reliability diagram of {side}")})
    accuracy = audit["robustness_metric"] == "accuracy"
    sev = audit["severities"]
    robust = []
    if sev["base"] and sev["base"] == sev["new"]:
        for name, row in audit["robustness"].items():
            if row["base"] is None or row["new"] is None:
                continue
            deltas = [n - b for b, n in zip(row["base"], row["new"])]
            # worse is red: lower accuracy, or a higher flip rate
            robust.append({"name": name,
                           "base": severity_cells(row["base"], 0, 1, HEAT_CMAP if accuracy else DROP_CMAP),
                           "new": severity_cells(row["new"], 0, 1, HEAT_CMAP if accuracy else DROP_CMAP),
                           "delta": [dict(value=d, **heat_cell(-d if accuracy else d, 0, 0.5, DROP_CMAP))
                                     for d in deltas],
                           "relative_error": _relative_error(row["base"], row["new"]) if accuracy else None})
    return {"rows": rows, "diagrams": diagrams, "robustness": robust, "severities": sev["new"] or [],
            "metric": "accuracy" if accuracy else "flip rate", "css": RELIABILITY_CSS,
            "shortcuts": audit["shortcuts"], "mismatch": bool(sev["base"] and sev["base"] != sev["new"]),
            "confusion": confusion_diff(summary_of(base_out, "errors"), summary_of(new_out, "errors"))}


CONFUSION_SHOWN = 20     # classes in the difference's heat table; more classes: those that changed most
CONFUSION_CHANGES = 10   # the largest cell changes listed


def confusion_diff(base: Dict[str, Any], new: Dict[str, Any], shown: int = CONFUSION_SHOWN,
                   top: int = CONFUSION_CHANGES) -> Optional[Dict[str, Any]]:
    """NEW's confusion counts minus BASE's (same images, rows true) as a heat table, and the top changes.

    A cell is worse when an off-diagonal count grows or a diagonal (correct) count shrinks: red;
    better: blue; the shade scales with the largest change. Past ``shown`` classes, the table
    keeps the classes whose rows and columns changed most (in class order); the list names the
    ``top`` cells that changed most either way. None when a side lacks the errors section.
    """
    if not base.get("confusion") or not new.get("confusion"):
        return None
    b, n = np.asarray(base["confusion"], dtype=np.int64), np.asarray(new["confusion"], dtype=np.int64)
    if b.shape != n.shape:
        return None
    d = n - b
    k = d.shape[0]
    classes = list(new["classes"])
    worse = np.where(np.eye(k, dtype=bool), -d, d)
    scale = max(int(np.abs(d).max()), 1)
    moved = np.abs(d).sum(axis=0) + np.abs(d).sum(axis=1) - np.abs(np.diag(d))
    keep = list(range(k)) if k <= shown else sorted(np.lexsort((np.arange(k), -moved))[:shown].tolist())

    def cell(i: int, j: int) -> Dict[str, Any]:
        w = int(worse[i, j])
        colour = heat_cell(w, 0, scale, DROP_CMAP) if w > 0 else heat_cell(-w, 0, scale, HEAT_CMAP) if w < 0 \
            else heat_cell(None, 0, 1)
        return dict(value=int(d[i, j]), diagonal=i == j, **colour)

    order = np.lexsort((np.arange(k * k), -np.abs(d).reshape(-1)))[:top]
    changes = [{"true": classes[i], "predicted": classes[j], "base": int(b[i, j]), "new": int(n[i, j]),
                "delta": int(d[i, j]), "worse": bool(worse[i, j] > 0)}
               for i, j in (divmod(int(f), k) for f in order) if d[i, j]]
    return {"k": k, "all_shown": len(keep) == k, "columns": [classes[j] for j in keep],
            "rows": [{"name": classes[i], "cells": [cell(i, j) for j in keep]} for i in keep],
            "changes": changes, "changed": int(np.count_nonzero(d)), "unchanged": not d.any()}


def _relative_error(base: Sequence[float], new: Sequence[float]) -> Optional[float]:
    """Hendrycks & Dietterich's relative corruption error of NEW over BASE: summed errors, NEW / BASE."""
    b = sum(1 - v for v in base)
    return (sum(1 - v for v in new) / b) if b > 0 else None

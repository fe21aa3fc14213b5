"""The compare page: BASE │ NEW │ difference for each part, largest changes first."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from reportgen import __version__
from reportgen.render import attribution as ra
from reportgen.render.audit import compare_view
from reportgen.render.filters import filter_images
from reportgen.render.heatmap import DEFAULT_CMAP, SIGNED_CMAP, colorize
from reportgen.render.images import pack_grid, png_uri, upscale_nearest
from reportgen.render.markdown import render_markdown
from reportgen.render.shortcuts import compare_view as shortcut_maps
from reportgen.report import Outcome, results_of

FLIP_THUMBS = 24
THUMB = 64


def _filters_view(fd) -> Optional[Dict[str, Any]]:
    """Three grids on two scales: BASE and NEW share one (centred on zero), the difference has its own."""
    if fd is None:
        return None
    k = max(fd.base.shape[-2:])
    factor = max(1, 24 // k)

    def grid(w: np.ndarray, limit: float) -> str:
        tiles = filter_images(w / (limit or 1.0), "common") if limit else filter_images(w, "common")
        tiles = [upscale_nearest((np.clip(t, 0, 1) * 255).astype(np.uint8), factor) for t in tiles]
        image, _ = pack_grid(tiles, cols=min(16, len(tiles)))
        return png_uri(image)

    return {"layer": fd.layer, "shown": int(fd.base.shape[0]), "total": int(fd.filters_total),
            "base": grid(fd.base, fd.limit), "new": grid(fd.new, fd.limit), "diff": grid(fd.diff, fd.diff_limit),
            "limit": float(fd.limit), "diff_limit": float(fd.diff_limit)}


def _layers_view(layers: Dict[str, Dict[str, Optional[float]]]) -> List[Dict[str, Any]]:
    """Largest changes first: lowest CKA, then largest weight change."""
    rows = [{"layer": name, "cka": v["cka"], "weight_change": v["weight_change"]} for name, v in layers.items()]
    return sorted(rows, key=lambda r: (r["cka"] if r["cka"] is not None else 2.0,
                                       -(r["weight_change"] or 0.0)))


def _weight_rows(layers: Dict[str, Dict[str, Optional[float]]], limit: int = 30) -> List[Dict[str, Any]]:
    """Layers with a weight change, largest first."""
    rows = [{"layer": n, "weight_change": v["weight_change"]} for n, v in layers.items()
            if v["weight_change"] is not None]
    return sorted(rows, key=lambda r: -r["weight_change"])[:limit]


def _matrix_view(cka: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    matrix = cka.get("matrix")
    if not matrix:
        return None
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix["values"]], dtype=float)
    rgb = colorize(np.nan_to_num(values, nan=0.0), DEFAULT_CMAP, 0.0, 1.0)
    cells = [[{"value": None if np.isnan(v) else float(v),
               "colour": "#%02x%02x%02x" % tuple(int(c) for c in rgb[i, j][:3])}
              for j, v in enumerate(row)] for i, row in enumerate(values)]
    return {"base_layers": matrix["base_layers"], "new_layers": matrix["new_layers"], "rows": cells}


def _flips_view(parts, agreement) -> List[Dict[str, Any]]:
    if agreement is None:
        return []
    names = list(agreement.class_names)
    data = parts.dataset
    out = []
    for kind, flips in (("negative", agreement.negative), ("positive", agreement.positive)):
        for idx, lab, b, n in list(zip(flips.indices, flips.labels, flips.base, flips.new))[:FLIP_THUMBS]:
            display = data.load(int(idx))[1]
            out.append({"kind": kind, "image": png_uri(_thumb(display)), "name": data.items[int(idx)][0].name,
                        "label": names[int(lab)] if 0 <= int(lab) < len(names) else "?",
                        "base": names[int(b)], "new": names[int(n)]})
    return out


def _thumb(display: np.ndarray) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.asarray(display, dtype=np.uint8))
    img.thumbnail((THUMB, THUMB))
    return np.asarray(img)


def _top5(outcomes: Dict[str, Outcome], classes: Sequence[str], i: int) -> List[Dict[str, Any]]:
    preds = (results_of(outcomes, "summary") or {}).get("predictions")
    if not preds:
        return []
    return [{"cls": classes[int(c)], "p": float(p)} for c, p in zip(preds["indices"][i], preds["probs"][i])]


def _explanations_view(parts) -> List[Dict[str, Any]]:
    out = []
    probes = parts.new.probes
    for section, methods in parts.similarity.items():
        for name, m in sorted(methods.items(), key=lambda kv: kv[1]["mean_spearman"]):
            mb, mn = m["maps"]
            signed = section == "occlusion"
            lim = (ra.symmetric_limit([mb, mn]) if signed
                   else max(float(np.abs(mb).max()), float(np.abs(mn).max()), 1e-12))
            vmin, cmap = (-lim, SIGNED_CMAP) if signed else (0.0, DEFAULT_CMAP)
            rows = []
            for i, probe in enumerate(probes):
                diff = mn[i] - mb[i]
                dl = float(np.abs(diff).max()) or 1.0
                diff_tile = colorize(diff, SIGNED_CMAP, -dl, dl)
                rows.append({"probe": probe.name, "spearman": m["spearman"][i],
                             "strip": ra.strip(probe.display, [mb[i], mn[i]], vmin, lim, cmap,
                                               extra=[diff_tile])})
            before, after = m["sanity"]
            out.append({"section": section, "method": name, "label": ra.label(name),
                        "mean_spearman": m["mean_spearman"], "rows": rows,
                        "sanity": {"base": before, "new": after},
                        "deletion": m["deletion_auc"], "insertion": m["insertion_auc"]})
    return out


def _units_view(parts, units_json: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """BASE and NEW top-k patches of the same channels, row for row, and each channel's numbers."""
    from reportgen.render.topk import layer_view

    u = parts.units
    if u is None:
        return None
    base, new = layer_view(u.base), layer_view(u.new)
    corr = u.correlation[np.isfinite(u.correlation)]
    return {"layer": u.layer, "cka": u.cka, "k": u.k, "n": u.n_images, "base": base, "new": new,
            "rows": units_json["channels"], "channels_total": int(u.correlation.size),
            "median": float(np.median(corr)) if corr.size else None,
            "below_half": int((corr < 0.5).sum()), "rf": base["rf"]}


def _training_view(parts) -> List[Dict[str, Any]]:
    from reportgen.render.evolution import overlay_view

    base, new = parts.curves
    if base is None and new is None:
        return []
    return overlay_view([("BASE", base), ("NEW", new)], parts.curve_marks)


def render_compare_page(parts, data: Dict[str, Any], sentences: Sequence[str]) -> str:
    from reportgen.render.page import environment

    comparison = data["comparison"]
    probes = [{"name": p.name, "image": png_uri(_thumb(p.display)),
               "base": _top5(parts.base_outcomes, parts.new.classes, i),
               "new": _top5(parts.new_outcomes, parts.new.classes, i)} for i, p in enumerate(parts.new.probes)]
    per_class = sorted(({"cls": c, **v, "delta": v["new_accuracy"] - v["base_accuracy"]}
                        for c, v in comparison["predictions"]["per_class"].items()), key=lambda r: r["delta"])
    context = {
        "css": parts.new.theme_css, "version": __version__, "data": data, "verdict": list(sentences),
        "base": data["base"], "new": data["new"], "comparison": comparison,
        "layers": _layers_view(comparison["layers"]), "weight_rows": _weight_rows(comparison["layers"]),
        "matrix": _matrix_view(comparison["cka"]),
        "filters": _filters_view(parts.filters), "flips": _flips_view(parts, parts.agreement),
        "per_class": per_class, "probes": probes, "explanations": _explanations_view(parts),
        "units": _units_view(parts, comparison["units"]), "training": _training_view(parts),
        "findings": data["findings"], "resolved": data["resolved"],
        "audit": compare_view(parts.base_outcomes, parts.new_outcomes, comparison["audit"]),
        "shortcut_maps": shortcut_maps(parts.base_outcomes, parts.new_outcomes),
        "description_html": render_markdown(parts.new.spec["description"]),
    }
    return environment().get_template("compare.html.j2").render(**context)

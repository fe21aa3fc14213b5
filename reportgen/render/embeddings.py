"""The embedding scatter: an inline SVG, a class legend and one thumbnail sprite.

Everything a reader hovers is already in the page: each point carries its
index (``data-i``) and a ``<title>`` (a native tooltip, and the text the hover
panel shows); thumbnails are one packed image, shown with CSS
``background-position``, so thousands of points cost one data URI instead of
thousands of <img> tags. Class names come from users and can hold anything,
so every text that enters the SVG is XML-escaped here, and the page's script
only ever sets ``textContent``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from reportgen.analyses.embeddings import EmbeddingResult
from reportgen.render.heatmap import hex_colour, palette
from reportgen.render.images import pack_grid, webp_uri

WIDTH, HEIGHT, MARGIN = 640, 460, 16
UNKNOWN_COLOUR = "#888888"


def _fmt(v: float) -> str:
    """Fixed one-decimal coordinates: byte-identical SVG for identical inputs."""
    s = f"{v:.1f}"
    return "0.0" if s == "-0.0" else s


def screen_coords(coords: np.ndarray, width: int = WIDTH, height: int = HEIGHT,
                  margin: int = MARGIN) -> np.ndarray:
    """Map data coordinates into the plot box with ONE scale for both axes.

    Equal scaling keeps distances honest: a cluster that looks twice as far
    away is twice as far away in feature space (for PCA).
    """
    c = np.asarray(coords, dtype=np.float64)
    if len(c) == 0:
        return c.reshape(0, 2)
    lo, hi = c.min(axis=0), c.max(axis=0)
    span = hi - lo
    avail = np.array([width - 2 * margin, height - 2 * margin], dtype=np.float64)
    scale = float(np.min(np.where(span > 0, avail / np.where(span > 0, span, 1), np.inf)))
    if not math.isfinite(scale):
        scale = 1.0
    centre = (lo + hi) / 2
    out = (c - centre) * scale
    out[:, 0] += width / 2
    out[:, 1] = height / 2 - out[:, 1]        # data y grows upwards, SVG y downwards
    return out


def point_title(name: str, true: Optional[str], pred: str) -> str:
    if true is None:
        return f"{name} · predicted {pred} (true class unknown)"
    mark = "" if true == pred else " · MISCLASSIFIED"
    return f"{name} · true {true} · predicted {pred}{mark}"


def scatter_svg(coords: np.ndarray, colours: Sequence[str], misclassified: np.ndarray,
                titles: Sequence[str], label: str, unknown: Optional[np.ndarray] = None,
                width: int = WIDTH, height: int = HEIGHT) -> str:
    """The scatter as a standalone, escaped SVG string (parses as XML).

    Correct points are filled dots; misclassified ones are drawn last (on top)
    as a ring in the true class's colour around a dark centre, so they stand
    out whatever the class colours are. Points whose true class is unknown
    (``unknown``) are hollow circles in their predicted class's colour.
    """
    unknown = np.zeros(len(coords), bool) if unknown is None else unknown
    xy = screen_coords(coords, width, height)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="emb-svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label={quoteattr(label)}>',
             f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" class="emb-frame" '
             'fill="none" stroke="#9995"/>']
    order = [i for i in range(len(xy)) if not misclassified[i]] + \
            [i for i in range(len(xy)) if misclassified[i]]
    for i in order:
        x, y = _fmt(xy[i, 0]), _fmt(xy[i, 1])
        title = f"<title>{escape(titles[i])}</title>"
        colour = quoteattr(colours[i])
        if unknown[i]:
            parts.append(f'<circle data-i="{i}" class="emb-pt emb-unk" cx="{x}" cy="{y}" r="3.5" '
                         f'fill="none" stroke={colour} stroke-width="1.5">{title}</circle>')
        elif misclassified[i]:
            parts.append(f'<circle data-i="{i}" class="emb-pt emb-mis" cx="{x}" cy="{y}" r="4.5" '
                         f'fill="#222" stroke={colour} stroke-width="2.5">{title}</circle>')
        else:
            parts.append(f'<circle data-i="{i}" class="emb-pt" cx="{x}" cy="{y}" r="3.5" '
                         f'fill={colour} fill-opacity="0.85" stroke="#fff" stroke-width="0.6">{title}</circle>')
    parts.append("</svg>")
    return "\n".join(parts)


def thumbnail_sprite(thumbs: np.ndarray) -> Tuple[str, int, int, int]:
    """(data URI, columns, sprite width, sprite height) of all thumbnails packed without gaps."""
    n = len(thumbs)
    cols = max(1, int(math.ceil(math.sqrt(n))))
    sprite, _ = pack_grid(list(thumbs), cols=cols, pad=0, background=1.0)
    return webp_uri(sprite, quality=80), cols, int(sprite.shape[1]), int(sprite.shape[0])


def render_embeddings(result: EmbeddingResult, classes: Sequence[str]) -> Dict[str, Any]:
    """The view for templates/sections/embeddings.html.j2."""
    n = len(result.coords)
    colours_by_class = [hex_colour(c) for c in palette(len(classes))]
    colour_idx = np.where(result.labels >= 0, result.labels, result.predictions)
    colours = [colours_by_class[c] if 0 <= c < len(classes) else UNKNOWN_COLOUR for c in colour_idx]
    titles = [point_title(result.names[i],
                          classes[result.labels[i]] if result.labels[i] >= 0 else None,
                          classes[result.predictions[i]] if 0 <= result.predictions[i] < len(classes)
                          else str(int(result.predictions[i])))
              for i in range(n)]
    label = (f"{result.method.upper()} scatter of {n} dataset images, coloured by true class "
             f"(hollow: true class unknown, coloured by prediction); "
             f"{int(result.misclassified.sum())} misclassified shown as dark dots with a coloured ring")
    present = sorted(set(int(c) for c in colour_idx if 0 <= c < len(classes)))
    unknown = result.labels < 0
    legend = [{"name": classes[c], "colour": colours_by_class[c],
               "count": int((result.labels == c).sum()), "predicted_only": int((unknown & (colour_idx == c)).sum()),
               "errors": int((result.misclassified & (result.labels == c)).sum())} for c in present]
    view: Dict[str, Any] = {
        "unknown": int(unknown.sum()),
        "svg": scatter_svg(result.coords, colours, result.misclassified, titles, label, unknown),
        "label": label, "legend": legend, "n": n, "method": result.method, "backend": result.backend,
        "layer": result.layer, "layer_input": result.layer_input, "feature_dim": result.feature_dim,
        "misclassified": int(result.misclassified.sum()), "known": int((result.labels >= 0).sum()),
        "accuracy": result.accuracy(),
        "explained": [float(v) for v in result.explained] if result.explained is not None else None,
        "width": WIDTH, "height": HEIGHT, "sprite": None,
    }
    if n:
        tile = int(result.thumbnails.shape[1])
        uri, cols, sw, sh = thumbnail_sprite(result.thumbnails)
        scale = max(1, 64 // tile)
        view["sprite"] = {"uri": uri, "cols": cols, "tile": tile, "scale": scale,
                          "width": sw * scale, "height": sh * scale, "shown": tile * scale}
    return view

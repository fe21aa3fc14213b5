"""The published site's index.html: every report in the manifest, as one self-contained page.

Filled from the manifest alone, so the same manifest gives a byte-identical
page. Links are relative (``reports/<ID>/index.html``) so the page works from
``file://`` and under a sub-path (``https://user.github.io/repo/``). The charts
are inline SVG drawn here; the sort and filter script is inline.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Dict, List, Sequence

from reportgen import __version__
from reportgen.render.page import environment, format_number, si_number
from reportgen.report import SEVERITIES

CHART_W, CHART_H, PAD = 520, 160, 34
DEFAULT_METRICS = ("val_acc", "accuracy", "acc", "val_loss")
SEVERITY_COLOURS = {"error": "var(--err-fg)", "warning": "#d4a72c", "info": "var(--info-fg)"}


def metric_text(name: str, value: Any) -> str:
    return si_number(value) if name == "parameters" else format_number(value)


def chart_metrics(builds: Sequence[Dict[str, Any]]) -> List[str]:
    """Metrics at least one build has, the usual headline ones first."""
    names = sorted({k for b in builds for k in b.get("metrics", {})})
    return sorted(names, key=lambda n: (DEFAULT_METRICS.index(n) if n in DEFAULT_METRICS else len(DEFAULT_METRICS), n))


def _x(i: int, n: int) -> float:
    return PAD + (CHART_W - 2 * PAD) * (i / (n - 1) if n > 1 else 0.5)


def _svg(body: str, label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" width="{CHART_W}" height="{CHART_H}" '
            f'role="img" aria-label="{escape(label)}">{body}</svg>')


def _axis(lo: float, hi: float, name: str) -> str:
    """The baseline and the lowest and highest values (one label when all values are equal)."""
    y0, y1 = CHART_H - PAD + 10, PAD - 14
    ticks = [(y1 + 4, hi), (y0, lo)] if hi > lo else [((y0 + y1) / 2 + 4, hi)]
    return (f'<line x1="{PAD}" y1="{y0}" x2="{CHART_W - PAD}" y2="{y0}" class="axis"/>'
            + "".join(f'<text x="{PAD - 4}" y="{y:.1f}" class="tick" text-anchor="end">'
                      f'{escape(metric_text(name, v))}</text>' for y, v in ticks))


def metric_chart(builds: Sequence[Dict[str, Any]], name: str) -> str:
    """One metric across the builds in publication order: a line, a dot per build that has it."""
    points = [(i, b["metrics"][name], b) for i, b in enumerate(builds) if name in b.get("metrics", {})]
    values = [v for _, v, _ in points]
    lo, hi = min(values), max(values)
    span = (hi - lo) or abs(hi) or 1.0
    top, bottom = PAD - 14, CHART_H - PAD + 10

    def y(v: float) -> float:
        return bottom - (bottom - top) * ((v - lo) / span if hi > lo else 0.5)

    xy = [(_x(i, len(builds)), y(v)) for i, v, _ in points]
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
    dots = "".join(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5"><title>{escape(r["title"])}: '
                   f'{escape(name)} {escape(metric_text(name, v))}</title></circle>'
                   for (a, b), (_, v, r) in zip(xy, points))
    body = _axis(lo, hi, name) + f'<polyline points="{line}" class="line"/>' + dots
    return _svg(body, f"{name} of each published build, oldest left, newest right")


def findings_chart(builds: Sequence[Dict[str, Any]]) -> str:
    """Findings per build, stacked by severity (errors at the bottom)."""
    top, bottom = PAD - 14, CHART_H - PAD + 10
    most = max([sum(b["findings"].values()) for b in builds] + [1])
    width = max(4.0, min(28.0, (CHART_W - 2 * PAD) / max(1, len(builds)) * 0.6))
    bars = []
    for i, b in enumerate(builds):
        x = _x(i, len(builds)) - width / 2
        y = bottom
        for sev in reversed(SEVERITIES):
            n = b["findings"].get(sev, 0)
            if not n:
                continue
            h = (bottom - top) * n / most
            y -= h
            bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" '
                        f'fill="{SEVERITY_COLOURS[sev]}"><title>{escape(b["title"])}: {n} {sev}</title></rect>')
    body = _axis(0, most, "findings") + "".join(bars)
    return _svg(body, "findings of each published build by severity, oldest left, newest right")


def site_context(manifest: Dict[str, Any]) -> Dict[str, Any]:
    from reportgen.render.theme import load_theme

    reports = manifest["reports"]
    by_id = {r["id"]: r for r in reports}
    builds = [r for r in reports if r["kind"] == "build"]
    rows = []
    for order, r in enumerate(reports):
        links = {side: by_id.get(i) for side, i in (r.get("compares") or {}).items() if i}
        rows.append({**r, "order": order, "date": (r.get("published") or "")[:10],
                     "links": {side: {"id": x["id"], "title": x["title"], "path": x["path"]}
                               for side, x in links.items()},
                     "metric_items": [(k, metric_text(k, v), v) for k, v in sorted(r.get("metrics", {}).items())]})
    metrics = chart_metrics(builds)
    return {
        "css": load_theme("light", Path(".")),
        "version": __version__,
        "rows": list(reversed(rows)),              # newest first
        "n_builds": len(builds), "n_compares": len(reports) - len(builds),
        "severities": SEVERITIES,
        "charts": [(name, metric_chart(builds, name)) for name in metrics],
        "findings_chart": findings_chart(builds) if builds else None,
    }


def render_site(manifest: Dict[str, Any]) -> str:
    return environment().get_template("site.html.j2").render(**site_context(manifest))

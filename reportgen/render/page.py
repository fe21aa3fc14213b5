"""Filling the page template from the computed sections (report.json is assembled in ``reportgen.report``)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jinja2

from reportgen import __version__
from reportgen.paths import public_path, public_text
from reportgen.render.markdown import render_markdown
from reportgen.report import Outcome, baseline_summary


def environment(extra_dirs: Sequence[Optional[Path]] = ()) -> jinja2.Environment:
    """Our templates first, then plugin sections' own folders (their partials)."""
    from reportgen.resources import templates_dir

    folders = [str(templates_dir())] + [str(d) for d in extra_dirs if d is not None]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folders), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["fmt"] = format_number
    env.filters["si"] = si_number
    return env


def format_number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def si_number(value: Any) -> str:
    """1234567 -> '1.23M': parameter and MAC counts are read at a glance."""
    if value is None:
        return "–"
    v = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{int(v)}" if v == int(v) else f"{v:.3g}"


def model_source(spec) -> str:
    """Where the model came from, as the page and report.json show it (a file by ``public_path``)."""
    from reportgen.model.loading import source_of

    m = spec["model"]
    key = source_of(m)
    if key is None:
        return "?"
    value = public_path(spec.path(m[key]), spec.base_dir) if key == "torchscript" else m[key]
    return f"{key}: {value}"


def public_notes(res) -> List[str]:
    """The resolve step's notes, any path in them in its public form."""
    return [public_text(n, res.spec.base_dir) for n in res.notes]


def render_page(res, outcomes: Dict[str, Outcome], findings: List[Dict[str, Any]],
                resolved: Sequence[Dict[str, Any]] = (), baseline: Optional[Dict[str, Any]] = None) -> str:
    """``outcomes``: per section its view, title, partial and template_dir, and why it is not shown."""
    spec = res.spec
    env = environment(list(dict.fromkeys(o.template_dir for o in outcomes.values())))
    entries = [{"name": name, "title": o.title, "partial": o.partial, "view": o.view, "error": o.error,
                "skipped": o.skipped, "hint": o.hint, "budget_note": o.budget_note}
               for name, o in outcomes.items()]
    audit = res.checkpoints[res.audit_index].label if res.audit_index is not None else None
    build_time = None
    if spec["output"]["timestamp"]:
        from reportgen.render.timeutil import build_time_string
        build_time = build_time_string()
    context = {
        "title": spec["title"],
        "description_html": render_markdown(spec["description"]),
        "css": res.theme_css,
        "version": __version__,
        "model_source": model_source(spec),
        "input_size": list(res.input_size),
        "num_classes": res.num_classes,
        "audit_checkpoint": audit,
        "n_checkpoints": len(res.checkpoints),
        "n_probes": len(res.probes),
        "notes": public_notes(res),
        "sections": entries,
        "findings": findings,
        "resolved": list(resolved),
        "baseline": baseline_summary(baseline),
        "build_time": build_time,
    }
    return env.get_template("report.html.j2").render(**context)


def page_size(page: str, names: Sequence[str]) -> Dict[str, Any]:
    """The page's bytes and each section's share (from its <section> tag to the next one):
    what to trim when a report gets too heavy to publish by the hundred."""
    found = {}
    for n in names:     # a build's sections carry "section section-NAME", a compare's plain "section"
        m = re.search(f'<section id="{re.escape(n)}" class="section[^"]*">', page)
        found[n] = m.start() if m else -1
    marks = sorted((i, n) for n, i in found.items() if i >= 0)
    end = page.find("</main>", marks[-1][0]) if marks else -1
    ends = [i for i, _ in marks[1:]] + [end if end >= 0 else len(page)]
    sections = {n: len(page[i:j].encode("utf-8")) for (i, n), j in zip(marks, ends)}
    return {"bytes": len(page.encode("utf-8")), "sections": dict(sorted(sections.items()))}

"""Filling the page template and report.json from the computed sections."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jinja2

from reportgen import __version__
from reportgen.paths import public_path, public_text
from reportgen.render.markdown import render_markdown


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


def render_page(res, outcomes: Dict[str, Dict[str, Any]], findings: List[Dict[str, Any]],
                resolved: Sequence[Dict[str, Any]] = (), baseline: Optional[Dict[str, Any]] = None) -> str:
    """``outcomes``: per section its view and title, partial and template_dir (from the registry)."""
    spec = res.spec
    env = environment(list(dict.fromkeys(o.get("template_dir") for o in outcomes.values())))
    entries = [{"name": name, "title": o["title"], "partial": o["partial"], "view": o["view"],
                "error": o["error"], "skipped": o.get("skipped"), "hint": o.get("hint"),
                "budget_note": o.get("budget_note")}
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


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: they become null so strict parsers accept the file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist())
    return obj


def baseline_summary(baseline: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """What a report says of the report it was compared with (no paths: reports get published)."""
    if baseline is None:
        return None
    return {"title": baseline.get("title"), "spec_digest": baseline.get("spec_digest"),
            "reportgen": baseline.get("reportgen"), "findings": len(baseline["findings"])}


def section_summaries(outcomes: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """report.json's ``sections``: each summary, with what the budget plan chose for it."""
    return {name: dict(o["summary"], budget=o["budget"]) if o.get("budget") else o["summary"]
            for name, o in outcomes.items()}


def report_json(res, outcomes: Dict[str, Dict[str, Any]], findings: List[Dict[str, Any]],
                resolved: Sequence[Dict[str, Any]] = (), baseline: Optional[Dict[str, Any]] = None,
                budget: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from reportgen.model.loading import parameter_count

    spec = res.spec
    audit = res.checkpoints[res.audit_index] if res.audit_index is not None else None
    data = {
        "reportgen": __version__,
        "kind": "build",
        "spec_digest": spec.digest,
        "title": spec["title"],
        "model": {
            "source": model_source(spec),
            "parameters": parameter_count(res.model),
            "input_size": list(res.input_size),
            "num_classes": res.num_classes,
            "classes": res.classes,
            "output": res.output_key if res.output_key is not None else "auto",
            "device": res.device.type,
            "audit_checkpoint": audit.label if audit else None,
            "checkpoints": [{"label": c.label, "path": public_path(c.path, spec.base_dir), "metrics": c.metrics,
                             "weights": c.weights, "other_weights": list(c.other_weights)}
                            for c in res.checkpoints],
            "checkpoint_weights": spec["checkpoint_weights"],
            "preprocess": {key: spec["preprocess"][key] for key in sorted(spec["preprocess"])},
            "preprocess_source": res.preprocess_source,
        },
        "notes": public_notes(res),
        "sections": section_summaries(outcomes),
        "findings": findings,
        "resolved": list(resolved),
        "baseline": baseline_summary(baseline),
        "timings": {name: round(o["seconds"], 4) for name, o in outcomes.items()},
        "cached": sorted(name for name, o in outcomes.items() if o["cached"]),
    }
    if budget is not None:
        data["budget"] = budget
    return _finite(data)

"""Inline SVG for the architecture diagram: one laid-out view per block level.

Three steps, one module each: ``view`` decides what each block level shows
(boxes, collapsed blocks, ports, edges), ``layout`` places it (a layered
Sugiyama layout) and ``svg`` draws it.  A click on a block opens the block's
own view (pre-rendered, toggled by a few lines of inline JS in the template
partial).
"""
from __future__ import annotations

from typing import Any, Dict, List

from reportgen.analyses.architecture import ArchGraph
from reportgen.render.architecture.graph_layout import lay_out, pick_engine
from reportgen.render.architecture.svg import draw_view
from reportgen.render.architecture.view import View, build_views

__all__ = ["render_architecture", "build_views", "pick_engine"]

MAX_ALT_NAMES = 24


def _alt_text(graph: ArchGraph, view: View) -> str:
    if view.path:
        block = graph.blocks[view.path]
        what = f"block {view.path} ({block.type})"
    else:
        what = f"the model ({graph.blocks[''].type if '' in graph.blocks else 'model'})"
    names = [v.lines[0][0] for v in view.nodes if v.kind != "port"]
    shown = ", ".join(names[:MAX_ALT_NAMES]) + (", …" if len(names) > MAX_ALT_NAMES else "")
    merges = sum(1 for v in view.nodes if sum(1 for e in view.edges if e.dst == v.id) >= 2)
    return (f"Dataflow diagram of {what}: {len(names)} parts in order — {shown}. "
            f"{merges} point(s) where paths merge (residual additions or concatenations).")


def render_architecture(graph: ArchGraph, engine: str = "grandalf", uid: str = "arch") -> Dict[str, Any]:
    """Lay out and draw every view of ``graph``; returns the dict the partial expects.

    Keys: ``uid`` (DOM id prefix), ``views`` (list of dicts: ``id``, ``path``,
    ``title``, ``crumbs`` [{label, id}], ``children`` [{label, id}], ``svg``,
    ``alt``), ``method``, ``note``, ``engine``, ``n_nodes``, ``n_edges``,
    ``n_blocks``, ``n_params``, ``model_type``.
    """
    used = pick_engine(engine)
    views = build_views(graph, uid)
    by_path = {v.path: v for v in views}
    out = []
    for view in views:
        lay_out(view, used)
        alt = _alt_text(graph, view)
        out.append({
            "id": view.id,
            "path": view.path,
            "title": view.path or "model",
            "type": graph.blocks[view.path].type if view.path in graph.blocks else "",
            "crumbs": _crumbs(view.path, by_path),
            "children": [{"label": p, "id": vid} for p, vid in view.children],
            "svg": draw_view(view, alt),
            "alt": alt,
        })
    return {
        "uid": uid,
        "views": out,
        "method": graph.method,
        "note": graph.note,
        "engine": used,
        "n_nodes": len(graph.nodes),
        "n_edges": len(graph.edges),
        "n_blocks": max(len(graph.blocks) - 1, 0),
        "n_params": graph.total_params(),
        "model_type": graph.blocks[""].type if "" in graph.blocks else "",
    }


def _crumbs(path: str, by_path: Dict[str, View]) -> List[Dict[str, str]]:
    """Breadcrumb from the model down to ``path``, skipping levels that have no view."""
    crumbs = [{"label": "model", "id": by_path[""].id}]
    if not path:
        return crumbs
    parts = path.split(".")
    for k in range(1, len(parts) + 1):
        p = ".".join(parts[:k])
        if p in by_path:
            crumbs.append({"label": p, "id": by_path[p].id})
    return crumbs

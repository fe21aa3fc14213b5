"""Architecture section: the traced dataflow graph, drawn as collapsible inline SVG."""
from __future__ import annotations

from typing import Any, Dict

from reportgen.analyses.architecture import ArchGraph, trace_graph
from reportgen.model.loading import require_hooks
from reportgen.options import Choice
from reportgen.render.architecture import render_architecture
from reportgen.sections.base import BuildContext, Section, register_section


@register_section("architecture")
class ArchitectureSection(Section):
    title = "Architecture"
    partial = "sections/architecture.html.j2"
    order = 20
    options = {
        "method": Choice(["auto", "fx", "hooks"], default="auto",
                         doc="fx (torch.fx), hooks (forward hooks), auto (fx, hooks if untraceable)"),
        "engine": Choice(["grandalf", "dot", "auto"], default="grandalf",
                         doc="layout engine: grandalf (pure Python, always there), dot (Graphviz on PATH), "
                             "auto (dot if present)"),
    }
    aliases = {"layout": "engine"}

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> ArchGraph:
        require_hooks(ctx.model, "The architecture diagram")
        return trace_graph(ctx.model, ctx.example(), method=options["method"])

    def view(self, result: ArchGraph, ctx: BuildContext) -> Dict[str, Any]:
        return render_architecture(result, engine=self.options["engine"])

    def summary(self, result: ArchGraph) -> Dict[str, Any]:
        return {
            "trace_method": result.method,
            "trace_note": result.note,
            "nodes": len(result.nodes),
            "edges": len(result.edges),
            "blocks": max(len(result.blocks) - 1, 0),
            "merge_nodes": sum(1 for n in result.nodes if n.kind != "output" and result.in_degree(n.id) >= 2),
            "params": result.total_params(),
        }

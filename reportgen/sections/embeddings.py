"""Embeddings: the dataset in the model's penultimate feature space, as a 2-D scatter."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from reportgen.analyses import embeddings as emb
from reportgen.render.embeddings import render_embeddings
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.topk import dataset_for

# The schema's defaults, for callers that construct the section without spec options.
DEFAULTS: Dict[str, Any] = {"method": "pca", "layer": "auto", "perplexity": 30.0, "thumbnail": 32}


@register_section("embeddings")
class EmbeddingsSection(Section):
    title = "Embeddings"
    partial = "sections/embeddings.html.j2"
    order = 80

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if not ctx.dataset:
            return None
        opts = {**DEFAULTS, **options}
        data = ctx.spec["dataset"] or {}
        method, note = opts["method"], None
        if method == "tsne" and emb.tsne_backend() is None:
            # a missing optional package must not cost the whole section: fall back, say so
            method = "pca"
            note = (f"t-SNE was requested but needs {emb.TSNE_PACKAGES}, and neither is installed; "
                    "showing PCA instead.")
        result = emb.embeddings(
            ctx.model, dataset_for(ctx), ctx.classes, method=method,
            layer=None if opts["layer"] == "auto" else opts["layer"], output_key=ctx.output_key,
            batch_size=data.get("batch_size", 64), workers=data.get("workers", 0), device=ctx.device,
            seed=ctx.seed, perplexity=float(opts["perplexity"]), thumb=int(opts["thumbnail"]),
            progress=getattr(ctx, "progress", None))
        return {"embedding": result, "requested": opts["method"], "note": note,
                "layer_auto": opts["layer"] == "auto"}

    def render(self, result: Optional[Dict[str, Any]], ctx: BuildContext) -> Dict[str, Any]:
        if result is None:
            return {"empty": True}
        view = render_embeddings(result["embedding"], ctx.classes)
        view["note"] = result["note"]
        return view

    def summary(self, result: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        if result is None:
            return {"skipped": "no dataset in the spec"}
        r: emb.EmbeddingResult = result["embedding"]
        return {"images": int(len(r.coords)), "method": r.method, "method_requested": result["requested"],
                "backend": r.backend, "layer": r.layer, "layer_input": r.layer_input,
                "layer_auto": result["layer_auto"], "feature_dim": r.feature_dim,
                "labelled": int((r.labels >= 0).sum()), "accuracy": r.accuracy(),
                "misclassified": int(r.misclassified.sum()),
                "explained_variance": r.explained.tolist() if r.explained is not None else None}

    def findings(self, result: Optional[Dict[str, Any]], ctx: BuildContext) -> List[Finding]:
        if result is None or result["note"] is None:
            return []
        return [Finding(id="embeddings-tsne-unavailable", severity="info", section="embeddings",
                        title="t-SNE unavailable, PCA shown", evidence=result["note"])]

"""Embeddings: the dataset in the model's penultimate feature space, as a 2-D scatter."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from reportgen.analyses import embeddings as emb
from reportgen.options import Choice, Float, Int, layer, layout
from reportgen.render.embeddings import render_embeddings
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.topk import dataset_for


@dataclass(frozen=True)
class EmbeddingsSectionResult:
    embedding: emb.EmbeddingResult
    requested: str
    note: Optional[str]
    layer_auto: bool


@register_section("embeddings")
class EmbeddingsSection(Section):
    title = "Embeddings"
    partial = "sections/embeddings.html.j2"
    order = 80
    requires = ("dataset",)
    options = {
        "method": Choice(["pca", "tsne"], default="pca",
                         doc="pca, or tsne (needs scikit-learn or openTSNE; falls back to PCA, saying so)"),
        "layer": layer(doc="the layer whose features are embedded (auto: the input of the last linear layer)"),
        "perplexity": Float(min=1, default=30.0, doc="t-SNE perplexity"),
        "thumbnail": Int(min=8, max=128, default=32, doc="side of the hover thumbnails, in pixels"),
        "layout": layout(doc="how a named layer holds its map before it is pooled: auto (detected), nchw, "
                             "nhwc (channels-last) or tokens (N, L, C; class/register tokens dropped)"),
    }

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> EmbeddingsSectionResult:
        opts = options
        data = ctx.spec["dataset"]
        method, note = opts["method"], None
        if method == "tsne" and emb.tsne_backend() is None:
            # a missing optional package must not cost the whole section: fall back, say so
            method = "pca"
            note = (f"t-SNE was requested but needs {emb.TSNE_PACKAGES}, and neither is installed; "
                    "showing PCA instead.")
        result = emb.embeddings(
            ctx.model, dataset_for(ctx), ctx.classes, method=method,
            layer=None if opts["layer"] == "auto" else opts["layer"], output_key=ctx.output_key,
            batch_size=data["batch_size"], workers=data["workers"], device=ctx.device,
            seed=ctx.seed, perplexity=float(opts["perplexity"]), thumb=int(opts["thumbnail"]),
            progress=ctx.progress, layout=opts["layout"])
        return EmbeddingsSectionResult(result, opts["method"], note, opts["layer"] == "auto")

    def view(self, result: EmbeddingsSectionResult, ctx: BuildContext) -> Dict[str, Any]:
        view = render_embeddings(result.embedding, ctx.classes)
        view["note"] = result.note
        return view

    def summary(self, result: EmbeddingsSectionResult) -> Dict[str, Any]:
        r = result.embedding
        return {"images": int(len(r.coords)), "method": r.method, "method_requested": result.requested,
                "backend": r.backend, "layer": r.layer, "layer_input": r.layer_input,
                "layer_auto": result.layer_auto, "feature_dim": r.feature_dim,
                **({"layouts": {r.layer: r.layout}} if r.layout else {}),
                "labelled": int((r.labels >= 0).sum()), "accuracy": r.accuracy(),
                "misclassified": int(r.misclassified.sum()),
                "explained_variance": r.explained.tolist() if r.explained is not None else None}

    def findings(self, result: EmbeddingsSectionResult, ctx: BuildContext) -> List[Finding]:
        if result.note is None:
            return []
        return [Finding(id="embeddings-tsne-unavailable", severity="info", section="embeddings",
                        title="t-SNE unavailable, PCA shown", evidence=result.note)]

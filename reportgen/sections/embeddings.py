"""Embeddings: the dataset in the model's penultimate feature space, as a 2-D scatter."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from reportgen.analyses import embeddings as emb
from reportgen.analyses.dataset_pass import Taps
from reportgen.engine import budget as bud
from reportgen.options import Choice, Float, Int, layer, layout
from reportgen.render.embeddings import render_embeddings
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.dataset_pass import dataset_for, pass_cost, shared


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

    def dataset_taps(self, ctx: BuildContext, options: Dict[str, Any]) -> Taps:
        """One layer's pooled features (auto: the last Linear's input) and every image's thumbnail."""
        def make() -> Taps:
            use_input, layer, lay = emb.feature_layer(ctx.model, dataset_for(ctx),
                                                      None if options["layer"] == "auto" else options["layer"],
                                                      ctx.output_key, options["layout"], ctx.device)
            return Taps(features_layer=layer, features_input=use_input, features_layout=lay,
                        thumbnail=int(options["thumbnail"]))
        key = ("embeddings-taps", options["layer"], options["layout"], int(options["thumbnail"]))
        return ctx.remember(key, make)

    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        """The dataset pass, when this section owns it; the projection is no image pass."""
        return bud.Needs(fixed=pass_cost(ctx, self.name))

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> EmbeddingsSectionResult:
        opts = options
        method, note = opts["method"], None
        if method == "tsne" and emb.tsne_backend() is None:
            # a missing optional package must not cost the whole section: fall back, say so
            method = "pca"
            note = (f"t-SNE was requested but needs {emb.TSNE_PACKAGES}, and neither is installed; "
                    "showing PCA instead.")
        taps = self.dataset_taps(ctx, opts)
        run = shared(ctx, taps)
        if run.features_error is not None:
            raise run.features_error
        result = emb.finish_embeddings(
            run.features, run.predictions, run.thumbnails, ctx.dataset, ctx.classes, method, ctx.seed,
            float(opts["perplexity"]), taps.features_layer, taps.features_input, run.features_read,
            taps.thumbnail)
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

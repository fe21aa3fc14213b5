"""Sections about the model itself: summary, first-layer filters, activations."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional

import numpy as np

from reportgen.analyses import activations as act
from reportgen.analyses import filters as flt
from reportgen.analyses import summary as summ
from reportgen.engine import budget as bud
from reportgen.model.layers import first_conv
from reportgen.model.loading import require_hooks
from reportgen.options import AUTO, Choice, Float, Int, auto_or, layer, layers, layout
from reportgen.render.activations import THUMB, grid_uri, render_activations
from reportgen.render.filters import render_filters
from reportgen.render.images import thumbnail_uri
from reportgen.sections.base import BuildContext, Finding, Section, register_section


@dataclass(frozen=True)
class SummaryResult:
    summary: summ.ModelSummary
    predictions: Optional[summ.Predictions]


@dataclass(frozen=True)
class FiltersResult:
    filters: flt.FilterResult
    auto: bool
    normalize: str


@register_section("summary")
class SummarySection(Section):
    title = "Model summary"
    partial = "sections/summary.html.j2"
    order = 10
    options = {"top_k": Int(min=1, max=20, default=5, doc="predictions shown per probe")}

    THUMB = 96   # probe images are shown at this side

    def page_bytes(self, ctx: BuildContext, options: Dict[str, Any]) -> float:
        _, h, w = ctx.input_size
        return len(ctx.probes) * h * w * bud.PNG_BYTES_PER_PIXEL

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> SummaryResult:
        summary = summ.summarize(ctx.model, ctx.example(), ctx.output_key)
        preds = (summ.top_predictions(ctx.model, ctx.probe_batch(), options["top_k"], ctx.output_key)
                 if ctx.probes else None)
        return SummaryResult(summary, preds)

    def view(self, result: SummaryResult, ctx: BuildContext) -> Dict[str, Any]:
        s = result.summary
        rows = [{"name": r.name, "type": r.type, "shape": "×".join(map(str, r.output_shape))
                 if r.output_shape else "–", "params": r.params, "macs": r.macs, "depth": r.depth}
                for r in s.rows]
        probes = []
        preds = result.predictions
        side = bud.thumbnail_side(self.THUMB, ctx.page_share(self.name))
        for i, probe in enumerate(ctx.probes):
            top = [{"cls": ctx.classes[int(c)], "index": int(c), "p": float(p)}
                   for c, p in zip(preds.indices[i], preds.probs[i])]
            target = ctx.classes[probe.target] if probe.target is not None else None
            probes.append({"name": probe.name, "image": thumbnail_uri(probe.display, side), "top": top,
                           "target": target})
        return {"rows": rows, "total_params": s.total_params, "trainable": s.trainable_params,
                "total_macs": s.total_macs, "probes": probes, "n_layers": len(rows)}

    def summary(self, result: SummaryResult) -> Dict[str, Any]:
        s = result.summary
        out: Dict[str, Any] = {"layers": len(s.rows), "parameters": s.total_params,
                               "trainable_parameters": s.trainable_params, "macs": s.total_macs}
        if result.predictions is not None:
            out["top1"] = result.predictions.indices[:, 0].tolist()
            out["top1_prob"] = result.predictions.probs[:, 0].tolist()
        return out


@register_section("filters")
class FiltersSection(Section):
    title = "First-layer filters"
    partial = "sections/filters.html.j2"
    order = 30
    options = {
        "layer": layer(doc="the convolution whose kernels are drawn (auto: the first one)"),
        "normalize": Choice(["per_filter", "common"], default="per_filter",
                            doc="one colour scale per filter, or one for all centred on zero"),
        "sort": Choice(["norm", "noise", "index"], default="norm", doc="order of the filters in the grid"),
        "noise_threshold": Float(min=0, default=0.75,
                                 doc="roughness above which a filter may be flagged noisy; it is flagged only "
                                     "when its roughness is also inside the i.i.d.-noise band for its kernel "
                                     "shape (above the 5 % quantile of random filters of that shape)"),
    }
    thresholds = {"noisy_filter_fraction": Float(min=0, max=1, default=0.25,
                                                 doc="share of noisy first-layer filters that raises a finding (judged "
                                                     "on kernels of 5x5 or more and 8 filters or more only)")}

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> FiltersResult:
        name = first_conv(ctx.model) if options["layer"] == "auto" else options["layer"]
        res = flt.first_layer_filters(ctx.model, name, options["noise_threshold"], options["sort"])
        return FiltersResult(res, options["layer"] == "auto", options["normalize"])

    def view(self, result: FiltersResult, ctx: BuildContext) -> Dict[str, Any]:
        view = render_filters(result.filters, result.normalize)
        view["auto"] = result.auto
        return view

    def summary(self, result: FiltersResult) -> Dict[str, Any]:
        f = result.filters
        return {"layer": f.layer, "layer_auto": result.auto, "filters": int(len(f.norms)),
                "noisy": int(f.noisy.sum()), "dead": int(f.dead.sum()),
                "noise_median": float(np.median(f.noise)), "noise_threshold": f.noise_threshold,
                "noise_band": round(f.noise_band, 4),
                **({"noise_not_judged": f.noise_note} if f.noise_note else {}),
                "noisy_indices": np.flatnonzero(f.noisy).tolist(),
                "dead_indices": np.flatnonzero(f.dead).tolist()}

    def findings(self, result: FiltersResult, ctx: BuildContext) -> List[Finding]:
        f = result.filters
        out: List[Finding] = []
        limit = ctx.threshold("noisy_filter_fraction")
        n = len(f.norms)
        if n and f.noisy.sum() / n > limit:
            out.append(Finding(
                id="noisy-filters", severity="warning", section="filters", layer=f.layer,
                title=f"{int(f.noisy.sum())} of {n} first-layer filters look noisy",
                evidence=f"{f.noisy.sum() / n:.0%} of filters score a roughness above {f.noise_threshold:g} "
                         f"and inside the band of i.i.d. noise for a {'x'.join(map(str, f.weights.shape[1:]))} "
                         f"kernel (above {f.noise_band:.2f}, which {1 - flt.NOISE_ALPHA:.0%} of random "
                         f"filters exceed); median {np.median(f.noise):.2f}, white noise ~1. Filters that "
                         "cannot be told from their random init suggest under-training or too little "
                         "regularization (weight decay) on the first layer."))
        if f.dead.any():
            out.append(Finding(
                id="dead-filters", severity="warning" if f.dead.sum() / n > limit else "info",
                section="filters", layer=f.layer,
                title=f"{int(f.dead.sum())} of {n} first-layer filters are (near) zero",
                evidence=f"L2 norm below 1e-3 × the median norm ({np.median(f.norms):.3g}): "
                         f"filters {np.flatnonzero(f.dead).tolist()[:20]}"))
        return out


MIN_PROBES_FOR_DEAD = 3  # below this, never-firing channels are reported as info only


@register_section("activations")
class ActivationsSection(Section):
    title = "Activations"
    partial = "sections/activations.html.j2"
    order = 40
    requires = ("probes",)
    options = {
        "layers": layers(spatial=True, doc="layers whose feature maps are shown (auto: the last layer of "
                                           "each resolution stage)"),
        "max_channels": auto_or(Int(min=1, max=1024), expected="'auto' or a number of channels (1 to 1024)",
                                doc=f"channels shown per layer, most active first (auto: "
                                    f"{bud.ACTIVATION_CHANNELS[0]}, fewer on layers with large maps when the "
                                    "page would exceed output.page_budget_mb)"),
        "layout": layout(),
    }

    def _layers(self, ctx: BuildContext, options: Dict[str, Any]) -> List[str]:
        auto = options["layers"] == "auto"
        return act.stage_layers(ctx.model, ctx.example()) if auto else list(options["layers"])

    def page_bytes(self, ctx: BuildContext, options: Dict[str, Any]) -> float:
        """The grids at full channels (WebP, noise-like maps: the worst case) and the thumbnails."""
        from reportgen.model.layers import output_shapes

        shapes = output_shapes(ctx.model, ctx.example())
        k = bud.ACTIVATION_CHANNELS[0] if options["max_channels"] == AUTO else int(options["max_channels"])
        pixels = sum(min(k, s[1]) * s[2] * s[3] for s in (shapes[name] for name in self._layers(ctx, options))
                     if len(s) == 4)
        _, h, w = ctx.input_size
        n = len(ctx.probes)
        return n * (pixels * bud.WEBP_BYTES_PER_PIXEL + h * w * bud.PNG_BYTES_PER_PIXEL)

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> act.ActivationsResult:
        require_hooks(ctx.model, "The activations section")
        written = options["max_channels"] != AUTO
        best = int(options["max_channels"]) if written else bud.ACTIVATION_CHANNELS[0]
        auto = options["layers"] == "auto"
        result = act.activations(ctx.model, ctx.probe_batch(), self._layers(ctx, options), best,
                                 ctx.output_key, auto=auto, layout=AUTO if auto else options["layout"])
        share = ctx.page_share(self.name)
        if share is None or written or not result.layers:
            return result
        # the page would not fit: fewer channels where the maps are large, measured on the first probe
        n = result.n_probes
        thumbs = n * len(thumbnail_uri(ctx.probes[0].display, bud.thumbnail_side(THUMB, share)))
        full = {la.layer: n * len(grid_uri(la.maps[0])) for la in result.layers}
        shown = bud.channels_per_layer(full, best, share - thumbs)
        return replace(result, layers=[replace(la, channels=la.channels[:, :shown[la.layer]],
                                               maps=la.maps[:, :shown[la.layer]]) for la in result.layers])

    def view(self, result: act.ActivationsResult, ctx: BuildContext) -> Dict[str, Any]:
        share = ctx.page_share(self.name)
        view = render_activations(result, ctx.probes, thumb_side=bud.thumbnail_side(THUMB, share))
        fewer = [la for la in result.layers if la.maps.shape[1] < min(bud.ACTIVATION_CHANNELS[0], la.shape[0])]
        view["page_note"] = (f"Layers with large maps show fewer channels so the page stays under its "
                             f"{ctx.spec['output']['page_budget_mb']:g} MB budget (output.page_budget_mb)."
                             if fewer and self.options["max_channels"] == AUTO else "")
        return view

    def summary(self, result: act.ActivationsResult) -> Dict[str, Any]:
        return {"layers": [la.layer for la in result.layers], "layers_auto": result.auto,
                "layouts": {la.layer: la.layout for la in result.layers},
                "per_layer": {la.layer: {"sparsity": la.sparsity, "dead_channels": int(la.never_fire.sum()),
                                         "certain_dead": int(la.dead.sum()), "channels": la.shape[0],
                                         "channels_shown": int(la.maps.shape[1])} for la in result.layers}}

    def findings(self, result: act.ActivationsResult, ctx: BuildContext) -> List[Finding]:
        limit = ctx.threshold("dead_channel_fraction")
        out = []
        # sparse, selective channels are healthy: silence on one or two images proves little
        few = result.n_probes < MIN_PROBES_FOR_DEAD
        for la in result.layers:
            frac = float(la.never_fire.mean())
            if la.dead.mean() > limit:  # far below zero: as sure on one probe as on many
                out.append(Finding(
                    id=f"dead-channels-{la.layer}", severity="warning", section="activations", layer=la.layer,
                    title=f"{int(la.dead.sum())} of {la.shape[0]} channels are dead",
                    evidence=f"{la.dead.mean():.0%} of channels of {la.layer} peak more than "
                             f"{act.DEAD_SPREADS:g} spreads of the layer below zero on the {result.n_probes} "
                             f"probe image(s) (threshold {limit:.0%}): no plausible input makes them fire"))
            elif frac > limit:
                out.append(Finding(
                    id=f"dead-channels-{la.layer}", severity="info" if few else "warning",
                    section="activations", layer=la.layer,
                    title=f"{int(la.never_fire.sum())} of {la.shape[0]} channels never fire",
                    evidence=f"{frac:.0%} of channels of {la.layer} are never positive on the "
                             f"{result.n_probes} probe image(s) (threshold {limit:.0%})"
                             + (f"; with fewer than {MIN_PROBES_FOR_DEAD} probes this is only a hint: "
                                "add probes or a dataset (the top-k pass checks every image)" if few else "")))
        return out

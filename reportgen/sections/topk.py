"""Top-k dataset patches: what each chosen channel responds to across the dataset."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from reportgen.analyses import topk as tk
from reportgen.analyses.activations import stage_layers
from reportgen.render.topk import render_topk
from reportgen.sections.base import BuildContext, Finding, Section, register_section

AUTO_LAYERS = 2   # auto = the last two resolution stages: the most semantic units with a usable RF


def _finite(v: float) -> Optional[float]:
    """report.json allows no NaN/inf (a broken model's NaN maps rank as -inf): null instead."""
    return float(v) if math.isfinite(float(v)) else None


def dataset_for(ctx: BuildContext) -> tk.ImageDataset:
    """The spec's dataset, preprocessed exactly like the probes."""
    pre = ctx.spec["preprocess"]
    return tk.ImageDataset(ctx.dataset, ctx.input_size, pre["resize"], pre["center_crop"],
                           pre["mean"], pre["std"])


def choose_layers(ctx: BuildContext, layers: Any) -> List[str]:
    if layers == "auto":
        return stage_layers(ctx.model, ctx.example())[-AUTO_LAYERS:]
    return list(layers)


@register_section("topk")
class TopKSection(Section):
    title = "Top-k dataset patches"
    partial = "sections/topk.html.j2"
    order = 70

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if not ctx.dataset:
            return None
        data = ctx.spec["dataset"] or {}
        result = tk.topk_patches(
            ctx.model, dataset_for(ctx), choose_layers(ctx, options["layers"]), options["channels"],
            options["k"], data.get("batch_size", 64), data.get("workers", 0), ctx.device,
            ctx.input_size, options.get("projection", "none"), progress=getattr(ctx, "progress", None))
        return {"topk": result, "auto": options["layers"] == "auto"}

    def render(self, result: Optional[Dict[str, Any]], ctx: BuildContext) -> Dict[str, Any]:
        if result is None:
            return {"empty": True}
        view = render_topk(result["topk"])
        view.update(empty=False, auto=result["auto"])
        return view

    def summary(self, result: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        if result is None:
            return {"skipped": "no dataset in the spec"}
        r: tk.TopKResult = result["topk"]
        return {
            "layers": [la.layer for la in r.layers], "layers_auto": result["auto"],
            "channel_rule": r.channel_rule, "k": r.k, "images": r.n_images, "projection": r.projection,
            "per_layer": {la.layer: {
                "channels": la.channels.tolist(), "receptive_field": [int(v) for v in la.rf["size"]],
                "dead_channels": int((la.channel_max <= 0).sum()), "channels_total": int(la.shape[0]),
                "top_value": [_finite(v) for v in la.values[:, 0]] if la.values.size else [],
                "top_image": [row[0] for row in la.sources] if la.values.size else [],
            } for la in r.layers},
        }

    def findings(self, result: Optional[Dict[str, Any]], ctx: BuildContext) -> List[Finding]:
        """Channels that never fire on any dataset image: stronger evidence than the probes give."""
        if result is None:
            return []
        r: tk.TopKResult = result["topk"]
        limit = ctx.spec["findings"]["dead_channel_fraction"]
        out = []
        for la in r.layers:
            dead = la.channel_max <= 0
            if not dead.any():
                continue
            frac = float(dead.mean())
            out.append(Finding(
                id=f"dataset-dead-channels-{la.layer}", severity="warning" if frac > limit else "info",
                section="topk", layer=la.layer,
                title=f"{int(dead.sum())} of {dead.size} channels never fire on the dataset",
                evidence=f"the top activation over all {r.n_images} dataset image(s) is <= 0 for "
                         f"{frac:.0%} of the channels of {la.layer} (warning above {limit:.0%}): "
                         f"channels {[int(c) for c in dead.nonzero()[0][:20]]}"))
        return out

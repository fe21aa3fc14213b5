"""Top-k dataset patches: what each chosen channel responds to across the dataset."""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from reportgen.analyses import topk as tk
from reportgen.analyses.activations import stage_layers
from reportgen.model.layers import layer_layouts
from reportgen.options import AUTO, Choice, Int, ListOf, OneOf, layers, layout
from reportgen.render.topk import render_topk
from reportgen.sections.base import BuildContext, Finding, Section, register_section

AUTO_LAYERS = 2   # auto = the last two resolution stages: the most semantic units with a usable RF
_GIVEN: "weakref.WeakKeyDictionary[Any, tk.StreamState]" = weakref.WeakKeyDictionary()   # build --topk, per model


def use_topk_pass(model: Any, state: tk.StreamState) -> None:
    """This build's top-k section finishes ``state`` (a checked saved pass) instead of streaming the dataset."""
    _GIVEN[model] = state


def _finite(v: float) -> Optional[float]:
    """report.json allows no NaN/inf (a broken model's NaN maps rank as -inf): null instead."""
    return float(v) if math.isfinite(float(v)) else None


def dataset_for(ctx: BuildContext) -> tk.ImageDataset:
    """The spec's dataset, preprocessed exactly like the probes."""
    pre = ctx.spec["preprocess"]
    return tk.ImageDataset(ctx.dataset, ctx.input_size, pre["resize"], pre["center_crop"],
                           pre["mean"], pre["std"], pre["interpolation"])


@dataclass(frozen=True)
class TopKSectionResult:
    topk: tk.TopKResult
    auto: bool


def choose_layers(ctx: BuildContext, layers: Any) -> List[str]:
    if layers == "auto":
        return stage_layers(ctx.model, ctx.example())[-AUTO_LAYERS:]
    return list(layers)


@register_section("topk")
class TopKSection(Section):
    title = "Top-k dataset patches"
    partial = "sections/topk.html.j2"
    order = 70
    requires = ("dataset",)
    options = {
        "layers": layers(spatial=True, doc="layers whose channels are shown (auto: the last two resolution "
                                           "stages)"),
        "channels": OneOf(Int(min=1, max=512), ListOf(Int(min=0), min_len=1), default=16,
                          expected="a count or a list of channel indices",
                          doc="a count (the channels with the largest mean top-k activation) or a list of "
                              "indices"),
        "k": Int(min=1, max=64, default=9, doc="patches per channel"),
        "projection": Choice(["none", "guided", "deconv"], default="none",
                             doc="guided-backprop or deconvnet projection of each patch: what in it drives "
                                 "the unit"),
        "layout": layout(),
    }

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> TopKSectionResult:
        data = ctx.spec["dataset"]
        auto = options["layers"] == "auto"
        names = choose_layers(ctx, options["layers"])
        layouts = layer_layouts(ctx.model, ctx.example(), names, AUTO if auto else options["layout"],
                                ctx.output_key)
        given = _GIVEN.get(ctx.model)
        if given is not None:     # build --topk: the sharded pass's state, checked against these options
            result = tk.finish_topk(ctx.model, dataset_for(ctx), given, names, options["channels"], options["k"],
                                    ctx.device, ctx.input_size, options["projection"], data["batch_size"])
            return TopKSectionResult(result, auto)
        result = tk.topk_patches(
            ctx.model, dataset_for(ctx), names, options["channels"],
            options["k"], data["batch_size"], data["workers"], ctx.device,
            ctx.input_size, options["projection"], progress=ctx.progress, layouts=layouts)
        return TopKSectionResult(result, auto)

    def view(self, result: TopKSectionResult, ctx: BuildContext) -> Dict[str, Any]:
        view = render_topk(result.topk)
        view.update(auto=result.auto)
        return view

    def summary(self, result: TopKSectionResult) -> Dict[str, Any]:
        r = result.topk
        return {
            "layers": [la.layer for la in r.layers], "layers_auto": result.auto,
            "layouts": {la.layer: la.layout for la in r.layers},
            "channel_rule": r.channel_rule, "k": r.k, "images": r.n_images, "projection": r.projection,
            "per_layer": {la.layer: {
                "channels": la.channels.tolist(), "receptive_field": [int(v) for v in la.rf["size"]],
                **({"receptive_field_note": la.rf_note} if la.rf_note else {}),
                "dead_channels": int((la.channel_max <= 0).sum()), "channels_total": int(la.shape[0]),
                "top_value": [_finite(v) for v in la.values[:, 0]] if la.values.size else [],
                "top_image": [row[0] for row in la.sources] if la.values.size else [],
            } for la in r.layers},
        }

    def findings(self, result: TopKSectionResult, ctx: BuildContext) -> List[Finding]:
        """Channels that never fire on any dataset image: stronger evidence than the probes give."""
        r = result.topk
        limit = ctx.threshold("dead_channel_fraction")
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

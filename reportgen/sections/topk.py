"""Top-k dataset patches: what each chosen channel responds to across the dataset."""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from reportgen.analyses import topk as tk
from reportgen.analyses.activations import stage_layers
from reportgen.analyses.dataset_pass import Taps
from reportgen.engine import budget as bud
from reportgen.model.layers import layer_layouts
from reportgen.options import AUTO, Choice, Int, ListOf, OneOf, layers, layout
from reportgen.render.topk import render_topk
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.dataset_pass import dataset_for, pass_cost, shared

AUTO_LAYERS = 2   # auto = the last two resolution stages: the most semantic units with a usable RF
MIN_PATCH = 32    # a page share never shrinks stored patches below this side
_GIVEN: "weakref.WeakKeyDictionary[Any, tk.StreamState]" = weakref.WeakKeyDictionary()   # build --topk, per model


def use_topk_pass(model: Any, state: tk.StreamState) -> None:
    """This build's top-k section finishes ``state`` (a checked saved pass) instead of streaming the dataset."""
    _GIVEN[model] = state


def _finite(v: float) -> Optional[float]:
    """report.json allows no NaN/inf (a broken model's NaN maps rank as -inf): null instead."""
    return float(v) if math.isfinite(float(v)) else None


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

    def dataset_taps(self, ctx: BuildContext, options: Dict[str, Any]) -> Optional[Taps]:
        """Every channel's running top-k of the chosen layers (none with ``build --topk``: the saved state)."""
        return None if _GIVEN.get(ctx.model) is not None else self._taps(ctx, options)

    def _taps(self, ctx: BuildContext, options: Dict[str, Any]) -> Taps:
        """The chosen layers, read through their layouts, and k (once per build: the gather, the page
        weight and the analysis all ask)."""
        def make() -> Taps:
            auto = options["layers"] == "auto"
            names = choose_layers(ctx, options["layers"])
            layouts = layer_layouts(ctx.model, ctx.example(), names, AUTO if auto else options["layout"],
                                    ctx.output_key)
            return Taps(topk_layers=tuple(names), topk_k=int(options["k"]), topk_layouts=layouts)
        key = ("topk-taps", repr(options["layers"]), options["layout"], int(options["k"]))
        return ctx.remember(key, make)

    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        """The dataset pass (when this section owns it), then one pass per winning patch projected."""
        projected = (bud.Cost(backward=self._tiles(ctx, options) / 2) if options["projection"] != "none"
                     else bud.Cost())
        return bud.Needs(fixed=pass_cost(ctx, self.name) + projected)

    def _tiles(self, ctx: BuildContext, options: Dict[str, Any]) -> int:
        """Patches on the page (projections count twice: a second grid of the same size)."""
        k = min(int(options["k"]), len(ctx.dataset or ()))
        channels = len(options["channels"]) if isinstance(options["channels"], list) else int(options["channels"])
        given = options["layers"]
        layers = AUTO_LAYERS if given == "auto" else len(given) if isinstance(given, list) else 1
        return layers * channels * k * (2 if options["projection"] != "none" else 1)

    def page_bytes(self, ctx: BuildContext, options: Dict[str, Any]) -> float:
        """Every patch at its stored side: the layers' receptive fields, capped at MAX_PATCH.

        The fields are traced here as the section will trace them; the cap alone
        (128 px) priced the demo's 20-px patches at 4.7 MB, and the page shares
        it set off shrank every other section's pictures for bytes never written.
        """
        taps = self._taps(ctx, options)
        per_layer = self._tiles(ctx, options) / max(1, len(taps.topk_layers))
        total = 0.0
        for name in taps.topk_layers:
            # the map's grid only places an untraceable field's patch, never sizes it: (1, 1, 1) will do
            rf = tk.unit_field(ctx.model, name, ctx.input_size, (taps.topk_layouts or {}).get(name), (1, 1, 1))
            ph, pw = tk.stored_side(rf["size"])
            total += per_layer * ph * pw
        return total * bud.WEBP_BYTES_PER_PIXEL

    def patch_cap(self, ctx: BuildContext, options: Dict[str, Any]) -> int:
        """The stored patch side that fits the section's page share (the cap when the page fits)."""
        share = ctx.page_share(self.name)
        if share is None:
            return tk.MAX_PATCH
        side = int(math.sqrt(share / max(1, self._tiles(ctx, options)) / bud.WEBP_BYTES_PER_PIXEL))
        return max(MIN_PATCH, min(tk.MAX_PATCH, side))

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> TopKSectionResult:
        taps = self._taps(ctx, options)
        state = _GIVEN.get(ctx.model)     # build --topk: the sharded pass's state, checked against these options
        if state is None:
            run = shared(ctx, taps)
            if run.topk_error is not None:
                raise run.topk_error
            state = run.topk
        result = tk.finish_topk(ctx.model, dataset_for(ctx), state, list(taps.topk_layers),
                                options["channels"], options["k"], ctx.device, ctx.input_size,
                                options["projection"], ctx.dataset_batch(), self.patch_cap(ctx, options))
        return TopKSectionResult(result, options["layers"] == "auto")

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

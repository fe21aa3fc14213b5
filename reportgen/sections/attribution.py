"""Attribution sections: class activation maps, gradient attributions, occlusion.

The three share one pipeline (``AttributionSection``): each method's maps for
every probe, scored by ``reportgen.analyses.attribution_eval`` - deletion/insertion
AUC against a random-order reference, the share of attribution on the image
border and, for the CAM and gradient families, Adebayo et al.'s
model-randomization check - and laid out as one strip per probe. A subclass
says only which methods it runs and how one method's maps are computed
(``compute``), the way each CAM method overrides one method of ``BaseCAM``.

A method that cannot apply to the model (``cam`` without a GAP + linear
head, guided backprop without ReLUs) raises ``NotApplicable`` and becomes an
inline note in its section; any other failure is an error finding. The other
methods still render. Pictures come from ``reportgen.render.attribution``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from reportgen.analyses import attribution_eval as ae
from reportgen.analyses import explain as explain_registry
from reportgen.analyses import faithfulness as fa
from reportgen.analyses.attribution_eval import AttributionResult, MethodResult
from reportgen.analyses.gradients import integrated_gradients_with_delta
from reportgen.engine import budget as bud
from reportgen.errors import NotApplicable
from reportgen.model.classes import resolve_targets
from reportgen.model.layers import last_spatial_call, layer_layouts
from reportgen.options import (
    AUTO,
    Choice,
    Float,
    Int,
    ListOf,
    OneOf,
    Option,
    OptionError,
    auto_or,
    class_targets,
    int_or_pair,
    layer,
    layout,
)
from reportgen.paths import public_text
from reportgen.render import attribution as ra
from reportgen.render.activations import LAYOUT_WORDS
from reportgen.render.heatmap import DEFAULT_CMAP, SIGNED_CMAP, attribution_map, hex_colour, palette
from reportgen.sections.base import BuildContext, Finding, Section, register_section

# The methods each section draws, from the one registry (``reportgen.explain``'s)
CAM_METHODS = explain_registry.methods("cam")
GRADIENT_METHODS = explain_registry.methods("gradients")


class MethodChoice(Choice):
    """A method from the registry's ``choices``; a registered method another section draws
    is refused with that section's name."""

    def check(self, value: Any, path: str) -> Any:
        try:
            return super().check(value, path)
        except OptionError as e:
            other = explain_registry.drawn_by(value)
            if other is None:
                raise
            raise OptionError(f"{e.message}; {value!r} is drawn by sections.{other}", path) from None


def _shared_options(sanity: bool) -> Dict[str, Option]:
    """Options every attribution section has: extra classes and scoring."""
    out: Dict[str, Option] = {
        "top_classes": Int(min=1, max=10, default=1,
                           doc="maps for the top-k classes too (shown on demand, collapsed)"),
        "faithfulness_steps": OneOf(Choice([AUTO]), Int(min=1), default=AUTO,
                                    expected="'auto' or a number of deletion/insertion steps",
                                    doc="deletion/insertion steps (auto: up to 32, fewer when the build's time "
                                        "budget needs it)"),
        "scored_probes": OneOf(Choice([AUTO]), Int(min=1), default=AUTO, expected="'auto' or a number of probes",
                               doc="probes the maps are scored on, the first ones: deletion/insertion and the "
                                   "weight-randomization check (auto: all; halved down to one once the "
                                   "deletion/insertion steps are at their fewest and the build's time budget "
                                   "still needs it)"),
    }
    if sanity:
        out["sanity_threshold"] = OneOf(
            Choice([None]), Float(min=-1, max=1), default=None,
            expected="null (use findings.sanity_spearman) or a number in [-1, 1]",
            doc="Spearman above which a method fails the randomization sanity check; null uses "
                "findings.sanity_spearman")
    return out


GRADIENT_BATCH = 32            # path points / noisy copies per forward-backward pass


def scoring_knob(options: Dict[str, Any], n_probes: int, n_maps: int, label: str,
                 sanity_per_probe: Optional[bud.Cost] = None) -> bud.Knob:
    """Deletion/insertion steps, then (at the fewest steps) the probes scored, halved down to one.

    Scoring is most of a big model's attribution cost (ResNet-50 on 2 cores:
    deletion/insertion was 34 s of the CAM, gradient and occlusion sections'
    52 s at four steps on six probes; the randomization check repeats every
    method), and the first probes' scores still say whether a method beats the
    random order and whether its maps survive the weights' randomization.
    ``sanity_per_probe``: the randomization check's passes per probe scored.
    """
    steps, probes = options["faithfulness_steps"], options["scored_probes"]
    step_values = list(bud.FAITHFULNESS_STEPS) if steps == AUTO else [int(steps)]
    counts = bud.halvings(n_probes) if probes == AUTO else [min(int(probes), n_probes)]
    values = ([{"faithfulness_steps": v, "scored_probes": counts[0]} for v in step_values]
              + [{"faithfulness_steps": step_values[-1], "scored_probes": c} for c in counts[1:]])
    auto = tuple(o for o in ("faithfulness_steps", "scored_probes") if options[o] == AUTO)
    return bud.Knob("scoring", tuple(values),
                    tuple(bud.faithfulness_cost(v["scored_probes"], n_maps, v["faithfulness_steps"])
                          + (sanity_per_probe or bud.Cost()) * v["scored_probes"] for v in values),
                    auto=auto, label=label)


class AttributionSection(Section):
    """Maps per method and probe, scored; subclasses define ``methods`` and ``compute``."""

    requires = ("probes",)
    run_sanity = False
    extra_tile_count = 0     # tiles a strip shows besides the image and one map per method

    # ----------------------------------------------------------- subclass API
    def method_names(self, options: Dict[str, Any]) -> List[str]:
        raise NotImplementedError

    def plan(self, ctx: BuildContext, options: Dict[str, Any]) -> Dict[str, Any]:
        """Choices shared by every method (the CAM layer); written into the result."""
        return {}

    def compute(self, name: str, model: nn.Module, images: torch.Tensor, targets: Sequence[int],
                ctx: BuildContext, options: Dict[str, Any], plan: Dict[str, Any]) -> ae.Maps:
        """(maps (N, H, W) to draw and score, raw attributions or None, extras)."""
        raise NotImplementedError

    def method_cost(self, name: str, ctx: BuildContext, options: Dict[str, Any]) -> bud.Cost:
        """Image passes of one method over the probes, for a method without a knob."""
        return bud.Cost(backward=len(ctx.probes))

    def knobs(self, ctx: BuildContext, options: Dict[str, Any], runs: int) -> List[bud.Knob]:
        """The methods' settings left on auto (or written), each method run ``runs`` times."""
        return []

    def knobbed(self, options: Dict[str, Any]) -> Tuple[str, ...]:
        """Methods whose cost ``knobs`` prices (the rest are priced by ``method_cost``)."""
        return ()

    # ----------------------------------------------------------- budget
    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        """Each method once (plus once per extra class and once for the sanity check), and scoring."""
        methods = self.method_names(options)
        k = int(options["top_classes"])
        runs = 1 + (k if k > 1 else 0)
        n = max(1, len(ctx.probes))
        fixed = bud.Cost(forward=len(ctx.probes))          # the clean probabilities
        once = bud.Cost()                                  # every method once over the probes
        for name in methods:
            if name not in self.knobbed(options):
                cost = self.method_cost(name, ctx, options)
                fixed, once = fixed + cost * runs, once + cost
        knobs = tuple(self.knobs(ctx, options, runs))
        # the randomization check runs every method again on the probes scored (knobbed methods at
        # their fewest steps: by the time the probes scored give way, they have)
        for knob in knobs:
            once = once + knob.costs[-1] * (1 / runs)
        scoring = scoring_knob(options, len(ctx.probes), len(methods) + 1,   # + the random reference
                               f"{self.name} deletion/insertion", once * (1 / n) if self.run_sanity else bud.Cost())
        return bud.Needs(fixed=fixed, knobs=knobs + (scoring,))

    def best(self, ctx: BuildContext, options: Dict[str, Any]) -> Dict[str, Any]:
        """What each setting left on auto takes without a build plan (the pre-budget defaults)."""
        # steps: the analysis's own rule, from the model's MACs; probes: every one
        return {"faithfulness_steps": AUTO, "scored_probes": AUTO}

    def settings(self, ctx: BuildContext, options: Dict[str, Any]) -> Dict[str, Any]:
        """``options`` with every setting left on auto replaced by the build's choice."""
        best = self.best(ctx, options)
        return dict(options, **{k: ctx.planned(self.name, k, options[k], v) for k, v in best.items()})

    # ----------------------------------------------------------- analysis
    def probe_targets(self, ctx: BuildContext, options: Dict[str, Any]) -> List[Optional[int]]:
        """The class each probe's maps explain (None: the predicted one): the spec's probes.targets."""
        return [p.target for p in ctx.probes]

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> AttributionResult:
        steps_auto = options["faithfulness_steps"] == AUTO
        options = self.settings(ctx, options)
        try:
            plan, refused = self.plan(ctx, options), None
        except NotApplicable as e:    # e.g. no hookable layer: every method says why
            plan, refused = {}, e
        methods = {n: self._method(n, ctx, options, plan, refused) for n in self.method_names(options)}
        threshold = None
        if self.run_sanity:  # the section's own value wins over findings:
            own = options["sanity_threshold"]
            threshold = float(own) if own is not None else ctx.threshold("sanity_spearman")
        result = ae.evaluate(
            ctx.model, ctx.probe_batch(), methods, targets=self.probe_targets(ctx, options),
            steps=options["faithfulness_steps"], border_frac=ctx.threshold("border_band"),
            top_classes=options["top_classes"], sanity_threshold=threshold, seed=ctx.seed,
            output_key=ctx.output_key, section=self.name, probe_names=[p.name for p in ctx.probes],
            layer=plan.get("layer"), layer_auto=bool(plan.get("layer_auto", False)),
            extras={k: v for k, v in plan.items() if k not in ("layer", "layer_auto")},
            scored=None if options["scored_probes"] == AUTO else int(options["scored_probes"]))
        result = replace(result, steps_auto=steps_auto)    # a planned number is still an automatic choice
        return public_errors(result, ctx.spec.base_dir)

    def _method(self, name: str, ctx: BuildContext, options: Dict[str, Any], plan: Dict[str, Any],
                refused: Optional[NotApplicable]) -> ae.Method:
        """``compute`` for one method as the analysis calls it; a refused plan refuses every method."""
        def method(model: nn.Module, images: torch.Tensor, targets: List[int]) -> ae.Maps:
            if refused is not None:
                raise refused
            return self.compute(name, model, images, targets, ctx, options, plan)
        return method

    # ----------------------------------------------------------- report.json
    def summary(self, result: AttributionResult) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if result.layer is not None:
            out["layer"], out["layer_auto"] = result.layer, result.layer_auto
            if result.extras.get("layout"):
                out["layouts"] = {result.layer: result.extras["layout"]}
        out["probes"] = result.probe_names
        out["targets"] = result.targets.tolist()
        out["target_source"] = ["spec" if g else "predicted" for g in result.target_from_spec]
        out["faithfulness"] = {
            "metric": "deletion/insertion AUC of p(target) (Petsiuk et al. 2018)",
            "steps": result.steps, "steps_auto": result.steps_auto,
            "probes": result.probe_names[:len(result.random_deletion_auc)],
            "deletion_baseline": result.deletion_baseline, "insertion_baseline": result.insertion_baseline,
            "random_baseline": {"deletion_auc": _r(result.random_deletion_auc),
                                "insertion_auc": _r(result.random_insertion_auc)}}
        out["border"] = {"band_fraction": result.border_frac, "area_share": round(result.border_area_share, 4)}
        if self.run_sanity:
            out["sanity"] = {"threshold": result.sanity_threshold, "randomized": result.sanity_randomized,
                             "probes": result.probe_names[:len(result.random_deletion_auc)],
                             "measure": "mean Spearman rank correlation of |maps|, trained vs randomized"}
            if result.sanity_error:
                out["sanity"]["error"] = result.sanity_error
        methods: Dict[str, Any] = {}
        for name, m in result.methods.items():
            if not m.ok:
                methods[name] = {"error": m.error}
                continue
            entry = {"deletion_auc": _r(m.deletion_auc), "insertion_auc": _r(m.insertion_auc),
                     "mean_deletion_auc": round(float(m.deletion_auc.mean()), 6),
                     "mean_insertion_auc": round(float(m.insertion_auc.mean()), 6),
                     "border_share": _r(m.border_share)}
            if m.sanity is not None:
                entry["sanity"] = m.sanity.summary()
            elif m.sanity_error:
                entry["sanity"] = {"error": m.sanity_error}
            entry.update(self.method_summary(m))
            methods[name] = entry
        out["methods"] = methods
        if result.topk_classes is not None:
            out["top_classes"] = result.topk_classes.tolist()
        return out

    def method_summary(self, m: MethodResult) -> Dict[str, Any]:
        return {}

    # ----------------------------------------------------------- findings
    def findings(self, result: AttributionResult, ctx: BuildContext) -> List[Finding]:
        out: List[Finding] = []
        h, w = result.image_size
        ratio, min_share = ctx.threshold("border_ratio"), ctx.threshold("border_share")
        for name, m in result.methods.items():
            title = ra.label(name)
            if not m.ok:
                out.append(Finding(
                    id=f"method-{'failed' if m.bug else 'unavailable'}-{name}",
                    severity="error" if m.bug else "info", section=self.name, layer=result.layer,
                    title=f"{title} could not be computed", evidence=m.error or ""))
                continue
            if m.sanity is not None and not m.sanity.passed:
                out.append(Finding(
                    id=f"sanity-{name}", severity="warning", section=self.name, layer=result.layer,
                    title=f"{title} fails the model-randomization sanity check",
                    evidence=f"its maps for a copy of the model with all weights re-initialized still "
                             f"rank-correlate with the trained model's (mean Spearman "
                             f"{m.sanity.mean_spearman:.2f} > {m.sanity.threshold:g} over "
                             f"{len(m.sanity.spearman)} probe(s)): they show the image's structure more "
                             "than what the model learned (Adebayo et al. 2018)"))
            if fa.border_flag(m.border_share, h, w, result.border_frac, ratio, min_share):
                share = float(np.mean(m.border_share))
                out.append(Finding(
                    id=f"border-{name}", severity="warning", section=self.name, layer=result.layer,
                    title=f"{title} attribution concentrates on the image border",
                    evidence=f"{share:.0%} of the attribution lies in the outer {result.border_frac:.0%} band "
                             f"(which is {result.border_area_share:.0%} of the area) on average over "
                             f"{len(m.border_share)} probe(s): padding artefacts or a shortcut outside "
                             "the object"))
        return out

    # ----------------------------------------------------------- view
    def page_bytes(self, ctx: BuildContext, options: Dict[str, Any]) -> float:
        """Every probe's strip (and one per extra class) at full size, WebP."""
        _, h, w = ctx.input_size
        side = max(h, w) * ra.tile_factor(h, w)
        tiles = 1 + len(self.method_names(options)) + self.extra_tile_count
        k = int(options["top_classes"])
        strips = len(ctx.probes) * (1 + k if k > 1 else 1)
        return strips * tiles * side * side * bud.WEBP_BYTES_PER_PIXEL

    def _tile_side(self, result: AttributionResult, ok: List[MethodResult], ctx: BuildContext,
                   scale: Dict[str, Any]) -> int:
        """0 while the strips fit the section's share of the page, else the tile side that does.

        Measured on the first probe's strip; every strip has the same size.
        """
        share = ctx.page_share(self.name)
        if share is None or not ok or not ctx.probes:
            return 0
        probe = ctx.probes[0]
        first = ra.strip(probe.display, [self.display_map(m, 0, scale) for m in ok], scale["vmin"],
                         scale["vmax"], scale["cmap"], extra=self.extra_tiles(result, 0, probe.display, ctx))
        rows = 1 + (0 if result.topk_classes is None else int(result.topk_classes.shape[1]))
        total = len(ctx.probes) * rows * len(first["image"])
        h, w = probe.display.shape[:2]
        if total <= share or ra.tile_factor(h, w) > 1:
            return 0
        side = int(max(h, w) * (share / total) ** 0.5) // 8 * 8
        return max(ra.MIN_TILE, side)

    def view(self, result: AttributionResult, ctx: BuildContext) -> Dict[str, Any]:
        ok = [m for m in result.methods.values() if m.ok]
        scale = self.display_scale(result, ok)
        side = self._tile_side(result, ok, ctx, scale)
        probes = []
        for i, probe in enumerate(ctx.probes):
            t = int(result.targets[i])
            entry = {"name": probe.name, "target": ctx.classes[t], "target_index": t,
                     "target_source": "spec" if result.target_from_spec[i] else "predicted",
                     "p_target": float(result.probs[i, t]),
                     "labels": ["image"] + [ra.label(m.name) for m in ok] + self.extra_labels(result, i),
                     "strip": ra.strip(probe.display, [self.display_map(m, i, scale) for m in ok],
                                       scale["vmin"], scale["vmax"], scale["cmap"],
                                       extra=self.extra_tiles(result, i, probe.display, ctx), max_side=side),
                     "legend": self.legend(result, i, ctx), "topk": []}
            if result.topk_classes is not None:
                entry["topk"] = self._topk_view(result, ok, i, probe, ctx, scale, side)
            probes.append(entry)
        view = {"section": self.name, "probes": probes,
                "errors": [{"label": ra.label(m.name), "name": m.name, "error": m.error, "bug": m.bug}
                           for m in result.methods.values() if not m.ok],
                "colorbar": ra.colorbar_view(scale["vmin"], scale["vmax"], scale["cmap"], scale["low"],
                                             scale["high"]),
                "scale_note": scale["note"], "layer": result.layer, "layer_auto": result.layer_auto,
                "layout": LAYOUT_WORDS.get(result.extras.get("layout")),
                "faithfulness": self._faithfulness_view(result, ok),
                "sanity": self._sanity_view(result, ok) if self.run_sanity else None,
                "border": [{"label": ra.label(m.name), "share": float(np.mean(m.border_share))} for m in ok],
                "border_frac": result.border_frac, "border_area_share": result.border_area_share,
                "top_classes": 0 if result.topk_classes is None else int(result.topk_classes.shape[1]),
                "n_methods": len(ok),
                "page_note": (f"Pictures are stored at most {side} px a side so the page stays under its "
                              f"{ctx.spec['output']['page_budget_mb']:g} MB budget (output.page_budget_mb).")
                if side else ""}
        view.update(self.extra_view(result, ctx))
        return view

    def display_scale(self, result: AttributionResult, ok: List[MethodResult]) -> Dict[str, Any]:
        """vmin/vmax/cmap shared by every map of the section, and how to read them."""
        return {"vmin": 0.0, "vmax": 1.0, "cmap": DEFAULT_CMAP, "low": "low", "high": "high", "note": ""}

    def display_map(self, m: MethodResult, i: int, scale: Dict[str, Any], rank: Optional[int] = None) -> np.ndarray:
        return m.maps[i] if rank is None else m.topk[i, rank]

    def extra_tiles(self, result: AttributionResult, i: int, image: np.ndarray, ctx: BuildContext) -> List:
        return []

    def extra_labels(self, result: AttributionResult, i: int) -> List[str]:
        return []

    def legend(self, result: AttributionResult, i: int, ctx: BuildContext) -> List[Dict[str, Any]]:
        return []

    def extra_view(self, result: AttributionResult, ctx: BuildContext) -> Dict[str, Any]:
        return {}

    def _topk_view(self, result: AttributionResult, ok: List[MethodResult], i: int, probe,
                   ctx: BuildContext, scale: Dict[str, Any], side: int = 0) -> List[Dict[str, Any]]:
        shown = [m for m in ok if m.topk is not None]
        if not shown:
            return []
        rows = []
        for r, c in enumerate(result.topk_classes[i]):
            rows.append({"rank": r + 1, "cls": ctx.classes[int(c)], "p": float(result.probs[i, int(c)]),
                         "labels": ["image"] + [ra.label(m.name) for m in shown],
                         "strip": ra.strip(probe.display, [self.display_map(m, i, scale, r) for m in shown],
                                           scale["vmin"], scale["vmax"], scale["cmap"], max_side=side)})
        return rows

    def _faithfulness_view(self, result: AttributionResult, ok: List[MethodResult]) -> Dict[str, Any]:
        rows = [{"label": ra.label(m.name), "deletion": m.deletion_auc.tolist(),
                 "insertion": m.insertion_auc.tolist(), "mean_deletion": float(m.deletion_auc.mean()),
                 "mean_insertion": float(m.insertion_auc.mean()), "reference": False,
                 "beats_random": bool(m.deletion_auc.mean() < result.random_deletion_auc.mean()
                                      and m.insertion_auc.mean() > result.random_insertion_auc.mean())}
                for m in ok]
        rows.append({"label": "random order (reference)", "deletion": result.random_deletion_auc.tolist(),
                     "insertion": result.random_insertion_auc.tolist(),
                     "mean_deletion": float(result.random_deletion_auc.mean()),
                     "mean_insertion": float(result.random_insertion_auc.mean()), "reference": True,
                     "beats_random": False})
        scored = len(result.random_deletion_auc)
        return {"rows": rows, "probes": result.probe_names[:scored], "scored": scored,
                "probes_total": len(result.probe_names), "steps": result.steps,
                "steps_auto": result.steps_auto, "deletion_baseline": result.deletion_baseline,
                "insertion_baseline": result.insertion_baseline}

    def _sanity_view(self, result: AttributionResult, ok: List[MethodResult]) -> Dict[str, Any]:
        rows = []
        for m in ok:
            if m.sanity is None:
                rows.append({"label": ra.label(m.name), "error": m.sanity_error or "not computed"})
                continue
            rows.append({"label": ra.label(m.name), "error": None, "spearman": m.sanity.mean_spearman,
                         "pearson": float(m.sanity.pearson.mean()), "ssim": float(m.sanity.ssim.mean()),
                         "passed": m.sanity.passed})
        return {"rows": rows, "threshold": result.sanity_threshold, "randomized": result.sanity_randomized,
                "error": result.sanity_error, "scored": len(result.random_deletion_auc),
                "probes_total": len(result.probe_names)}


def _r(a: Optional[np.ndarray], digits: int = 6) -> Optional[List[float]]:
    return None if a is None else [round(float(v), digits) for v in np.asarray(a).reshape(-1)]


# --------------------------------------------------------------------------- CAM family

def cam_plan(ctx: BuildContext, layer_option: Any, layout_option: Any) -> Dict[str, Any]:
    """A CAM method's layer (``auto``: the last spatial layer the score depends on) and its layout."""
    if layer_option == AUTO:
        name, found = last_spatial_call(ctx.model, ctx.example(), ctx.output_key)
        return {"layer": name, "layer_auto": True, "layout": found.kind}
    plan = {"layer": layer_option, "layer_auto": False}
    if isinstance(ctx.model, torch.jit.ScriptModule):
        return plan      # no hooks to read it with: each method says so itself
    read = layer_layouts(ctx.model, ctx.example(), [layer_option], layout_option, ctx.output_key, strict=False)
    if layer_option in read or layout_option != AUTO:   # a stated layout that does not fit fails in the method
        plan["layout"] = read[layer_option].kind if layer_option in read else layout_option
    return plan


@register_section("cam")
class CamSection(AttributionSection):
    title = "Class activation maps"
    partial = "sections/cam.html.j2"
    order = 50
    run_sanity = True
    options = {
        "methods": ListOf(MethodChoice(CAM_METHODS), min_len=1, coerce=True, default=["gradcam", "gradcampp"],
                          doc="CAM-family methods, each drawn over every probe"),
        "layer": layer(spatial=True, doc="layer whose feature maps are weighted (auto: the last layer with "
                                         "a spatial output the class score depends on)"),
        "layout": layout(),
        **_shared_options(sanity=True),
    }

    def method_names(self, options: Dict[str, Any]) -> List[str]:
        return list(options["methods"])

    def plan(self, ctx: BuildContext, options: Dict[str, Any]) -> Dict[str, Any]:
        """The layer and how its map is laid out, decided once for every method (and the sanity check)."""
        return cam_plan(ctx, options["layer"], options["layout"])

    def compute(self, name, model, images, targets, ctx, options, plan):
        from reportgen.analyses.explain import explain
        kw = {"layout": plan["layout"]} if "layout" in plan else {}
        maps = explain(model, images, name, target=list(targets), layer=plan["layer"], output=ctx.output_key,
                       **kw)
        return maps, None, {}

    def method_cost(self, name, ctx, options):
        if name == "eigencam":
            return bud.Cost(forward=len(ctx.probes))
        if name != "scorecam":
            return super().method_cost(name, ctx, options)
        from reportgen.model.layers import output_shapes
        # one forward pass per channel of the layer, per probe
        shape = output_shapes(ctx.model, ctx.example()).get(self.plan(ctx, options)["layer"], (1, 1))
        return bud.Cost(forward=len(ctx.probes) * (1 + int(shape[1])))

    def display_scale(self, result, ok):
        return {"vmin": 0.0, "vmax": 1.0, "cmap": DEFAULT_CMAP, "low": "0 (image's minimum)",
                "high": "1 (image's maximum)",
                "note": "CAM maps are min–max scaled per image, so colours show where the evidence is "
                        "relative to that image's own peak, not how strong it is."}


# --------------------------------------------------------------------------- gradient methods

def _gradient_params(name: str, options: Dict[str, Any], seed: int, batch: int = GRADIENT_BATCH) -> Dict[str, Any]:
    if name == "integrated_gradients":
        return {"steps": int(options["steps"]), "batch_size": batch}
    if name == "smoothgrad":
        return {"samples": int(options["samples"]), "noise_level": float(options["noise"]),
                "seed": int(seed), "batch_size": batch}
    return {}


def gradient_batch(ctx: BuildContext) -> int:
    """Images per forward+backward pass: GRADIENT_BATCH, fewer when the activations a backward
    pass keeps (about every layer's output) would not fit the memory budget, as at 512 px."""
    from reportgen.analyses.occlusion import default_memory_budget
    from reportgen.engine.memory import nbytes
    from reportgen.model.hooks import record_calls

    try:
        per_image = sum(nbytes(c.output) for c in record_calls(ctx.model, ctx.example()).calls if c.leaf)
    except Exception:  # noqa: BLE001 - no hooks (TorchScript): the fixed batch
        return GRADIENT_BATCH
    return int(max(1, min(GRADIENT_BATCH, default_memory_budget(ctx.device) // max(per_image, 1))))


@register_section("gradients")
class GradientsSection(AttributionSection):
    title = "Gradient attributions"
    partial = "sections/gradients.html.j2"
    order = 55
    run_sanity = True
    options = {
        "methods": ListOf(MethodChoice(GRADIENT_METHODS), min_len=1, coerce=True,
                          default=["saliency", "guided_backprop", "integrated_gradients"],
                          doc="gradient methods, each drawn over every probe"),
        "steps": auto_or(Int(min=2), expected="'auto' or a number of steps >= 2",
                         doc=f"integrated-gradients path steps (auto: {bud.IG_STEPS[0]}, fewer when the build's "
                             "time budget needs it)"),
        "samples": auto_or(Int(min=1), expected="'auto' or a number of samples >= 1",
                           doc=f"SmoothGrad noisy copies (auto: {bud.SMOOTHGRAD_SAMPLES[0]}, fewer when the "
                               "build's time budget needs it)"),
        "noise": Float(min=0, default=0.15, doc="SmoothGrad noise level, a share of the input's range"),
        **_shared_options(sanity=True),
    }

    def method_names(self, options: Dict[str, Any]) -> List[str]:
        return list(options["methods"])

    def plan(self, ctx, options):
        if not {"integrated_gradients", "smoothgrad"} & set(options["methods"]):
            return {}
        return {"batch_size": gradient_batch(ctx)}

    def best(self, ctx, options):
        return dict(super().best(ctx, options), steps=bud.IG_STEPS[0], samples=bud.SMOOTHGRAD_SAMPLES[0])

    def knobbed(self, options):
        return ("integrated_gradients", "smoothgrad")

    def knobs(self, ctx, options, runs):
        n, methods, out = len(ctx.probes), options["methods"], []
        if "integrated_gradients" in methods:
            out.append(bud.knob("steps", "steps", options["steps"], bud.IG_STEPS,
                                lambda v: bud.Cost(backward=n * int(v) * runs), label="integrated gradients"))
        if "smoothgrad" in methods:
            out.append(bud.knob("samples", "samples", options["samples"], bud.SMOOTHGRAD_SAMPLES,
                                lambda v: bud.Cost(backward=n * int(v) * runs), label="SmoothGrad"))
        return out

    def compute(self, name, model, images, targets, ctx, options, plan):
        params = _gradient_params(name, options, ctx.seed, plan.get("batch_size", GRADIENT_BATCH))
        extras: Dict[str, Any] = {}
        if name == "integrated_gradients":
            # called directly (not via explain) for the completeness delta
            with torch.inference_mode(False), torch.enable_grad():
                raw, delta = integrated_gradients_with_delta(model, images, list(targets),
                                                             output_key=ctx.output_key, **params)
            gap = raw.reshape(raw.shape[0], -1).sum(axis=1) - delta      # F(x) - F(baseline)
            extras = {"delta": delta.astype(np.float64), "gap": gap.astype(np.float64)}
        else:
            from reportgen.analyses.explain import explain
            raw = explain(model, images, name, target=list(targets), output=ctx.output_key, **params)
        maps = np.abs(raw).sum(axis=1).astype(np.float32)
        return maps, raw.astype(np.float32), extras

    def display_map(self, m, i, scale, rank=None):
        # per-method, per-image percentile normalization (Captum's visualizer): [0, 1]
        return attribution_map(m.maps[i][None] if rank is None else m.topk[i, rank][None], percentile=99.0)

    def display_scale(self, result, ok):
        return {"vmin": 0.0, "vmax": 1.0, "cmap": DEFAULT_CMAP, "low": "0", "high": "≥ 99th percentile",
                "note": "Each map is the sum over colour channels of |attribution|, divided by its own 99th "
                        "percentile and clipped to [0, 1] (per method and image, as Captum's visualizer), "
                        "so colours compare where each method looks, not raw magnitudes across methods."}

    def method_summary(self, m: MethodResult) -> Dict[str, Any]:
        if "delta" not in m.extras:
            return {}
        delta, gap = m.extras["delta"], m.extras["gap"]
        rel = np.divide(np.abs(delta), np.abs(gap), out=np.full_like(delta, np.nan), where=np.abs(gap) > 0)
        return {"completeness_delta": _r(delta), "target_score_gap": _r(gap),
                "relative_delta": [None if not np.isfinite(v) else round(float(v), 6) for v in rel]}

    def extra_view(self, result, ctx):
        ig = result.methods.get("integrated_gradients")
        rows = []
        if ig is not None and ig.ok and "delta" in ig.extras:
            for name, d, g in zip(result.probe_names, ig.extras["delta"], ig.extras["gap"]):
                rows.append({"probe": name, "delta": float(d), "gap": float(g),
                             "relative": float(abs(d) / abs(g)) if g != 0 else None})
        return {"ig_rows": rows}


# --------------------------------------------------------------------------- occlusion

def _occlusion_baseline(ctx: BuildContext, baseline: Any) -> Any:
    """'grey' means mid-grey in *pixel* units: (0.5 - mean) / std per channel in input space."""
    if isinstance(baseline, str) and baseline in ("grey", "gray"):
        pre = ctx.spec["preprocess"]
        mean, std = list(pre["mean"]), list(pre["std"])
        c = int(ctx.input_size[0])
        if len(mean) == c and len(std) == c:
            return [(0.5 - m) / s for m, s in zip(mean, std)]
    return baseline


def _baseline_words(option: Any, described: str) -> str:
    """The occluder's filling, in words a reader of the report understands."""
    words = {"mean": "the image's mean colour", "zero": "zeros in input space (the normalization's mean colour)",
             "grey": "mid-grey", "gray": "mid-grey"}
    if isinstance(option, str) and option in words:
        return words[option]
    if isinstance(option, str) and option == "blur":
        return f"a blurred copy of the image ({described})"
    return f"{described} in input space"


@register_section("occlusion")
class OcclusionSection(AttributionSection):
    title = "Occlusion sensitivity"
    partial = "sections/occlusion.html.j2"
    order = 60
    extra_tile_count = 1      # the most likely class per position
    options = {
        "window": auto_or(int_or_pair(), expected="'auto', an integer >= 1 or a list [h, w]",
                          doc="occluder side in input pixels (auto: 16, shrunk to a small input, larger when the "
                              "build's time budget needs it; a written one is checked against the input)"),
        "stride": auto_or(int_or_pair(), expected="'auto', an integer >= 1 or a list [h, w]",
                          doc="occluder step in input pixels (auto: 8, or half an automatic window)"),
        "baseline": OneOf(Choice(["mean", "zero", "grey", "gray", "blur"]), Float(), default="mean",
                          expected="mean, zero, grey, blur or a number",
                          doc="what fills the occluder: the image's mean colour, zeros in input space, "
                              "mid-grey, a blurred copy, or a number"),
        "target": class_targets(default=None, nullable=True,
                                doc="the class each map explains: null (default) the probe's own (probes.targets, "
                                    "like the other methods), predicted (the model's top class), a class name or "
                                    "index for every probe, or a list with one per probe"),
        "incremental": Choice([False, True, AUTO], default=AUTO,
                              doc="recompute only what each occluder changes (exact): true, false or auto "
                                  "(when it saves work)"),
        **_shared_options(sanity=False),
    }

    def method_names(self, options: Dict[str, Any]) -> List[str]:
        return ["occlusion"]

    def probe_targets(self, ctx: BuildContext, options: Dict[str, Any]) -> List[Optional[int]]:
        """``target`` when written (the resolver probes.targets uses), else the probe's own."""
        if options["target"] is None:
            return super().probe_targets(ctx, options)
        return resolve_targets(options["target"], len(ctx.probes), ctx.classes)

    def best(self, ctx, options):
        _, h, w = ctx.input_size
        return dict(super().best(ctx, options), **bud.occlusion_ladder(h, w, options["window"], options["stride"])[0])

    def knobbed(self, options):
        return ("occlusion",)

    def knobs(self, ctx, options, runs):
        _, h, w = ctx.input_size
        n = len(ctx.probes)
        values = bud.occlusion_ladder(h, w, options["window"], options["stride"])
        costs = [bud.occlusion_cost(h, w, bud.pair(v["window"]), bud.pair(v["stride"]), n, options["incremental"])
                 * runs for v in values]
        auto = tuple(k for k in ("window", "stride") if options[k] == AUTO)
        return [bud.Knob("window/stride", tuple(values), tuple(costs), auto=auto, label="occlusion",
                         scope=f"on {n} probes")]

    def compute(self, name, model, images, targets, ctx, options, plan):
        from reportgen.analyses.occlusion import occlusion_details
        # batch_size "memory": one batch size from the model's shapes, never from timings,
        # so a rebuild rounds the same way and the report stays byte-identical
        d = occlusion_details(model, images, target=list(targets), window=options["window"],
                              stride=options["stride"], baseline=_occlusion_baseline(ctx, options["baseline"]),
                              output_key=ctx.output_key, incremental=options["incremental"],
                              batch_size="memory")
        meta = dict(d.meta(), baseline_option=options["baseline"])
        extras = {"prob_map": d.prob_map, "top_class": d.top_class, "positions": d.positions,
                  "window": list(d.window), "meta": meta}
        return d.sensitivity, None, extras

    def display_scale(self, result, ok):
        maps = [m.maps for m in ok] + [m.topk for m in ok if m.topk is not None]
        lim = ra.symmetric_limit(maps) if maps else 1.0
        return {"vmin": -lim, "vmax": lim, "cmap": SIGNED_CMAP, "low": "hiding it raises p(target)",
                "high": "hiding it lowers p(target)",
                "note": "One symmetric scale for every probe: red = occluding this region lowers the "
                        "target's probability (the model relies on it), blue = raises it, white = no effect."}

    def _class_pixels(self, result: AttributionResult, i: int) -> Optional[np.ndarray]:
        m = result.methods["occlusion"]
        if not m.ok:
            return None
        return ra.class_map_pixels(m.extras["top_class"][i], m.extras["positions"],
                                   tuple(m.extras["window"]), result.image_size)

    def _colours(self, result: AttributionResult) -> Dict[int, Tuple[int, int, int]]:
        """One colour per class that wins anywhere in any probe: consistent across probes."""
        m = result.methods["occlusion"]
        present = sorted(set(np.unique(m.extras["top_class"]).tolist()) | set(result.targets.tolist()))
        return dict(zip(present, palette(len(present))))

    def extra_tiles(self, result, i, image, ctx):
        px = self._class_pixels(result, i)
        return [] if px is None else [ra.class_map_tile(image, px, self._colours(result))]

    def extra_labels(self, result, i):
        return ["most likely class"] if result.methods["occlusion"].ok else []

    def legend(self, result, i, ctx):
        m = result.methods["occlusion"]
        if not m.ok:
            return []
        colours = self._colours(result)
        cells = m.extras["top_class"][i]
        classes, counts = np.unique(cells, return_counts=True)
        return [{"cls": ctx.classes[int(c)], "colour": hex_colour(colours[int(c)]),
                 "share": float(n / cells.size), "target": int(c) == int(result.targets[i])}
                for c, n in sorted(zip(classes.tolist(), counts.tolist()), key=lambda cn: (-cn[1], cn[0]))]

    def method_summary(self, m: MethodResult) -> Dict[str, Any]:
        top = m.extras["top_class"]
        flipped = [float(np.mean(t != tgt)) for t, tgt in zip(top, m.extras["meta"]["targets"])]
        return {"settings": m.extras["meta"], "top_class_per_position": top.tolist(),
                "flipped_share": [round(v, 6) for v in flipped]}

    def extra_view(self, result, ctx):
        m = result.methods["occlusion"]
        if not m.ok:
            return {"settings": None}
        meta = m.extras["meta"]
        return {"settings": {"window": "×".join(map(str, meta["window"])),
                             "stride": "×".join(map(str, meta["stride"])),
                             "baseline": _baseline_words(meta["baseline_option"], meta["baseline"]),
                             "grid": "×".join(map(str, meta["grid"])), "passes": meta["forward_passes"]}}


def public_errors(result: AttributionResult, base_dir: Any) -> AttributionResult:
    """``result`` with the exception texts it carries (a method's, its sanity check's) in public
    form: they become findings and page text, and an exception may name an absolute path."""
    def scrub(text: Optional[str]) -> Optional[str]:
        return None if text is None else public_text(text, base_dir)

    methods = {n: replace(m, error=scrub(m.error), sanity_error=scrub(m.sanity_error),
                          extras=({**m.extras, "topk_error": scrub(m.extras["topk_error"])}
                                  if "topk_error" in m.extras else m.extras))
               for n, m in result.methods.items()}
    return replace(result, methods=methods, sanity_error=scrub(result.sanity_error))

"""Shortcuts: what the model relies on across a labelled dataset (SPEC.md, "Audit").

Per class, the attribution maps of its images for that class are clustered
(spectral relevance analysis, Lapuschkin et al. 2019). A cluster whose maps
concentrate in one small region at one place is *seen*; it is *proven* when
pasting that region, from the cluster's own images, into other classes' images
makes them predict the class significantly more often than pasting the
same-size region from the mirrored place (one-sided Fisher exact test). The
analysis is ``reportgen.analyses.shortcuts``; pictures come from
``reportgen.render.shortcuts``. Every class also gets its mean map and the
share of attribution mass in the border band, judged over the whole dataset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from reportgen.analyses import faithfulness as fa
from reportgen.analyses import shortcuts as sc
from reportgen.analyses.agreement import folder_labels
from reportgen.analyses.confusion import wilson
from reportgen.engine import budget as bud
from reportgen.errors import NotApplicable
from reportgen.options import Choice, Float, Int, auto_or, layer, layout
from reportgen.render import shortcuts as rs
from reportgen.sections.attribution import CAM_METHODS, GRADIENT_METHODS, _gradient_params, cam_plan
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.dataset_pass import dataset_for

# Passes one map costs, relative to one forward + backward pass (CAM: one; path and noise methods: their
# automatic sample counts; Score-CAM and Eigen-CAM are priced as forward passes in ``_map_cost``).
GRADIENT_PASSES = {"integrated_gradients": bud.IG_STEPS[0], "smoothgrad": bud.SMOOTHGRAD_SAMPLES[0]}
STRIP = 6            # images shown per cluster
THUMB = 64           # side of the thumbnails kept per image
PRICED_CLUSTERS = 2  # clusters a class is priced for (SpRAy finds up to analyses.shortcuts.MAX_CLUSTERS)


@dataclass(frozen=True)
class ShortcutsResult:
    method: str
    layer: str                          # "input" for gradient methods
    layer_auto: bool
    classes: Tuple[sc.ClassAudit, ...]
    input_size: Tuple[int, int]
    maps_per_class: int
    transplants: int
    region_area: float
    region_mass: float
    max_spread: float
    alpha: float
    flip_threshold: float               # findings.shortcut_flip when the analysis ran
    border_band: float
    border_ratio: float
    border_min_share: float
    labels_note: str
    unlabelled: int
    class_names: Tuple[str, ...]        # the model's classes, in its order


def _slug(name: str, index: int) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return s or f"class-{index}"


def seen(cluster: sc.Cluster, result: ShortcutsResult) -> bool:
    """Its maps concentrate in one small region at one place (what SpRAy shows; not yet proven)."""
    return (len(cluster.members) >= sc.MIN_SUSPECT_SIZE and cluster.mass_in_region >= result.region_mass
            and cluster.location_spread <= result.max_spread)


def proven(cluster: sc.Cluster, result: ShortcutsResult) -> bool:
    """The transplant flips significantly more than the control, and more than the threshold."""
    return (cluster.transplanted > 0 and cluster.p_value < result.alpha
            and cluster.transplant_flip_rate > result.flip_threshold)


def suspects(result: ShortcutsResult) -> List[Tuple[sc.ClassAudit, sc.Cluster]]:
    """Per class, its seen and proven cluster with the highest transplant flip rate."""
    out = []
    for ca in result.classes:
        found = [c for c in ca.clusters if seen(c, result) and proven(c, result)]
        if found:
            out.append((ca, max(found, key=lambda c: (c.transplant_flip_rate, -c.p_value))))
    return out


def _r(v: float, digits: int = 6) -> float:
    return round(float(v), digits)


def _box(box: sc.Box, grid: Tuple[int, int]) -> List[float]:
    return [_r(v, 4) for v in sc.to_fractions(box, grid)]


@register_section("shortcuts")
class ShortcutsSection(Section):
    title = "Shortcuts: what the model relies on"
    partial = "sections/shortcuts.html.j2"
    order = 85
    requires = ("dataset",)
    options = {
        "method": Choice(CAM_METHODS + GRADIENT_METHODS, default="gradcam",
                         doc="attribution method whose maps are clustered (any CAM-family or gradient method)"),
        "layer": layer(spatial=True, doc="CAM layer (auto: the last layer with a spatial output the class score "
                                         "depends on); gradient methods attribute to the input"),
        "layout": layout(),
        "images": auto_or(Int(min=4), expected="'auto' or a number of images >= 4",
                          doc=f"maps per class (auto: up to {bud.SHORTCUT_MAPS[0]}, fewer when the build's time "
                              "budget needs it)"),
        "transplants": auto_or(Int(min=4), expected="'auto' or a number of images >= 4",
                               doc=f"other-class images each cluster's region is pasted into (auto: up to "
                                   f"{bud.SHORTCUT_TRANSPLANTS[0]}, fewer when the build's time budget needs it)"),
        "region_area": Float(min=0.001, max=0.5, default=0.0625,
                             doc="largest region a cluster may concentrate in, share of the input area"),
        "region_mass": Float(min=0, max=1, default=0.25,
                             doc="share of a cluster's mean map that region must hold to be seen"),
        "max_spread": Float(min=0, max=1, default=0.1,
                            doc="largest spread of the maps' peaks (fraction of the side) to be seen"),
        "alpha": Float(min=0, max=1, default=0.01,
                       doc="significance of the one-sided Fisher test, transplant against control"),
    }
    thresholds = {
        "shortcut_flip": Float(min=0, max=1, default=0.25,
                               doc="transplant flip rate above which a proven shortcut raises a finding"),
    }

    # ----------------------------------------------------------- inputs
    def _labels(self, ctx: BuildContext) -> Tuple[np.ndarray, str]:
        found = folder_labels([c for _, c in ctx.dataset], ctx.classes)
        if found.rule != "name" or not (found.labels >= 0).any():
            raise NotApplicable(
                f"needs a labelled dataset: {found.note}",
                hint="Put the dataset's images in one sub-folder per class, each named like one of the "
                     "model's classes (ImageFolder layout), so each image's true class is known.")
        return found.labels, found.note

    def _map_cost(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Cost:
        """One map, in image passes."""
        method = options["method"]
        if method in ("cam", "eigencam"):
            return bud.Cost(forward=1)
        if method == "scorecam":
            from reportgen.model.layers import output_shapes
            shape = output_shapes(ctx.model, ctx.example()).get(cam_plan(ctx, options["layer"], "auto")["layer"],
                                                                (1, 1))
            return bud.Cost(forward=1 + int(shape[1]))
        return bud.Cost(backward=GRADIENT_PASSES.get(method, 1))

    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        labels, _ = self._labels(ctx)
        counts = np.bincount(labels[labels >= 0], minlength=len(ctx.classes))
        present = counts[counts > 0]
        one = self._map_cost(ctx, options)

        def maps(v: Any) -> bud.Cost:
            return one * float(np.minimum(present, int(v)).sum())

        def transplants(v: Any) -> bud.Cost:
            # per class: the candidates once, then transplant and control per cluster; priced at
            # PRICED_CLUSTERS, not the MAX_CLUSTERS bound (the eigengap gives one or two on most
            # classes, and pricing four made the plan drop every other section for time never spent)
            return bud.Cost(forward=len(present) * int(v) * (1 + 2 * PRICED_CLUSTERS))

        return bud.Needs(knobs=(
            bud.knob("images", "images", options["images"], bud.SHORTCUT_MAPS, maps,
                     label="shortcuts maps", scope="per class"),
            bud.knob("transplants", "transplants", options["transplants"], bud.SHORTCUT_TRANSPLANTS, transplants,
                     label="shortcuts transplants", scope="per cluster")))

    # ----------------------------------------------------------- analysis
    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> ShortcutsResult:
        from reportgen.analyses.explain import explain

        labels, note = self._labels(ctx)
        n_maps = int(ctx.planned(self.name, "images", options["images"], bud.SHORTCUT_MAPS[0]))
        n_trans = int(ctx.planned(self.name, "transplants", options["transplants"], bud.SHORTCUT_TRANSPLANTS[0]))
        method = options["method"]
        if method in CAM_METHODS:
            plan = cam_plan(ctx, options["layer"], options["layout"])
            kw: Dict[str, Any] = {"layout": plan["layout"]} if "layout" in plan else {}
            kw["layer"] = plan["layer"]
        else:
            plan = {"layer": "input", "layer_auto": False}
            kw = _gradient_params(method, {"steps": bud.IG_STEPS[0], "samples": bud.SMOOTHGRAD_SAMPLES[0],
                                           "noise": 0.15}, ctx.seed)

        def attribute(x, targets):
            return explain(ctx.model, x.to(ctx.device), method, target=targets, output=ctx.output_key, **kw)

        data = dataset_for(ctx)
        band = ctx.threshold("border_band")
        present = sorted(set(labels[labels >= 0].tolist()))
        audits = []
        for c in ctx.progress(present, desc="shortcuts", total=len(present)):
            own = sc.spread_pick(np.nonzero(labels == c)[0].tolist(), n_maps)
            others = sc.spread_pick(np.nonzero((labels >= 0) & (labels != c))[0].tolist(), n_trans)
            audits.append(sc.audit_class(
                ctx.model, data.load, own, others, int(c), attribute, region_area=float(options["region_area"]),
                border_band=band, device=ctx.device, output_key=ctx.output_key, thumb=THUMB, strip=STRIP,
                seed=ctx.seed))
        _, h, w = ctx.input_size
        return ShortcutsResult(
            method=method, layer=plan["layer"], layer_auto=bool(plan["layer_auto"]), classes=tuple(audits),
            input_size=(int(h), int(w)), maps_per_class=n_maps, transplants=n_trans,
            region_area=float(options["region_area"]), region_mass=float(options["region_mass"]),
            max_spread=float(options["max_spread"]), alpha=float(options["alpha"]),
            flip_threshold=ctx.threshold("shortcut_flip"), border_band=band,
            border_ratio=ctx.threshold("border_ratio"), border_min_share=ctx.threshold("border_share"),
            labels_note=note, unlabelled=int((labels < 0).sum()), class_names=tuple(ctx.classes))

    # ----------------------------------------------------------- report.json
    def summary(self, result: ShortcutsResult) -> Dict[str, Any]:
        classes: Dict[str, Any] = {}
        def names(result: ShortcutsResult, ca: sc.ClassAudit) -> str:
            return result.class_names[ca.index]

        for ca in result.classes:
            clusters = []
            for cl in ca.clusters:
                grid = cl.mean_map.shape
                lo, hi = wilson(cl.transplant_flips, cl.transplanted)
                clo, chi = wilson(cl.control_flips, cl.transplanted)
                clusters.append({
                    "size": int(len(cl.members)), "region": _box(cl.region, grid),
                    "mass_in_region": _r(cl.mass_in_region), "location_spread": _r(cl.location_spread),
                    "transplant_flip_rate": _r(cl.transplant_flip_rate),
                    "control_flip_rate": _r(cl.control_flip_rate), "transplanted": int(cl.transplanted),
                    "p_value": float(f"{cl.p_value:.6g}"),
                    "transplant_ci": [_r(lo), _r(hi)], "control_ci": [_r(clo), _r(chi)],
                    "control_region": _box(cl.control, grid), "seen": seen(cl, result),
                    "significant": proven(cl, result)})
            classes[names(result, ca)] = {
                "images": int(len(ca.images)), "clusters": clusters,
                "eigenvalues": [_r(v) for v in ca.spray.eigenvalues], "k": int(ca.spray.k),
                "neighbours": int(ca.spray.neighbours), "border_share": _r(float(np.mean(ca.border_share)))
                if len(ca.border_share) else 0.0,
                "transplant_candidates": int(ca.candidates), "already_predicted": int(ca.already)}
        h, w = result.input_size
        shares = np.concatenate([ca.border_share for ca in result.classes]) if result.classes else np.zeros(0)
        return {
            "method": result.method, "layer": result.layer, "layer_auto": result.layer_auto,
            "grid": sc.GRID, "images_per_class": result.maps_per_class, "transplants": result.transplants,
            "criteria": {"region_area": result.region_area, "region_mass": result.region_mass,
                         "max_spread": result.max_spread, "alpha": result.alpha,
                         "shortcut_flip": result.flip_threshold, "test": "one-sided Fisher exact"},
            "classes": classes,
            "suspected": [{"class": names(result, ca), "region": _box(cl.region, cl.mean_map.shape),
                           "transplant_flip_rate": _r(cl.transplant_flip_rate),
                           "control_flip_rate": _r(cl.control_flip_rate), "p_value": float(f"{cl.p_value:.6g}")}
                          for ca, cl in suspects(result)],
            "border": {"band_fraction": result.border_band,
                       "area_share": _r(fa.border_area_share(h, w, result.border_band), 4),
                       "share": _r(float(shares.mean())) if len(shares) else 0.0, "images": int(len(shares))},
            "labels": result.labels_note, "unlabelled": result.unlabelled}

    # ----------------------------------------------------------- findings
    def findings(self, result: ShortcutsResult, ctx: BuildContext) -> List[Finding]:
        out = []
        for ca, cl in suspects(result):
            name = ctx.classes[ca.index]
            y0, x0, y1, x1 = _box(cl.region, cl.mean_map.shape)
            out.append(Finding(
                id=f"shortcut-suspected-{_slug(name, ca.index)}", severity="warning", section=self.name,
                layer=result.layer if result.layer != "input" else None,
                title=f"Class {name} may rely on a shortcut at rows {y0:.0%}–{y1:.0%}, columns {x0:.0%}–{x1:.0%}",
                evidence=f"{len(cl.members)} of its {len(ca.images)} maps concentrate there "
                         f"({cl.mass_in_region:.0%} of their mean map, peaks spread {cl.location_spread:.2f}); "
                         f"pasting that region from those images into {cl.transplanted} images of other classes "
                         f"makes {cl.transplant_flip_rate:.0%} of them predict {name}, against "
                         f"{cl.control_flip_rate:.0%} for the same-size region at the mirrored place "
                         f"(one-sided Fisher p = {cl.p_value:.2g} < {result.alpha:g}; finding above "
                         f"{result.flip_threshold:.0%})"))
        h, w = result.input_size
        shares = np.concatenate([ca.border_share for ca in result.classes]) if result.classes else np.zeros(0)
        if fa.border_flag(shares, h, w, result.border_band, result.border_ratio, result.border_min_share):
            out.append(Finding(
                id=f"dataset-border-{result.method}", severity="warning", section=self.name,
                layer=result.layer if result.layer != "input" else None,
                title="Attribution concentrates on the image border across the dataset",
                evidence=f"{float(shares.mean()):.0%} of the attribution mass lies in the outer "
                         f"{result.border_band:.0%} band (which is "
                         f"{fa.border_area_share(h, w, result.border_band):.0%} "
                         f"of the area) on average over {len(shares)} dataset image(s), each explained for its "
                         "true class: padding artefacts or a shortcut outside the object"))
        return out

    # ----------------------------------------------------------- view
    def view(self, result: ShortcutsResult, ctx: BuildContext) -> Dict[str, Any]:
        return rs.render_shortcuts(result, ctx.classes, seen, proven, ctx.page_share(self.name) is not None)

    def page_bytes(self, ctx: BuildContext, options: Dict[str, Any]) -> float:
        """Each class's mean map, and per cluster (at most MAX_CLUSTERS) its mean and strip, WebP."""
        try:
            labels, _ = self._labels(ctx)
        except NotApplicable:
            return 0.0
        k = len(set(labels[labels >= 0].tolist()))
        side = rs.tile_side(ctx.input_size[1], ctx.input_size[2], THUMB, small=False)
        return k * (1 + sc.MAX_CLUSTERS * (1 + STRIP)) * side * side * bud.WEBP_BYTES_PER_PIXEL


"""Attribution sections: class activation maps, gradient attributions, occlusion.

The three share one pipeline (``AttributionSection``): compute each method's
maps for every probe, then score them - deletion/insertion AUC against a
random-order reference, the share of attribution on the image border and,
for the CAM and gradient families, Adebayo et al.'s model-randomization
check - and lay them out as one strip per probe. A subclass says only which
methods it runs and how one method's maps are computed (``compute``), the
way each CAM method overrides one method of ``BaseCAM``.

A method that cannot apply to the model (``cam`` without a GAP + linear
head, guided backprop without ReLUs) raises ``NotApplicable`` and becomes an
inline note in its section; any other failure is an error finding. The other
methods still render. The analysis and the scores are pure
(``reportgen.analyses``); pictures come from ``reportgen.render.attribution``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from reportgen.analyses import faithfulness as fa
from reportgen.analyses.gradients import class_scores, integrated_gradients_with_delta
from reportgen.errors import NotApplicable
from reportgen.hooks import eval_mode
from reportgen.layers import last_spatial_layer
from reportgen.render import attribution as ra
from reportgen.render.heatmap import DEFAULT_CMAP, SIGNED_CMAP, attribution_map
from reportgen.sections.base import BuildContext, Finding, Section, register_section

# Deletion/insertion cost n_probes x (methods + 1 random reference) x 2 curves x (steps + 1)
# forward passes. "auto" steps keep that under FAITHFULNESS_MAC_BUDGET multiply-accumulates
# (~250 ResNet-50 passes at 224 px: ~10 s on an 8-core laptop CPU, ~50 s on 2 busy cores)
# where the floor of 8 steps allows; small models (the demo) get the full 32.
FAITHFULNESS_MAC_BUDGET = 1e12
FAITHFULNESS_STEPS = (8, 32)
GRADIENT_BATCH = 32            # path points / noisy copies per forward-backward pass


@dataclass
class MethodResult:
    """One method's maps and scores over all probes (numpy only)."""

    name: str
    maps: Optional[np.ndarray] = None          # (N, H, W): what is drawn and scored
    raw: Optional[np.ndarray] = None           # (N, C, H, W) input attributions (gradient methods)
    error: Optional[str] = None                # why the method produced no maps
    bug: bool = False                          # True: an unexpected failure, not "does not apply"
    deletion_auc: Optional[np.ndarray] = None  # (N,)
    insertion_auc: Optional[np.ndarray] = None
    deletion_curves: Optional[np.ndarray] = None   # (N, steps + 1)
    insertion_curves: Optional[np.ndarray] = None
    border_share: Optional[np.ndarray] = None  # (N,)
    sanity: Optional[fa.SanityResult] = None
    sanity_error: Optional[str] = None
    topk: Optional[np.ndarray] = None          # (N, K, H, W), maps for the top-K classes
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.maps is not None


@dataclass
class AttributionResult:
    section: str
    probe_names: List[str]
    image_size: Tuple[int, int]
    targets: np.ndarray                        # (N,) class explained per probe
    target_from_spec: List[bool]
    probs: np.ndarray                          # (N, classes) softmax of the clean probes
    methods: Dict[str, MethodResult]
    steps: int
    steps_auto: bool
    deletion_baseline: str
    insertion_baseline: str
    random_deletion_auc: np.ndarray            # (N,) the random-order reference
    random_insertion_auc: np.ndarray
    border_frac: float
    border_area_share: float
    layer: Optional[str] = None
    layer_auto: bool = False
    topk_classes: Optional[np.ndarray] = None  # (N, K)
    sanity_threshold: Optional[float] = None
    sanity_randomized: Optional[str] = None
    sanity_error: Optional[str] = None
    extras: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- shared pipeline

def _targets(ctx: BuildContext, probs: np.ndarray) -> Tuple[np.ndarray, List[bool]]:
    """probe.target where the spec names one, else the predicted class."""
    given = [p.target is not None for p in ctx.probes]
    t = [int(p.target) if p.target is not None else int(probs[i].argmax()) for i, p in enumerate(ctx.probes)]
    return np.asarray(t, dtype=np.int64), given


@torch.no_grad()
def _probabilities(ctx: BuildContext, images: torch.Tensor) -> np.ndarray:
    with eval_mode(ctx.model):
        scores = class_scores(ctx.model, images, ctx.output_key)
    return torch.softmax(scores.double(), dim=1).cpu().numpy()


def auto_steps(ctx: BuildContext, n_maps: int) -> int:
    """Steps per deletion/insertion curve from the model's cost (deterministic: MACs, not timings)."""
    from reportgen.analyses.summary import summarize

    lo, hi = FAITHFULNESS_STEPS
    try:
        macs = summarize(ctx.model, ctx.example(), ctx.output_key).total_macs
    except Exception:  # noqa: BLE001 - a model the summary cannot hook: fall back on the size
        macs = 0
    if macs <= 0:
        h, w = ctx.input_size[-2:]
        return hi if h * w <= 128 * 128 else 16
    curves = max(1, len(ctx.probes)) * max(1, n_maps) * 2       # deletion + insertion per map
    passes = FAITHFULNESS_MAC_BUDGET / macs / curves
    return int(min(hi, max(lo, math.floor(passes) - 1)))


def _finding_threshold(ctx: BuildContext, key: str, default: float) -> float:
    """A findings threshold from the spec when the schema has it, else our default."""
    try:
        value = ctx.spec["findings"].get(key)
    except (KeyError, TypeError, AttributeError):
        value = None
    return float(default if value is None else value)


class AttributionSection(Section):
    """Maps per method and probe, scored; subclasses define ``methods`` and ``compute``."""

    needs_probes = True
    run_sanity = False

    # ----------------------------------------------------------- subclass API
    def method_names(self, options: Dict[str, Any]) -> List[str]:
        raise NotImplementedError

    def plan(self, ctx: BuildContext, options: Dict[str, Any]) -> Dict[str, Any]:
        """Choices shared by every method (the CAM layer); written into the result."""
        return {}

    def compute(self, name: str, model: nn.Module, images: torch.Tensor, targets: Sequence[int],
                ctx: BuildContext, options: Dict[str, Any], plan: Dict[str, Any]
                ) -> Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any]]:
        """(maps (N, H, W) to draw and score, raw attributions or None, extras)."""
        raise NotImplementedError

    # ----------------------------------------------------------- analysis
    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> Optional[AttributionResult]:
        if not ctx.probes:
            return None
        images = ctx.probe_batch()
        probs = _probabilities(ctx, images)
        targets, given = _targets(ctx, probs)
        names = self.method_names(options)
        try:
            plan = self.plan(ctx, options)
        except NotApplicable as e:    # e.g. no hookable layer: every method says why
            plan = {}
            methods = {n: MethodResult(n, error=str(e)) for n in names}
        else:
            methods = {n: self._run(n, ctx, images, targets, options, plan) for n in names}
        ok = [m for m in methods.values() if m.ok]
        steps_opt = options.get("faithfulness_steps", "auto")
        steps = auto_steps(ctx, len(ok) + 1) if steps_opt in (None, "auto") else int(steps_opt)
        h, w = images.shape[-2:]
        border_frac = _finding_threshold(ctx, "border_band", fa.BORDER_FRAC)
        rand = self._random_reference(ctx, images, targets, steps)
        for m in ok:
            self._score(m, ctx, images, targets, steps, border_frac)
        result = AttributionResult(
            section=self.name, probe_names=[p.name for p in ctx.probes], image_size=(int(h), int(w)),
            targets=targets, target_from_spec=given, probs=probs.astype(np.float32), methods=methods,
            steps=steps, steps_auto=steps_opt in (None, "auto"),
            deletion_baseline=rand["deletion_baseline"], insertion_baseline=rand["insertion_baseline"],
            random_deletion_auc=rand["deletion_auc"], random_insertion_auc=rand["insertion_auc"],
            border_frac=border_frac, border_area_share=fa.border_area_share(int(h), int(w), border_frac),
            layer=plan.get("layer"), layer_auto=bool(plan.get("layer_auto", False)),
            extras={k: v for k, v in plan.items() if k not in ("layer", "layer_auto")})
        k = int(options.get("top_classes", 1) or 1)
        if k > 1:
            self._top_classes(result, ctx, images, options, plan, min(k, probs.shape[1]))
        if self.run_sanity and ok:
            self._sanity(result, ctx, images, options, plan)
        return result

    def _run(self, name: str, ctx: BuildContext, images: torch.Tensor, targets: np.ndarray,
             options: Dict[str, Any], plan: Dict[str, Any]) -> MethodResult:
        """One method over all probes; NotApplicable is a note, anything else a bug, neither sinks the section."""
        res = MethodResult(name)
        try:
            res.maps, res.raw, res.extras = self.compute(name, ctx.model, images, targets.tolist(),
                                                         ctx, options, plan)
        except NotApplicable as e:       # the method says it does not apply to this model, and why
            res.error = str(e)
        except Exception as e:  # noqa: BLE001 - a bug: report it, keep the other methods
            res.error, res.bug = f"{type(e).__name__}: {e}", True
        return res

    def _score(self, m: MethodResult, ctx: BuildContext, images: torch.Tensor, targets: np.ndarray,
               steps: int, border_frac: float) -> None:
        rows = [fa.deletion_insertion(ctx.model, images[i:i + 1], m.maps[i], int(targets[i]), steps=steps,
                                      output_key=ctx.output_key) for i in range(len(targets))]
        m.deletion_auc = np.array([r["deletion_auc"] for r in rows])
        m.insertion_auc = np.array([r["insertion_auc"] for r in rows])
        m.deletion_curves = np.stack([r["deletion_curve"] for r in rows])
        m.insertion_curves = np.stack([r["insertion_curve"] for r in rows])
        m.border_share = np.asarray(fa.border_concentration(m.maps, border_frac), dtype=np.float64)

    def _random_reference(self, ctx: BuildContext, images: torch.Tensor, targets: np.ndarray,
                          steps: int) -> Dict[str, Any]:
        """The same curves for a seeded random pixel order: what "no information" scores."""
        h, w = images.shape[-2:]
        rows = [fa.deletion_insertion(ctx.model, images[i:i + 1], fa.random_saliency((h, w), ctx.seed + i),
                                      int(targets[i]), steps=steps, output_key=ctx.output_key)
                for i in range(len(targets))]
        return {"deletion_auc": np.array([r["deletion_auc"] for r in rows]),
                "insertion_auc": np.array([r["insertion_auc"] for r in rows]),
                "deletion_baseline": rows[0]["deletion_baseline"],
                "insertion_baseline": rows[0]["insertion_baseline"]}

    def _top_classes(self, result: AttributionResult, ctx: BuildContext, images: torch.Tensor,
                     options: Dict[str, Any], plan: Dict[str, Any], k: int) -> None:
        """Maps for each probe's k most likely classes (shown collapsed, on demand)."""
        top = np.argsort(-result.probs, axis=1, kind="stable")[:, :k]
        result.topk_classes = top
        for m in result.methods.values():
            if not m.ok:
                continue
            try:
                per_rank = [self.compute(m.name, ctx.model, images, top[:, r].tolist(), ctx, options, plan)[0]
                            for r in range(k)]
                m.topk = np.stack(per_rank, axis=1)
            except Exception as e:  # noqa: BLE001 - the main maps worked; keep them
                m.extras["topk_error"] = f"{type(e).__name__}: {e}"

    def _sanity(self, result: AttributionResult, ctx: BuildContext, images: torch.Tensor,
                options: Dict[str, Any], plan: Dict[str, Any]) -> None:
        """Adebayo et al.: one randomized copy per section (seeded), each method's maps compared."""
        own = options.get("sanity_threshold")  # the section's own value wins over findings:
        threshold = float(own) if own is not None else float(
            _finding_threshold(ctx, "sanity_spearman", fa.SANITY_THRESHOLD))
        result.sanity_threshold = threshold
        try:
            randomized = fa.randomize_weights(ctx.model, seed=ctx.seed)
        except ValueError as e:
            result.sanity_error = str(e)
            return
        result.sanity_randomized = f"all parameters re-initialized (seed {ctx.seed})"
        targets = result.targets.tolist()
        for m in result.methods.values():
            if not m.ok:
                continue

            def method(model, x, t, _name=m.name):
                return self.compute(_name, model, x, t, ctx, options, plan)[0]
            try:
                m.sanity = fa.sanity_randomization(ctx.model, images, method, targets, randomized=randomized,
                                                   original=m.maps, threshold=threshold, name=m.name)
            except Exception as e:  # noqa: BLE001 - e.g. a head the random weights break
                m.sanity_error = f"{type(e).__name__}: {e}"
        del randomized

    # ----------------------------------------------------------- report.json
    def summary(self, result: Optional[AttributionResult]) -> Dict[str, Any]:
        if result is None:
            return {"skipped": "no probe images"}
        out: Dict[str, Any] = {}
        if result.layer is not None:
            out["layer"], out["layer_auto"] = result.layer, result.layer_auto
        out["probes"] = result.probe_names
        out["targets"] = result.targets.tolist()
        out["target_source"] = ["spec" if g else "predicted" for g in result.target_from_spec]
        out["faithfulness"] = {
            "metric": "deletion/insertion AUC of p(target) (Petsiuk et al. 2018)",
            "steps": result.steps, "steps_auto": result.steps_auto,
            "deletion_baseline": result.deletion_baseline, "insertion_baseline": result.insertion_baseline,
            "random_baseline": {"deletion_auc": _r(result.random_deletion_auc),
                                "insertion_auc": _r(result.random_insertion_auc)}}
        out["border"] = {"band_fraction": result.border_frac, "area_share": round(result.border_area_share, 4)}
        if self.run_sanity:
            out["sanity"] = {"threshold": result.sanity_threshold, "randomized": result.sanity_randomized,
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
    def findings(self, result: Optional[AttributionResult], ctx: BuildContext) -> List[Finding]:
        if result is None:
            return []
        out: List[Finding] = []
        h, w = result.image_size
        ratio = _finding_threshold(ctx, "border_ratio", fa.BORDER_RATIO)
        min_share = _finding_threshold(ctx, "border_share", fa.BORDER_MIN_SHARE)
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
    def render(self, result: Optional[AttributionResult], ctx: BuildContext) -> Dict[str, Any]:
        if result is None:
            return {"empty": True}
        ok = [m for m in result.methods.values() if m.ok]
        scale = self.display_scale(result, ok)
        probes = []
        for i, probe in enumerate(ctx.probes):
            t = int(result.targets[i])
            entry = {"name": probe.name, "target": ctx.classes[t], "target_index": t,
                     "target_source": "spec" if result.target_from_spec[i] else "predicted",
                     "p_target": float(result.probs[i, t]),
                     "labels": ["image"] + [ra.label(m.name) for m in ok] + self.extra_labels(result, i),
                     "strip": ra.strip(probe.display, [self.display_map(m, i, scale) for m in ok],
                                       scale["vmin"], scale["vmax"], scale["cmap"],
                                       extra=self.extra_tiles(result, i, probe.display, ctx)),
                     "legend": self.legend(result, i, ctx), "topk": []}
            if result.topk_classes is not None:
                entry["topk"] = self._topk_view(result, ok, i, probe, ctx, scale)
            probes.append(entry)
        view = {"empty": False, "section": self.name, "probes": probes,
                "errors": [{"label": ra.label(m.name), "name": m.name, "error": m.error, "bug": m.bug}
                           for m in result.methods.values() if not m.ok],
                "colorbar": ra.colorbar_view(scale["vmin"], scale["vmax"], scale["cmap"], scale["low"],
                                             scale["high"]),
                "scale_note": scale["note"], "layer": result.layer, "layer_auto": result.layer_auto,
                "faithfulness": self._faithfulness_view(result, ok),
                "sanity": self._sanity_view(result, ok) if self.run_sanity else None,
                "border": [{"label": ra.label(m.name), "share": float(np.mean(m.border_share))} for m in ok],
                "border_frac": result.border_frac, "border_area_share": result.border_area_share,
                "top_classes": 0 if result.topk_classes is None else int(result.topk_classes.shape[1]),
                "n_methods": len(ok)}
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
                   ctx: BuildContext, scale: Dict[str, Any]) -> List[Dict[str, Any]]:
        shown = [m for m in ok if m.topk is not None]
        if not shown:
            return []
        rows = []
        for r, c in enumerate(result.topk_classes[i]):
            rows.append({"rank": r + 1, "cls": ctx.classes[int(c)], "p": float(result.probs[i, int(c)]),
                         "labels": ["image"] + [ra.label(m.name) for m in shown],
                         "strip": ra.strip(probe.display, [self.display_map(m, i, scale, r) for m in shown],
                                           scale["vmin"], scale["vmax"], scale["cmap"])})
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
        return {"rows": rows, "probes": result.probe_names, "steps": result.steps,
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
                "error": result.sanity_error}


def _r(a: Optional[np.ndarray], digits: int = 6) -> Optional[List[float]]:
    return None if a is None else [round(float(v), digits) for v in np.asarray(a).reshape(-1)]


# --------------------------------------------------------------------------- CAM family

@register_section("cam")
class CamSection(AttributionSection):
    title = "Class activation maps"
    partial = "sections/cam.html.j2"
    order = 50
    run_sanity = True

    def method_names(self, options: Dict[str, Any]) -> List[str]:
        return list(options.get("methods") or ["gradcam", "gradcampp"])

    def plan(self, ctx: BuildContext, options: Dict[str, Any]) -> Dict[str, Any]:
        layer = options.get("layer", "auto") or "auto"
        if layer == "auto":
            return {"layer": last_spatial_layer(ctx.model, ctx.example()), "layer_auto": True}
        return {"layer": layer, "layer_auto": False}

    def compute(self, name, model, images, targets, ctx, options, plan):
        from reportgen.attribution import explain
        maps = explain(model, images, name, target=list(targets), layer=plan["layer"], output=ctx.output_key)
        return maps, None, {}

    def display_scale(self, result, ok):
        return {"vmin": 0.0, "vmax": 1.0, "cmap": DEFAULT_CMAP, "low": "0 (image's minimum)",
                "high": "1 (image's maximum)",
                "note": "CAM maps are min–max scaled per image, so colours show where the evidence is "
                        "relative to that image's own peak, not how strong it is."}


# --------------------------------------------------------------------------- gradient methods

def _gradient_params(name: str, options: Dict[str, Any], seed: int) -> Dict[str, Any]:
    if name == "integrated_gradients":
        return {"steps": int(options.get("steps", 32)), "batch_size": GRADIENT_BATCH}
    if name == "smoothgrad":
        return {"samples": int(options.get("samples", 16)), "noise_level": float(options.get("noise", 0.15)),
                "seed": int(seed), "batch_size": GRADIENT_BATCH}
    return {}


@register_section("gradients")
class GradientsSection(AttributionSection):
    title = "Gradient attributions"
    partial = "sections/gradients.html.j2"
    order = 55
    run_sanity = True

    def method_names(self, options: Dict[str, Any]) -> List[str]:
        return list(options.get("methods") or ["saliency", "guided_backprop", "integrated_gradients"])

    def compute(self, name, model, images, targets, ctx, options, plan):
        params = _gradient_params(name, options, ctx.seed)
        extras: Dict[str, Any] = {}
        if name == "integrated_gradients":
            # called directly (not via explain) for the completeness delta
            with torch.inference_mode(False), torch.enable_grad():
                raw, delta = integrated_gradients_with_delta(model, images, list(targets),
                                                             output_key=ctx.output_key, **params)
            gap = raw.reshape(raw.shape[0], -1).sum(axis=1) - delta      # F(x) - F(baseline)
            extras = {"delta": delta.astype(np.float64), "gap": gap.astype(np.float64)}
        else:
            from reportgen.attribution import explain
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

    def method_names(self, options: Dict[str, Any]) -> List[str]:
        return ["occlusion"]

    def compute(self, name, model, images, targets, ctx, options, plan):
        from reportgen.analyses.occlusion import occlusion_details
        d = occlusion_details(model, images, target=list(targets), window=options.get("window", 16),
                              stride=options.get("stride", 8),
                              baseline=_occlusion_baseline(ctx, options.get("baseline", "mean")),
                              output_key=ctx.output_key, incremental=options.get("incremental", False))
        meta = dict(d.meta(), baseline_option=options.get("baseline", "mean"))
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
        return dict(zip(present, ra.palette(len(present))))

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
        return [{"cls": ctx.classes[int(c)], "colour": ra.hex_colour(colours[int(c)]),
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

"""Sections about the checkpoint series: training evolution and training curves.

The single-model sections say what the audited weights look like; these say
how they got there (Zeiler & Fergus' filters per epoch, TensorBoard's
histograms and curves). Both degrade to a short note, never a failure, when
the spec gives fewer than two checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from reportgen.analyses import activations as act
from reportgen.analyses import evolution as evo
from reportgen.analyses import metrics as mt
from reportgen.model.layers import first_conv
from reportgen.options import Float, Int, layer, layout
from reportgen.paths import public_path
from reportgen.render import evolution as rev
from reportgen.sections.base import REQUIREMENTS, BuildContext, Finding, Section, register_section


@dataclass(frozen=True)
class EvolutionSectionResult:
    evolution: evo.EvolutionResult
    filter_auto: bool
    fmap_auto: bool
    frozen_threshold: float


@dataclass(frozen=True)
class CurvesResult:
    checkpoints: Optional[mt.MetricsTable]      # metrics stored in two or more checkpoints
    file: Optional[mt.MetricsTable]             # the spec's metrics: file
    n_checkpoints: int


def _round(values: Any, digits: int = 5) -> Any:
    """report.json keeps 5 significant digits: enough for a CI gate, a third of the bytes."""
    arr = np.asarray(values, dtype=np.float64)
    return [float(f"{v:.{digits}g}") for v in arr.ravel()] if arr.ndim else float(f"{float(arr):.{digits}g}")


# --------------------------------------------------------------------------- evolution

@register_section("evolution")
class EvolutionSection(Section):
    title = "Training evolution"
    partial = "sections/evolution.html.j2"
    order = 90
    requires = ("checkpoint_series",)
    options = {
        "layer": layer(doc="the convolution whose filters are followed (auto: the first one)"),
        "activations_layer": layer(spatial=True, doc="layer whose feature maps are followed across "
                                                     "checkpoints (auto: the middle stage)"),
        "channels": Int(min=1, max=64, default=8, doc="feature-map channels followed"),
        "max_filters": Int(min=1, max=1024, default=64, doc="filters shown per checkpoint"),
        "histogram_layers": Int(min=2, max=64, default=12, doc="conv/linear layers with weight/bias ridgelines"),
        "bins": Int(min=4, max=256, default=40, doc="histogram bins"),
        "layout": layout(doc="how a named activations_layer holds its map: auto (detected), nchw, nhwc "
                             "(channels-last) or tokens (N, L, C; class/register tokens dropped)"),
    }
    thresholds = {
        "frozen_change": Float(min=0, default=1e-6,
                               doc="relative change per transition below which a layer counts as frozen"),
        "norm_growth": Float(min=1, default=10.0, doc="last/first weight-norm ratio that raises an explosion "
                                                      "finding"),
        "norm_shrink": Float(min=0, max=1, default=0.1, doc="last/first weight-norm ratio that raises a "
                                                           "vanishing finding"),
    }

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> EvolutionSectionResult:
        choice = options["layer"]
        filter_layer = first_conv(ctx.model) if choice == "auto" else choice
        fmap_choice = options["activations_layer"]
        fmap_layer = self._fmap_layer(ctx, fmap_choice)
        probe = ctx.probes[0] if ctx.probes else None
        res = evo.evolution(
            ctx.model, [c.path for c in ctx.checkpoints], [c.label for c in ctx.checkpoints],
            filter_layer, probe=probe.tensor if probe else None, probe_name=probe.name if probe else None,
            fmap_layer=fmap_layer, channels=int(options["channels"]), max_filters=int(options["max_filters"]),
            max_hist_layers=int(options["histogram_layers"]), bins=int(options["bins"]),
            output_key=ctx.output_key, loader=ctx.read_checkpoint, progress=ctx.progress,
            fmap_layout="auto" if fmap_choice == "auto" else options["layout"])
        return EvolutionSectionResult(res, choice == "auto", fmap_choice == "auto",
                                      ctx.threshold("frozen_change"))

    @staticmethod
    def _fmap_layer(ctx: BuildContext, choice: str) -> Optional[str]:
        """Auto: the middle resolution stage, where features are neither edges nor class evidence."""
        if not ctx.probes:
            return None
        if choice != "auto":
            return choice
        stages = act.stage_layers(ctx.model, ctx.example())
        return stages[len(stages) // 2] if stages else None

    def view(self, result: EvolutionSectionResult, ctx: BuildContext) -> Dict[str, Any]:
        res = result.evolution
        kh, kw = res.filters.shape[-2:]
        view: Dict[str, Any] = {
            "labels": res.labels, "n": len(res.labels),
            "filter_layer": res.filter_layer, "filter_auto": result.filter_auto,
            "filters_shown": int(res.filters.shape[1]), "filters_total": res.filters_total,
            "kernel": [int(kh), int(kw)], "rgb": res.filters.shape[2] == 3,
            "filters": rev.frames_view(rev.filter_frames(res), res.labels, int(max(kh, kw)), 28, 560),
            "drift": rev.drift_view(res, result.frozen_threshold),
            "hist": rev.histograms_view(res), "fmaps": None,
        }
        if res.fmaps is not None:
            probe = next(p for p in ctx.probes if p.name == res.fmap_probe)
            fm = rev.frames_view(rev.fmap_frames(res), res.labels, int(max(res.fmaps.shape[-2:])), 48, 720)
            fm.update(layer=res.fmap_layer, auto=result.fmap_auto, probe=res.fmap_probe,
                      thumb=rev.thumbnail(probe.display), channels=[int(c) for c in res.fmap_channels],
                      shape=res.fmap_shape, pooled=list(res.fmaps.shape[-2:]))
            view["fmaps"] = fm
        return view

    def summary(self, result: EvolutionSectionResult) -> Dict[str, Any]:
        res = result.evolution
        d = evo.layer_drift(res)
        layers = [str(x) for x in d["layers"]]
        frozen = evo.frozen_layers(d["step"], layers, result.frozen_threshold)
        out: Dict[str, Any] = {
            "checkpoints": res.labels, "checkpoint_loads": res.loads,
            "filter_layer": res.filter_layer, "filter_layer_auto": result.filter_auto,
            "layers": layers, "frozen_layers": frozen, "frozen_threshold": result.frozen_threshold,
            "drift_step": {n: _round(d["step"][:, j]) for j, n in enumerate(layers)},
            "drift_from_first": {n: _round(d["total"][-1, j]) for j, n in enumerate(layers)},
            "norms": {n: _round(d["norms"][:, j]) for j, n in enumerate(layers)},
            "histograms": res.hist_names,
        }
        if res.fmap_layer:
            out.update(activations_layer=res.fmap_layer, activations_layer_auto=result.fmap_auto,
                       probe=res.fmap_probe, channels=[int(c) for c in res.fmap_channels],
                       layouts={res.fmap_layer: res.fmap_layout})
        return out

    def findings(self, result: EvolutionSectionResult, ctx: BuildContext) -> List[Finding]:
        res = result.evolution
        d = evo.layer_drift(res)
        layers = [str(x) for x in d["layers"]]
        out = _frozen_finding(res, d, layers, result.frozen_threshold)
        out += _norm_findings(d["norms"], layers, res.labels, ctx.threshold("norm_growth"),
                              ctx.threshold("norm_shrink"))
        return out


def _listed(names: List[str], limit: int = 10) -> str:
    shown = ", ".join(n or "(root)" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _frozen_finding(res: evo.EvolutionResult, d: Dict[str, np.ndarray], layers: List[str],
                    limit: float) -> List[Finding]:
    frozen = evo.frozen_layers(d["step"], layers, limit)
    if not frozen or len(res.labels) < 2:
        return []
    worst = max(float(d["step"][:, layers.index(n)].max()) for n in frozen)
    return [Finding(
        id="frozen-layers", severity="warning", section="evolution", layer=frozen[0],
        title=f"{len(frozen)} of {len(layers)} layers never change across the {len(res.labels)} checkpoints",
        evidence=f"relative weight change < {limit:g} at every transition (largest {worst:.2g}) for "
                 f"{_listed(frozen)}. Frozen on purpose (fine-tuning a head)? If not, check "
                 "requires_grad, the optimizer's parameter groups and the learning-rate schedule.")]


def _norm_findings(norms: np.ndarray, layers: List[str], labels: List[str], growth: float,
                   shrink: float) -> List[Finding]:
    first, last = norms[0], norms[-1]
    valid = first > evo.EPS          # a zero-initialised layer has no ratio to speak of
    ratio = np.where(valid, last / np.where(valid, first, 1.0), 1.0)
    out: List[Finding] = []
    for fid, mask, word in (("weight-norm-explosion", ratio > growth, "grew"),
                            ("weight-norm-vanishing", valid & (ratio < shrink), "shrank")):
        idx = np.flatnonzero(mask)
        if not idx.size:
            continue
        idx = idx[np.argsort(-np.abs(np.log(ratio[idx])), kind="stable")]
        detail = "; ".join(f"{layers[i] or '(root)'} {first[i]:.3g} → {last[i]:.3g} (×{ratio[i]:.3g})"
                           for i in idx[:5])
        bound = f"> {growth:g}×" if fid.endswith("explosion") else f"< {shrink:g}×"
        out.append(Finding(
            id=fid, severity="warning", section="evolution", layer=layers[idx[0]] or None,
            title=f"Weight norm of {idx.size} layer(s) {word} {bound} from {labels[0]} to {labels[-1]}",
            evidence=f"L2 norm first → last: {detail}" + (" …" if idx.size > 5 else "")))
    return out


# --------------------------------------------------------------------------- curves

@register_section("curves")
class CurvesSection(Section):
    title = "Training curves"
    partial = "sections/curves.html.j2"
    order = 85
    thresholds = {
        "regression_points": Float(min=0, default=2.0,
                                   doc="accuracy points the last checkpoint may trail the best"),
        "regression_loss": Float(min=0, default=0.10, doc="relative loss rise over its best that raises a "
                                                          "finding"),
    }

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> CurvesResult:
        from_file = mt.read_metrics(ctx.metrics_path) if ctx.metrics_path is not None else None
        stored = mt.stored_curves([c.metrics for c in ctx.checkpoints])
        return CurvesResult(stored, from_file, len(ctx.checkpoints))

    def view(self, result: CurvesResult, ctx: BuildContext) -> Dict[str, Any]:
        sources = []
        for key, table in (("file", result.file), ("checkpoints", result.checkpoints)):
            if table is None:
                continue
            sources.append({"key": key, "source": table.source, "x_label": table.x_label,
                            "path": public_path(table.path, ctx.spec.base_dir) if table.path else None,
                            "ignored": table.ignored, "charts": rev.curves_view(table)})
        return {"sources": sources, "n_checkpoints": result.n_checkpoints,
                "too_few": REQUIREMENTS["checkpoint_series"][0].format(n=result.n_checkpoints)}

    def summary(self, result: CurvesResult) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key in ("file", "checkpoints"):
            table: Optional[mt.MetricsTable] = getattr(result, key)
            if table is None:
                continue
            out[key] = {"source": table.source, "x": table.x_label,
                        "final": {n: _round(s.values[-1]) for n, s in table.series.items()},
                        "final_step": {n: _round(s.steps[-1]) for n, s in table.series.items()},
                        "points": {n: int(s.values.size) for n, s in table.series.items()}}
        if not out:
            out["skipped"] = "no metrics file and no metrics stored in two or more checkpoints"
        return out

    def findings(self, result: CurvesResult, ctx: BuildContext) -> List[Finding]:
        points, loss = ctx.threshold("regression_points"), ctx.threshold("regression_loss")
        out: List[Finding] = []
        for key in ("checkpoints", "file"):
            table: Optional[mt.MetricsTable] = getattr(result, key)
            if table is None:
                continue
            for name, s in table.series.items():
                if key == "file" and not mt.is_heldout(name):
                    continue   # per-step training values are too noisy to call a regression
                f = _regression_finding(name, s, table, points, loss)
                if f is not None:
                    out.append(f)
        return out


def _regression_finding(name: str, s: mt.Series, table: mt.MetricsTable, points: float,
                        loss: float) -> Optional[Finding]:
    r = mt.regression(s.values, name)
    if r is None:
        return None
    is_acc = mt.kind(name) == "accuracy"
    if (is_acc and r["drop"] <= points) or (not is_acc and r["drop"] <= loss):
        return None
    where = "the last checkpoint" if table.source == "checkpoints" else f"the last {table.x_label}"
    amount = f"{r['drop']:.2f} points" if is_acc else f"{r['drop']:.0%}"
    limit = f"{points:g} points" if is_acc else f"{loss:.0%}"
    best_at = float(s.steps[int(np.argmax(s.values) if is_acc else np.argmin(s.values))])
    return Finding(
        id="metric-regression", severity="warning", section="curves",
        title=f"{name} at {where} is {amount} worse than its best",
        evidence=f"{name}: last {r['last']:.4g} at {table.x_label} {s.steps[-1]:g}, best {r['best']:.4g} "
                 f"at {table.x_label} {best_at:g} (source: {table.source}; threshold {limit}). "
                 "An earlier checkpoint may be the better one to ship, or training diverged.")

"""Feature visualization: synthesized inputs that drive chosen channels and classes hardest."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from reportgen.analyses import featureviz as fv
from reportgen.analyses.activations import stage_layers
from reportgen.engine import budget as bud
from reportgen.engine.throughput import cpu_threads, threads_for
from reportgen.model.layers import layer_layouts
from reportgen.model.layout import Layout
from reportgen.model.loading import require_hooks
from reportgen.options import AUTO, Bool, Choice, Float, Int, ListOf, OneOf, Str, auto_or, layers, layout
from reportgen.render.featureviz import render_featureviz
from reportgen.sections.base import BuildContext, Section, register_section

# Default compute budget in GMACs of forward-pass work (backward counted as 2 more):
# about a minute on two CPU cores, a few seconds on a GPU.
BUDGET_GMACS = {"cpu": 300.0, "cuda": 20000.0}
CHANNEL_RULE = "highest mean activation over the probe images (ties: lower channel index)"


def choose_layers(ctx: BuildContext, layers: Any) -> List[str]:
    """auto: the deepest resolution stage, plus a middle one when the model has three or more."""
    if layers != "auto":
        return [layers] if isinstance(layers, str) else list(layers)
    stages = stage_layers(ctx.model, ctx.example())
    picks = [stages[len(stages) // 2], stages[-1]] if len(stages) >= 3 else stages[-1:]
    return list(dict.fromkeys(picks))


def reference_batches(ctx: BuildContext, limit: int, batch_size: int = 32) -> Dict[str, List[torch.Tensor]]:
    """Normalized real images to compare against: all probes, and up to ``limit`` dataset images."""
    out: Dict[str, List[torch.Tensor]] = {"probes": [], "dataset": []}
    if ctx.probes:
        out["probes"].append(ctx.probe_batch())
    if ctx.dataset and limit > 0:
        from reportgen.sections.dataset_pass import dataset_for

        data = dataset_for(ctx)
        picks = np.linspace(0, len(data) - 1, min(limit, len(data))).round().astype(int)
        tensors = [data.load(int(i))[0] for i in sorted(set(picks.tolist()))]
        for start in range(0, len(tensors), batch_size):
            out["dataset"].append(torch.stack(tensors[start:start + batch_size]).to(ctx.device))
    return out


def choose_layouts(ctx: BuildContext, layers: List[str], stated: str = AUTO) -> Dict[str, Layout]:
    """How each layer holds its map (``stated`` applies to named layers; auto ones are detected).
    A layer without a map ((N, C) features, which a channel objective may use too) is left out."""
    return layer_layouts(ctx.model, ctx.example(), layers, stated, ctx.output_key, strict=stated != AUTO)


def choose_channels(ctx: BuildContext, layer: str, count: Any, refs: Sequence[torch.Tensor],
                    layout: Optional[Layout] = None) -> List[int]:
    """A list in the spec is used as is; a count picks the most active channels on ``refs``."""
    if isinstance(count, list):
        return [int(c) for c in count]
    if not refs:
        return list(range(int(count)))
    means = fv.channel_means(ctx.model, refs, layer, ctx.output_key, layout)
    return fv.top_channels(means, int(count))


def choose_classes(ctx: BuildContext, spec_classes: Any, limit: int) -> List[int]:
    """predicted: each probe's target (or its predicted class), first occurrences, at most ``limit``."""
    if spec_classes in (None, False, "none") or spec_classes == []:
        return []
    if isinstance(spec_classes, list):
        return [c if isinstance(c, int) else ctx.classes.index(c) for c in spec_classes]
    if not ctx.probes:
        return []
    from reportgen.analyses.summary import top_predictions

    preds = top_predictions(ctx.model, ctx.probe_batch(), 1, ctx.output_key).indices[:, 0]
    picked = [p.target if p.target is not None else int(c) for p, c in zip(ctx.probes, preds)]
    return list(dict.fromkeys(picked))[:limit]


def _gmacs(ctx: BuildContext, opts: Dict[str, Any]) -> float:
    budget = opts["budget_gmacs"]
    return BUDGET_GMACS.get(ctx.device.type, BUDGET_GMACS["cuda"]) if budget == "auto" else float(budget)


def plan(ctx: BuildContext, opts: Dict[str, Any], n: int) -> Dict[str, Any]:
    """Synthesis size and steps that fit the compute budget (see fv.plan_budget).

    Steps left on auto are the build plan's choice (at most 128), and may shrink
    further to the GMACs budget; written steps are kept, only the size shrinks.
    """
    c, h, w = ctx.input_size
    size = min(int(opts["size"]), h, w)
    cache: Dict[int, Optional[int]] = {}

    def macs_at(s: int) -> Optional[int]:
        if s not in cache:
            cache[s] = fv.forward_macs(ctx.model, c, s, ctx.output_key)
        return cache[s]

    if macs_at(size) is None:         # a fixed-size model: only its own input size works
        size = h
    gmacs = _gmacs(ctx, opts)
    wanted = int(ctx.planned("featureviz", "steps", opts["steps"], bud.FEATUREVIZ_STEPS[0]))
    new_size, steps = fv.plan_budget(macs_at, size, wanted, n, gmacs * 1e9, min_size=min(64, size),
                                     min_steps=min(32, wanted) if opts["steps"] == AUTO else wanted)
    step_macs = (macs_at(new_size) or 0) * n
    return {"size": new_size, "steps": steps, "requested_size": size, "requested_steps": wanted,
            "scaled": (new_size, steps) != (size, wanted), "budget_gmacs": gmacs,
            "threads": threads_for(ctx.device, step_macs, fv.SMALL_WORK_MACS)}


def _reference_text(counts: Dict[str, int]) -> str:
    parts = [f"{counts[k]} {k[:-1] if k == 'probes' else k} image(s)" for k in ("probes", "dataset") if counts[k]]
    return " and ".join(parts)


@dataclass(frozen=True)
class FeatureVizSectionResult:
    featureviz: fv.FeatureVizResult
    layers_auto: bool
    plan: Dict[str, Any]
    channel_rule: str
    chooser: str
    references: int
    reference_sources: Dict[str, int]
    classes_rule: Any
    layouts: Dict[str, str] = field(default_factory=dict)   # layer -> nchw | nhwc | tokens


@register_section("featureviz")
class FeatureVizSection(Section):
    title = "Feature visualization"
    partial = "sections/featureviz.html.j2"
    order = 75
    options = {
        "layers": layers(spatial=True, doc="layers whose channels are synthesized (auto: the deepest stage, "
                                           "plus a middle one)"),
        "channels": OneOf(Int(min=1, max=64), ListOf(Int(min=0), min_len=1), default=4,
                          expected="a number of channels or a list of channel indices",
                          doc="a count (the most active on the probes) or a list of indices"),
        "classes": OneOf(Choice(["predicted", "none"]),
                         ListOf(OneOf(Int(min=0), Str(), expected="a class index or name"), min_len=1),
                         default="predicted", expected="'predicted', 'none' or a list of classes",
                         doc="class logits to maximize: the probes' classes, none, or a list"),
        "max_classes": Int(min=0, max=32, default=4, doc="at most this many classes"),
        "steps": auto_or(Int(min=1, max=4096), expected="'auto' or a number of steps (1 to 4096)",
                         doc=f"optimization steps (auto: {bud.FEATUREVIZ_STEPS[0]}, fewer when the build's time "
                             "budget needs it, then scaled down to the GMACs budget; written: kept)"),
        "size": Int(min=8, max=512, default=128, doc="synthesized side, capped at the model input size"),
        "lr": Float(min=0, default=0.05, doc="Adam learning rate"),
        "tv": Float(min=0, default=0.0, doc="total-variation penalty"),
        "fft": Bool(default=True, doc="Fourier-space parameterization"),
        "decorrelate": Bool(default=True, doc="colour decorrelation"),
        "batch_size": Int(min=1, default=16, doc="objectives optimized together"),
        "budget_gmacs": OneOf(Choice(["auto"]), Float(min=0), default="auto",
                        expected="'auto' or GMACs (auto: 300 on CPU, 20000 on CUDA)",
                        doc="compute budget in GMACs (auto: 300 on CPU, 20000 on CUDA)"),
        "reference_images": Int(min=0, default=64,
                                doc="dataset images whose activations the synthesized ones are compared to"),
        "layout": layout(),
    }
    aliases = {"budget": "budget_gmacs"}

    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        """Objectives x steps forward/backward passes at the synthesis size, bounded by the GMACs budget."""
        c, h, w = ctx.input_size
        layers = options["layers"]
        n_layers = 2 if layers == AUTO else len(layers) if isinstance(layers, list) else 1
        channels = options["channels"]
        n_channels = len(channels) if isinstance(channels, list) else int(channels)
        classes = options["classes"]
        n_classes = (0 if classes == "none" else len(classes) if isinstance(classes, list)
                     else min(int(options["max_classes"]), len(ctx.probes)))
        n = n_layers * n_channels + n_classes
        size = min(int(options["size"]), h, w)
        macs = fv.forward_macs(ctx.model, c, size, ctx.output_key)
        area = size * size / float(h * w) if macs is not None else 1.0
        cap = _gmacs(ctx, options) * 1e9 / (3.0 * macs) if macs and options["steps"] == AUTO else float("inf")

        def cost(steps: Any) -> bud.Cost:
            return bud.Cost(backward=min(n * int(steps), cap) * area)

        refs = len(ctx.probes) + (min(int(options["reference_images"]), len(ctx.dataset)) if ctx.dataset else 0)
        steps = bud.knob("steps", "steps", options["steps"], bud.FEATUREVIZ_STEPS, cost, label="feature visualization")
        return bud.Needs(fixed=bud.Cost(forward=refs), knobs=(steps,))

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> FeatureVizSectionResult:
        require_hooks(ctx.model, "Feature visualization")
        opts = options
        refs = reference_batches(ctx, int(opts["reference_images"]))
        chooser = refs["probes"] or refs["dataset"]
        layers = choose_layers(ctx, opts["layers"])
        layouts = choose_layouts(ctx, layers, AUTO if opts["layers"] == "auto" else opts["layout"])
        objectives = [fv.Objective("channel", ch, layer) for layer in layers
                      for ch in choose_channels(ctx, layer, opts["channels"], chooser, layouts.get(layer))]
        objectives += [fv.Objective("class", k) for k in choose_classes(ctx, opts["classes"],
                                                                       int(opts["max_classes"]))]
        if not objectives:
            raise ValueError("nothing to visualize: no channels and no classes chosen")
        budget = plan(ctx, opts, len(objectives))
        params = fv.FeatureVizParams(steps=budget["steps"], size=budget["size"], lr=float(opts["lr"]),
                                     tv=float(opts["tv"]), fft=bool(opts["fft"]),
                                     decorrelate=bool(opts["decorrelate"]),
                                     batch_size=int(opts["batch_size"]), seed=ctx.seed)
        pre = ctx.spec["preprocess"]
        with cpu_threads(budget["threads"]):
            result = fv.visualize(ctx.model, objectives, ctx.input_size[0], pre["mean"], pre["std"], params,
                                  ctx.output_key, reference=refs["probes"] + refs["dataset"], device=ctx.device,
                                  layouts=layouts)
        n_refs = {k: sum(len(b) for b in v) for k, v in refs.items()}
        return FeatureVizSectionResult(
            featureviz=result, layers_auto=opts["layers"] == "auto", plan=budget,
            channel_rule=CHANNEL_RULE if not isinstance(opts["channels"], list) else "listed in the spec",
            chooser="probes" if refs["probes"] else ("dataset" if refs["dataset"] else "none"),
            references=n_refs["probes"] + n_refs["dataset"], reference_sources=n_refs,
            classes_rule=opts["classes"] if isinstance(opts["classes"], str) else "listed",
            layouts={name: lay.kind for name, lay in layouts.items()})

    def view(self, result: FeatureVizSectionResult, ctx: BuildContext) -> Dict[str, Any]:
        view = render_featureviz(result.featureviz, ctx.classes)
        view.update(plan=result.plan, layers_auto=result.layers_auto, channel_rule=result.channel_rule,
                    chooser=result.chooser, references=result.references, device=ctx.device.type,
                    reference_text=_reference_text(result.reference_sources))
        return view

    def summary(self, result: FeatureVizSectionResult) -> Dict[str, Any]:
        r = result.featureviz
        ratio = r.ratio()
        layers = list(dict.fromkeys(l for l in r.layers if l is not None))
        return {
            "layers": layers, "layers_auto": result.layers_auto, "channel_rule": result.channel_rule,
            "layouts": {l: result.layouts[l] for l in layers if l in result.layouts},
            "channels": {l: [i for i, k, ll in zip(r.indices, r.kinds, r.layers) if k == "channel" and ll == l]
                         for l in layers},
            "classes": [i for i, k in zip(r.indices, r.kinds) if k == "class"],
            "size": r.size, "steps": r.steps, "scaled_to_budget": result.plan["scaled"],
            "budget_gmacs": result.plan["budget_gmacs"], "reference_images": result.references,
            "achieved": [float(v) for v in r.activation],
            "ratio_to_reference_max": None if ratio is None else
            [float(v) if np.isfinite(v) else None for v in ratio],
        }

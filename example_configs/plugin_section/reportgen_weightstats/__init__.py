"""Weight statistics: per convolution and linear layer, the mean, spread and share of near-zero weights.

An example of a third-party reportgen section. reportgen finds it through the
entry point ``weightstats`` in the group ``reportgen.sections`` (pyproject.toml);
its options and findings threshold are checked by the spec schema like the
built-in ones, and its partial is found in ``template_dir``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from torch import nn

from reportgen.errors import NotApplicable
from reportgen.options import Float, layers
from reportgen.sections.base import BuildContext, Finding, Section

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class LayerWeights:
    layer: str
    type: str
    shape: Tuple[int, ...]
    size: int          # number of weights
    mean: float
    std: float         # population standard deviation
    near_zero: int     # weights with |w| < eps
    sparsity: float    # near_zero / size


@dataclass(frozen=True)
class WeightStats:
    layers: Tuple[LayerWeights, ...]
    eps: float
    auto: bool         # the layers were chosen automatically


def _type_name(module: nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__   # TorchScript keeps the name


def weighted_layers(model: nn.Module) -> List[str]:
    """Every convolution and linear layer, in registration order (TorchScript modules by name)."""
    names = {cls.__name__ for cls in WEIGHTED}
    return [name for name, m in model.named_modules()
            if name and (isinstance(m, WEIGHTED) or _type_name(m) in names)]


def weight_stats(model: nn.Module, names: Sequence[str], eps: float, auto: bool = False) -> WeightStats:
    """The weight statistics of the layers ``names``; reads the weights, changes nothing."""
    modules = dict(model.named_modules())
    stats = []
    for name in names:
        module = modules[name]
        weight = getattr(module, "weight", None)
        if weight is None or not hasattr(weight, "detach"):
            raise ValueError(f"layer {name!r} ({_type_name(module)}) has no weight tensor")
        w = weight.detach().cpu().double().numpy()
        near_zero = int((np.abs(w) < eps).sum())
        stats.append(LayerWeights(layer=name, type=_type_name(module), shape=tuple(w.shape), size=int(w.size),
                                  mean=float(w.mean()), std=float(w.std()), near_zero=near_zero,
                                  sparsity=near_zero / w.size))
    return WeightStats(tuple(stats), float(eps), auto)


class WeightStatsSection(Section):
    title = "Weight statistics"
    partial = "sections/weightstats.html.j2"
    template_dir = Path(__file__).resolve().parent / "templates"
    order = 95                      # after the built-in sections
    options = {
        "layers": layers(doc="layers whose weights are summarized (auto: every convolution and linear layer)"),
        "eps": Float(min=0, default=1e-3, doc="a weight with |w| below this counts as zero"),
    }
    thresholds = {
        "sparse_layer_fraction": Float(min=0, max=1, default=0.5,
                                       doc="share of near-zero weights above which a layer is flagged mostly zero"),
    }

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> WeightStats:
        auto = options["layers"] == "auto"
        names = weighted_layers(ctx.model) if auto else list(options["layers"])
        if not names:
            raise NotApplicable("the model has no convolution or linear layer",
                                hint="Name the layers to summarize under sections.weightstats.layers.")
        return weight_stats(ctx.model, names, options["eps"], auto)

    def view(self, result: WeightStats, ctx: BuildContext) -> Dict[str, Any]:
        limit = ctx.threshold("sparse_layer_fraction")
        rows = [{"layer": s.layer, "type": s.type, "shape": "×".join(map(str, s.shape)), "size": s.size,
                 "mean": s.mean, "std": s.std, "sparsity": s.sparsity, "flag": s.sparsity > limit}
                for s in result.layers]
        return {"rows": rows, "eps": result.eps, "auto": result.auto, "limit": limit,
                "n_flagged": sum(r["flag"] for r in rows)}

    def summary(self, result: WeightStats) -> Dict[str, Any]:
        return {"eps": result.eps, "layers_auto": result.auto,
                "per_layer": {s.layer: {"type": s.type, "weights": s.size, "mean": s.mean, "std": s.std,
                                        "sparsity": s.sparsity} for s in result.layers}}

    def findings(self, result: WeightStats, ctx: BuildContext) -> List[Finding]:
        limit = ctx.threshold("sparse_layer_fraction")
        return [Finding(
            id=f"sparse-weights-{s.layer}", severity="warning", section=self.name, layer=s.layer,
            title=f"{s.sparsity:.0%} of the weights of {s.layer} are (near) zero",
            evidence=f"{s.near_zero} of {s.size} weights have |w| < {result.eps:g} (a layer is flagged above "
                     f"{limit:.0%}). A mostly-zero layer was pruned, or its weights collapsed (strong weight "
                     "decay or L1, or a layer that receives no gradient); if it was not pruned on purpose, "
                     "check how it was trained.")
            for s in result.layers if s.sparsity > limit]

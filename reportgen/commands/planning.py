"""The build's budget plan: measure the machine, price every section, choose, and account.

``reportgen.engine.budget`` holds the pure part (costs and choices); this
module does what touches the build: it times the model
(``reportgen.engine.throughput``), keeps that measurement stable across
rebuilds (the cache folder holds the last one), asks each section what it will
cost (``Section.budget``) and how heavy its pictures are (``Section.page_bytes``),
and writes the caption sentence and the report.json entries that say what
was chosen and why.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from reportgen.cache import digest_of
from reportgen.engine import budget as bud
from reportgen.engine import throughput as tp
from reportgen.report import Outcome
from reportgen.sections.base import ask_sections

# How the caption names an option (section-specific names first).
OPTION_WORDS = {("gradients", "steps"): "integrated-gradients steps", ("gradients", "samples"): "SmoothGrad samples",
                ("featureviz", "steps"): "optimization steps", "faithfulness_steps": "deletion/insertion steps",
                "scored_probes": "probes scored",
                "window": "window", "stride": "stride"}


def budget_seconds(spec: Any, override: Union[None, float, str], device: torch.device) -> Tuple[float, str]:
    """The time budget (seconds) and where it came from: --budget, the spec, or the device's default."""
    if override is not None and override != "auto":
        return float(override), "--budget"
    value = spec.get("budget_s", "auto") if override is None else "auto"
    if value != "auto":
        return float(value), "spec"
    kind = "cuda" if device.type == "cuda" else "cpu"
    return bud.DEFAULT_BUDGET_S[kind], f"default for {kind}"


def parse_budget(text: str) -> Union[float, str]:
    """``--budget``: seconds (> 0) or auto; ValueError otherwise (argparse shows it)."""
    if text == "auto":
        return text
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(text)
    return value


def architecture(model: Any) -> Optional[str]:
    """The model's architecture, hashed: its modules as printed and its tensors' shapes and types, not their values.

    Throughput belongs to the architecture, the input size and the machine, not
    to the weights: a model and its quantized or fine-tuned copy share one.
    """
    if model is None:
        return None
    tensors = [(n, list(t.shape), str(t.dtype)) for kind in (model.named_parameters, model.named_buffers)
               for n, t in kind()]
    return digest_of({"modules": repr(model), "tensors": tensors})


def store_key(ctx: Any) -> str:
    """One stored measurement per architecture, input size, device, thread count and machine."""
    return digest_of({"architecture": architecture(ctx.model), "input": list(ctx.input_size),
                      "device": str(ctx.device), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "node": platform.node()})


def forward_macs(ctx: Any) -> Optional[int]:
    """MACs of one forward pass of one probe, or None when the summary cannot count them."""
    from reportgen.analyses.summary import summarize

    try:
        return int(summarize(ctx.model, ctx.example(), ctx.output_key).total_macs) or None
    except Exception:  # noqa: BLE001 - a model the summary cannot hook (TorchScript): time it
        return None


def throughput(ctx: Any, budget_s: float, store: Optional[Path],
               macs: Optional[int]) -> Tuple[bud.Throughput, float]:
    """The model's throughput and the seconds finding it took.

    A small model's comes from its MACs (``macs``, from :func:`forward_macs`;
    None when they cannot be counted); a larger one's is measured, and kept
    stable across rebuilds when ``store`` is a folder.
    """
    import time

    started = time.perf_counter()
    if macs is not None and macs <= bud.SMALL_MODEL_MACS:
        return bud.reference(macs, ctx.device.type), time.perf_counter() - started
    new = tp.measure(ctx.model, ctx.example(), budget_s, ctx.output_key)
    spent = time.perf_counter() - started
    if store is None:
        return new, spent
    key = store_key(ctx)
    kept = bud.stable(new, tp.stored(store, key))
    if kept.source == "measured":
        tp.store(store, key, new)
    return kept, spent


def section_threads(ctx: Any, macs: Optional[int]) -> Optional[int]:
    """Intra-op CPU threads for the sections: one for a small model (``tp.threads_for``)."""
    return tp.threads_for(ctx.device, macs, bud.SMALL_MODEL_MACS)


def section_needs(sections: Dict[str, Any], ctx: Any) -> Dict[str, bud.Needs]:
    """Each applicable section's cost; one that does not say is priced as one pass over the probes."""
    found = ask_sections(sections, ctx, lambda section: section.budget(ctx, section.options))
    return {name: needs if needs is not None else bud.Needs(fixed=bud.Cost(forward=len(ctx.probes)))
            for name, needs in found.items()}


def page_shares(sections: Dict[str, Any], ctx: Any, page_bytes: int) -> Dict[str, int]:
    """Shares of the page for the sections that can shrink their pictures, when the page would not fit."""
    found = ask_sections(sections, ctx, lambda section: section.page_bytes(ctx, section.options))
    weights = {name: float(v) for name, v in found.items() if v}
    room = page_bytes * (1 - bud.PAGE_RESERVE_FRACTION)
    if sum(weights.values()) <= room:
        return {}
    return bud.page_shares(weights, room)


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "×".join(str(x) for x in v)
    return str(v)


def _words(section: str, option: str) -> str:
    return OPTION_WORDS.get((section, option)) or OPTION_WORDS.get(option) or option.replace("_", " ")


def note(section: str, plan: bud.Plan, actual_s: Optional[float] = None) -> Optional[str]:
    """The caption's sentences: what was chosen automatically, why, and its estimated time.

    The estimate comes from the stored throughput (kept across rebuilds within
    its tolerance), so a rebuild on the same machine writes the same sentence;
    the actual time changes every run and is added only when the spec asks for
    run-specific text (``output.timestamp``). report.json always has both.
    """
    sp = plan.sections.get(section)
    if sp is None or not sp.auto:
        return None
    chosen = ", ".join(f"{_words(section, o)} {_value(sp.choices[o])}" for o in sp.auto)
    budget = bud.duration(plan.budget_s)
    took = f", took {bud.duration(actual_s)}" if actual_s is not None else ""
    where = "on this machine" if plan.throughput.source != "reference" else "at the small-model reference speed"
    estimate = f" Estimated {bud.duration(sp.estimated_s)} {where}{took}."
    if not sp.scaled:
        return (f"Automatic settings: {chosen}, the full settings, which fit the build's {budget} time budget."
                + estimate)
    best = ", ".join(f"{_words(section, o)} {_value(sp.best[o])}" for o in sp.scaled)
    why = (f"as far as automatic settings go, to come as close as this machine allows to the build's {budget} "
           "time budget" if sp.lowest else f"so the build fits its {budget} time budget")
    return (f"Automatic settings: {chosen}, scaled down from {best} (estimated {bud.duration(sp.full_s)}), "
            f"{why}.{estimate}")


def section_entry(section: str, plan: Optional[bud.Plan], seconds: float, cached: bool,
                  share: Optional[int]) -> Optional[Dict[str, Any]]:
    """``sections.<name>.budget`` in report.json, or None for a section with nothing planned."""
    sp = plan.sections.get(section) if plan is not None else None
    if (sp is None or not sp.choices) and share is None:
        return None
    out: Dict[str, Any] = sp.to_json() if sp is not None and sp.choices else {}
    out["actual_s"] = round(seconds, 2)
    if cached:
        out["cached"] = True
    if share is not None:
        out["page_share_bytes"] = share
    return out


def annotate(outcomes: Dict[str, Outcome], ctx: Any) -> None:
    """Each outcome's caption sentence (``budget_note``) and report.json entry (``budget``)."""
    for name, outcome in outcomes.items():
        actual = outcome.seconds if ctx.spec["output"]["timestamp"] and not outcome.cached else None
        outcome.budget_note = note(name, ctx.plan, actual) if outcome.view is not None and ctx.plan else None
        outcome.budget = section_entry(name, ctx.plan, outcome.seconds, outcome.cached, ctx.page_share(name))


def build_entry(plan: bud.Plan, source: str, measure_s: float, actual_s: float, page_size: Optional[int],
                page_budget: int, shares: Dict[str, int]) -> Dict[str, Any]:
    """The top-level ``budget`` of report.json (``page_size`` None: no page of its own, a compare's side)."""
    out = {"seconds": plan.budget_s, "source": source, "throughput": plan.throughput.to_json(),
           "measure_s": round(measure_s, 3), "reserve_s": round(plan.reserve_s, 2),
           "planned_s": round(plan.planned_s, 2), "actual_s": round(actual_s, 2), "over": plan.over,
           "choices": {name: dict(sp.choices) for name, sp in plan.sections.items() if sp.choices}}
    if page_size is not None:
        out["page"] = {"bytes": page_size, "budget_bytes": page_budget, "shares": dict(shares)}
    return out


def overshoot(plan: Optional[bud.Plan], outcomes: Dict[str, Outcome]) -> Optional[Dict[str, Any]]:
    """The sections computed under a timed plan took far longer than it estimated: how much, else None.

    Only sections computed here count (a cached one took no time); only a plan
    priced from a clock is judged (a small model's reference price is no
    measurement to redo); see ``budget.overshot`` for the rule.
    """
    if plan is None or plan.throughput.source not in ("measured", "stored"):
        return None
    ran = [n for n, o in outcomes.items() if not o.cached and n in plan.sections]
    estimated = sum(plan.sections[n].estimated_s for n in ran)
    actual = sum(outcomes[n].seconds for n in ran)
    if not bud.overshot(estimated, actual):
        return None
    return {"estimated_s": round(estimated, 2), "actual_s": round(actual, 2),
            "factor": round(actual / estimated, 2) if estimated > 0 else None, "sections": ran}


def forget(ctx: Any, store: Optional[Path]) -> bool:
    """Drop the throughput stored for ``ctx``'s model (True when one was stored)."""
    return store is not None and tp.drop(store, store_key(ctx))


def overshoot_line(over: Dict[str, Any], dropped: bool) -> str:
    """The stderr line for an overshoot."""
    factor = f", {over['factor']:.1f}× " if over["factor"] is not None else ", over "
    then = ("the stored throughput is dropped, so the next build measures the machine again" if dropped
            else "no throughput is stored (no cache folder), so the next build measures the machine again")
    return (f"reportgen: warning: the sections took {bud.duration(over['actual_s'])}{factor}the planned "
            f"{bud.duration(over['estimated_s'])} (the machine is busier or slower than when it was measured); "
            f"{then}")


def warn(message: str) -> None:
    """A warning on stderr, shown under --quiet too (it is no progress line)."""
    print(message, file=sys.stderr)

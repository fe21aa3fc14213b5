"""Calibration: does the model's confidence match how often it is right? (Guo et al. 2017)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from reportgen.analyses import calibration as cal
from reportgen.analyses.dataset_pass import Taps
from reportgen.engine import budget as bud
from reportgen.options import Float, Int
from reportgen.render.audit import RELIABILITY_CSS, reliability_svg
from reportgen.sections.audit import clean_pass, prediction_taps, require_labels
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.dataset_pass import pass_cost


@dataclass(frozen=True)
class CalibrationSectionResult:
    calibration: cal.CalibrationResult
    label_note: str


def judge(r: cal.CalibrationResult, limit: float) -> Optional[str]:
    """"overconfident" / "underconfident" when ECE's interval lies above ``limit``, else None."""
    if not r.n or not r.ece_ci[0] > limit:
        return None
    return "overconfident" if r.accuracy < r.confidence else "underconfident"


@register_section("calibration")
class CalibrationSection(Section):
    title = "Calibration"
    partial = "sections/calibration.html.j2"
    order = 83
    requires = ("dataset",)
    options = {
        "bootstrap": Int(min=20, max=5000, default=cal.BOOTSTRAP,
                         doc="bootstrap resamples of the ECE interval (seeded by the spec's seed)"),
    }
    thresholds = {
        "ece": Float(min=0, max=1, default=0.05,
                     doc="ECE above which the model is over- or underconfident (its 95 % interval must lie above)"),
    }

    def dataset_taps(self, ctx: BuildContext, options: Dict[str, Any]) -> Optional[Taps]:
        return prediction_taps(ctx)

    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        """The dataset pass, when this section owns it (errors, top-k or embeddings usually do)."""
        return bud.Needs(fixed=pass_cost(ctx, self.name))

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> CalibrationSectionResult:
        labels, found = require_labels(ctx, "Calibration")
        run = clean_pass(ctx, labels, found.names)
        return CalibrationSectionResult(run.calibration_result(int(options["bootstrap"]), ctx.seed), found.note)

    def view(self, result: CalibrationSectionResult, ctx: BuildContext) -> Dict[str, Any]:
        r = result.calibration
        limit = ctx.threshold("ece")
        verdict = judge(r, limit)
        # plain values only: a view holding the result object is not cached (the cache stores JSON)
        shown = {k: getattr(r, k) for k in ("n", "bins", "ece", "adaptive_ece", "nll", "brier", "temperature",
                                            "ece_after_temperature", "accuracy", "confidence",
                                            "temperature_clamped", "resamples")}
        return {"r": {**shown, "ece_ci": list(r.ece_ci)}, "limit": limit, "verdict": verdict, "css": RELIABILITY_CSS,
                "svg": reliability_svg(r.reliability(), "Reliability diagram: accuracy per confidence bin, with "
                                       "the gap to the bin's mean confidence and a histogram of confidences",
                                       after=r.reliability(r.sums_after)),
                "label_note": result.label_note}

    def summary(self, result: CalibrationSectionResult) -> Dict[str, Any]:
        r = result.calibration
        return {"n": r.n, "bins": r.bins, "ece": r.ece, "ece_ci": list(r.ece_ci), "adaptive_ece": r.adaptive_ece,
                "nll": r.nll, "brier": r.brier, "temperature": r.temperature,
                "ece_after_temperature": r.ece_after_temperature, "reliability": r.reliability(),
                "accuracy": r.accuracy, "mean_confidence": r.confidence, "bootstrap": r.resamples,
                "temperature_at_grid_end": r.temperature_clamped}

    def findings(self, result: CalibrationSectionResult, ctx: BuildContext) -> List[Finding]:
        r = result.calibration
        limit = ctx.threshold("ece")
        verdict = judge(r, limit)
        if verdict is None:
            return []
        how = "more" if verdict == "overconfident" else "less"
        return [Finding(
            id=verdict, severity="warning", section="calibration",
            title=f"The model is {verdict}: ECE {r.ece:.3f}",
            evidence=f"ECE {r.ece:.3f} (95% CI {r.ece_ci[0]:.3f}–{r.ece_ci[1]:.3f}, {r.n} images, {r.bins} bins) lies "
                     f"above findings.ece {limit:.3f}; it is {how} confident ({r.confidence:.1%} mean top-1 "
                     f"confidence) than accurate ({r.accuracy:.1%}). A temperature of {r.temperature:.2f} "
                     f"(fitted by NLL) gives ECE {r.ece_after_temperature:.3f}.")]

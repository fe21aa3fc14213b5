"""The audit in a compare (SPEC.md, "Audit"): accuracy, ECE, robustness and shortcuts, BASE against NEW.

Read from each side's section summaries (both sides ran on NEW's dataset), never
recomputed: ``comparison.audit`` in report.json, the verdict's sentences, and the
page's side-by-side view. A side whose section did not run (or did not apply)
gives None, and a robustness row a side lacks gives None on that side.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from reportgen.report import Outcome, summary_of

ROBUSTNESS_REGRESSION = 0.05   # mean accuracy (or flip rate) over severities worse by this much: named


def audit_json(base_out: Dict[str, Outcome], new_out: Dict[str, Outcome]) -> Dict[str, Any]:
    sides = {"base": base_out, "new": new_out}

    def pair(section: str, key: str) -> Dict[str, Any]:
        return {side: summary_of(out, section).get(key) for side, out in sides.items()}

    robustness: Dict[str, Dict[str, Any]] = {}
    for side, out in sides.items():
        for name, v in (summary_of(out, "robustness").get("corruptions") or {}).items():
            row = robustness.setdefault(name, {"base": None, "new": None})
            row[side] = v["accuracy"] if v["accuracy"] is not None else v["flip_rate"]
    return {"accuracy": pair("errors", "accuracy"), "ece": pair("calibration", "ece"),
            "ece_ci": pair("calibration", "ece_ci"),
            "mean_accuracy_drop": pair("robustness", "mean_accuracy_drop"),
            "severities": pair("robustness", "severities"),
            "robustness_metric": "accuracy" if pair("robustness", "clean_accuracy")["new"] is not None
            else "flip_rate",
            "robustness": robustness,
            "shortcuts": {side: sorted(s["class"] for s in summary_of(out, "shortcuts").get("suspected") or [])
                          for side, out in sides.items()}}


def _mean(values: Optional[List[float]]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def robustness_changes(audit: Dict[str, Any]) -> Dict[str, float]:
    """Per corruption, NEW's mean over severities minus BASE's (accuracy: negative is worse), same severities only."""
    sev = audit["severities"]
    if not sev["base"] or sev["base"] != sev["new"]:
        return {}
    out = {}
    for name, row in audit["robustness"].items():
        b, n = _mean(row["base"]), _mean(row["new"])
        if b is not None and n is not None:
            out[name] = n - b
    return out


def audit_sentences(audit: Dict[str, Any]) -> List[str]:
    """The verdict's audit sentences: a calibration or robustness regression, a new shortcut."""
    out: List[str] = []
    ece, ci = audit["ece"], audit["ece_ci"]
    if ece["base"] is not None and ece["new"] is not None:
        if ci["new"][0] > ci["base"][1]:
            out.append(f"Calibration regressed: ECE {ece['base']:.3f} → {ece['new']:.3f} (the intervals do "
                       "not overlap).")
        elif ci["new"][1] < ci["base"][0]:
            out.append(f"Calibration improved: ECE {ece['base']:.3f} → {ece['new']:.3f}.")
    changes = robustness_changes(audit)
    accuracy = audit["robustness_metric"] == "accuracy"
    worse = {k: v for k, v in changes.items() if (-v if accuracy else v) > ROBUSTNESS_REGRESSION}
    if worse:
        listed = ", ".join(f"{k} {v * 100:+.1f} points" for k, v in sorted(worse.items(), key=lambda kv: kv[1]
                                                                          if accuracy else -kv[1]))
        what = "mean accuracy over severities" if accuracy else "mean flip rate over severities"
        out.append(f"Robustness regressed under {len(worse)} corruption(s) ({what}): {listed}.")
    drop = audit["mean_accuracy_drop"]
    if drop["base"] is not None and drop["new"] is not None and not worse:
        out.append(f"Mean accuracy drop under corruptions: {drop['base'] * 100:.1f} → {drop['new'] * 100:.1f} points.")
    new_shortcuts = sorted(set(audit["shortcuts"]["new"]) - set(audit["shortcuts"]["base"]))
    if new_shortcuts:
        out.append(f"New suspected shortcut(s): {', '.join(new_shortcuts)}.")
    return out

"""Robustness: accuracy (or prediction flips) under common corruptions (Hendrycks & Dietterich 2019)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List

from reportgen.analyses import corruptions as cr
from reportgen.analyses import robustness as rb
from reportgen.engine import budget as bud
from reportgen.options import AUTO, Choice, Float, Int, ListOf, auto_or
from reportgen.render.audit import DROP_CMAP, heat_cell, thumb
from reportgen.sections.audit import dataset_labels, given_robustness
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.dataset_pass import dataset_for

ALL_SEVERITIES = [1, 2, 3, 4, 5]
FEWER_SEVERITIES = [1, 3, 5]
JUDGED_SEVERITY = 2
MIN_IMAGES = 50          # auto keeps three severities down to this many images (or the dataset, when smaller)
MIN_JUDGED_IMAGES = 16   # then only the judged severity, down to this many images


@dataclass(frozen=True)
class RobustnessSectionResult:
    robustness: rb.RobustnessResult
    class_names: List[str]
    label_note: str
    images_total: int                  # dataset images (the pass may use fewer)


def evidence(r: rb.RobustnessResult) -> int:
    """Images a drop is measured on: the labelled ones (accuracy), else all (flip rate)."""
    return int(r.labelled) if r.clean_accuracy is not None else int(r.images)


def fewest_judged(limit: float) -> int:
    """The fewest images a drop is judged on: one image must be at most half the threshold.

    On four images one image is a 25 % drop, the default threshold itself, so a
    single unlucky crop made a healthy pretrained model "fragile" (issue 16).
    """
    return 1 if limit <= 0 else int(math.ceil(2.0 / limit - 1e-9))


def judged(r: rb.RobustnessResult) -> Dict[str, Any]:
    """Per corruption, the accuracy drop (without labels: the flip rate) at severity 2.

    When severity 2 was not run (the plan chose 1, 3, 5), the mean of 1 and 3 stands in and is marked.
    """
    drop = r.drop()
    score = drop if drop is not None else r.flip_rate
    sev = list(r.severities)
    out: Dict[str, Any] = {"metric": "accuracy drop" if drop is not None else "flip rate", "values": {},
                           "interpolated": False}
    for ci, name in enumerate(r.corruptions):
        if JUDGED_SEVERITY in sev:
            out["values"][name] = float(score[ci, sev.index(JUDGED_SEVERITY)])
        elif 1 in sev and 3 in sev:
            out["values"][name] = float((score[ci, sev.index(1)] + score[ci, sev.index(3)]) / 2)
            out["interpolated"] = True
    return out


@register_section("robustness")
class RobustnessSection(Section):
    title = "Robustness"
    partial = "sections/robustness.html.j2"
    order = 84
    requires = ("dataset",)
    options = {
        "corruptions": ListOf(Choice(list(cr.CORRUPTIONS)), min_len=1, default=list(cr.CORRUPTIONS),
                              doc="ImageNet-C corruptions applied after resize/crop, before normalization"),
        "severities": auto_or(ListOf(Int(min=1, max=5), min_len=1),
                              doc="severities 1..5 (auto: all five; 1, 3, 5, then the judged severity "
                                  f"{JUDGED_SEVERITY} alone, when the build's time budget needs it)"),
        "images": auto_or(Int(min=1), doc="dataset images run under every corruption (auto: all, halved while "
                                          f"the budget needs it: to {MIN_IMAGES} at three severities, then at "
                                          f"severity {JUDGED_SEVERITY} alone to {MIN_JUDGED_IMAGES})"),
    }
    thresholds = {
        "robustness_drop": Float(min=0, max=1, default=0.25,
                                 doc="accuracy drop at severity 2 (without labels: flip rate) that makes a "
                                     "corruption fragile"),
    }

    def _ladder(self, ctx: BuildContext, options: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Best first: all severities, then 1, 3, 5, on all images halved down to MIN_IMAGES; then the
        judged severity alone, halved down to MIN_JUDGED_IMAGES (a fragility verdict needs no more)."""
        n = len(ctx.dataset or ())
        sev_auto, img_auto = options["severities"] == AUTO, options["images"] == AUTO
        sev = [ALL_SEVERITIES, FEWER_SEVERITIES] if sev_auto else [options["severities"]]
        imgs = bud.halvings(n, MIN_IMAGES) if img_auto else [min(int(options["images"]), n)]
        out = [{"severities": s, "images": imgs[0]} for s in sev]
        out += [{"severities": sev[-1], "images": i} for i in imgs[1:]]
        if sev_auto:
            last = imgs[-1] if img_auto else imgs[0]
            fewest = bud.halvings(last, MIN_JUDGED_IMAGES) if img_auto else [last]
            out += [{"severities": [JUDGED_SEVERITY], "images": i} for i in fewest]
        return out

    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        """Images x (1 clean + corruptions x severities) forward passes."""
        ladder = self._ladder(ctx, options)
        k = len(options["corruptions"])

        def cost(v: Dict[str, Any]) -> bud.Cost:
            return bud.Cost(forward=v["images"] * (1 + k * len(v["severities"])))
        auto = tuple(o for o in ("severities", "images") if options[o] == AUTO)
        knob = bud.Knob("robustness", tuple(ladder), tuple(cost(v) for v in ladder), auto=auto,
                        label="robustness", scope=f"on {len(ctx.dataset or ())} dataset images")
        return bud.Needs(knobs=(knob,))

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> RobustnessSectionResult:
        best = self._ladder(ctx, options)[0]
        severities = ctx.planned(self.name, "severities", options["severities"], best["severities"])
        n = ctx.planned(self.name, "images", options["images"], best["images"])
        found = dataset_labels(ctx)
        data = ctx.spec["dataset"]
        result = given_robustness(ctx, options["corruptions"]) or rb.robustness_pass(
            ctx.model, dataset_for(ctx), found.labels, options["corruptions"], sorted(set(int(s) for s in severities)),
            n, ctx.dataset_batch(), data["workers"], ctx.device, ctx.output_key, ctx.seed,
            example_severity=JUDGED_SEVERITY, progress=ctx.progress)
        return RobustnessSectionResult(result, list(found.names), found.note, len(ctx.dataset))

    def view(self, result: RobustnessSectionResult, ctx: BuildContext) -> Dict[str, Any]:
        r = result.robustness
        limit = ctx.threshold("robustness_drop")
        j = judged(r)
        enough = evidence(r) >= fewest_judged(limit)
        acc = r.accuracy
        rows = []
        for ci, name in enumerate(r.corruptions):
            values = acc[ci] if acc is not None else r.flip_rate[ci]
            if acc is not None:
                cells = [dict(value=float(v), **heat_cell(float(r.clean_accuracy - v), 0.0, 1.0, DROP_CMAP))
                         for v in values]
            else:
                cells = [dict(value=float(v), **heat_cell(float(v), 0.0, 1.0, DROP_CMAP)) for v in values]
            score = j["values"].get(name)
            rows.append({"name": name, "cells": cells, "judged": score,
                         "fragile": score is not None and score > limit and enough})
        names = result.class_names
        examples = [{"corruption": e["corruption"], "severity": e["severity"], "picture": thumb(e["picture"]),
                     "clean": names[e["clean"]] if e["clean"] < len(names) else str(e["clean"]),
                     "corrupted": names[e["corrupted"]] if e["corrupted"] < len(names) else str(e["corrupted"]),
                     "label": names[e["label"]] if 0 <= e["label"] < len(names) else None}
                    for e in r.examples]
        return {"r": {"images": r.images}, "rows": rows, "severities": list(r.severities), "labelled": r.labelled > 0,
                "clean_accuracy": r.clean_accuracy, "mean_drop": r.mean_accuracy_drop, "worst": r.worst(),
                "limit": limit, "metric": j["metric"], "interpolated": j["interpolated"],
                "judged_enough": enough, "evidence": evidence(r), "min_judged": fewest_judged(limit),
                "fragile": [row["name"] for row in rows if row["fragile"]], "examples": examples,
                "images_total": result.images_total, "label_note": result.label_note}

    def summary(self, result: RobustnessSectionResult) -> Dict[str, Any]:
        r = result.robustness
        acc = r.accuracy
        return {"severities": list(r.severities), "images": r.images, "labelled": r.labelled,
                "clean_accuracy": r.clean_accuracy,
                "corruptions": {name: {"accuracy": None if acc is None else [float(v) for v in acc[ci]],
                                       "flip_rate": [float(v) for v in r.flip_rate[ci]]}
                                for ci, name in enumerate(r.corruptions)},
                "mean_accuracy_drop": r.mean_accuracy_drop, "worst": r.worst()}

    def findings(self, result: RobustnessSectionResult, ctx: BuildContext) -> List[Finding]:
        r = result.robustness
        limit = ctx.threshold("robustness_drop")
        j = judged(r)
        where = "the mean of severities 1 and 3 (severity 2 was not run)" if j["interpolated"] else "severity 2"
        n, fewest = evidence(r), fewest_judged(limit)
        if n < fewest:    # one image would be more than half the threshold: no verdict
            kind = "labelled images" if r.clean_accuracy is not None else "images"
            return [Finding(
                id="robustness-not-judged", severity="info", section="robustness",
                title=f"Robustness shown, not judged: {n} {kind}",
                evidence=f"fragility is judged on at least {fewest} {kind}, so that one image is at most half "
                         f"of findings.robustness_drop {limit:.0%} (here one image is {1 / max(n, 1):.0%}); "
                         "the drops are in the table")]
        out = []
        for name, value in j["values"].items():
            if value > limit:
                base = (f"clean accuracy {r.clean_accuracy:.1%}" if r.clean_accuracy is not None
                        else "no labels, so the share of images whose prediction changes")
                out.append(Finding(
                    id=f"fragile-{name}", severity="warning", section="robustness",
                    title=f"Fragile under {name.replace('_', ' ')}: {j['metric']} {value:.1%} at {where}",
                    evidence=f"{j['metric']} {value:.1%} at {where} over {r.images} images ({base}) exceeds "
                             f"findings.robustness_drop {limit:.0%}"))
        return out

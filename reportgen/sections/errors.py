"""Errors: where the model fails on the labelled dataset (accuracy, confusions, confident mistakes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from reportgen.analyses.confusion import ConfusionResult
from reportgen.analyses.dataset_pass import Taps
from reportgen.engine import budget as bud
from reportgen.options import Float, Int
from reportgen.render.audit import cam_overlay_uri, heat_cell, picture_uri
from reportgen.render.page import public_path
from reportgen.sections.audit import MISTAKES_KEPT, clean_pass, prediction_taps, require_labels
from reportgen.sections.base import BuildContext, Finding, Section, register_section
from reportgen.sections.dataset_pass import dataset_for, pass_cost

CAM_METHOD = "gradcam"


@dataclass(frozen=True)
class ErrorsResult:
    confusion: ConfusionResult
    mistakes: List[Dict[str, Any]]     # each: image, index, true, predicted, confidence, p_true, pictures
    cam_note: Optional[str]            # why the mistakes show no Grad-CAM, if they do not
    label_note: str
    unlabelled: int                    # dataset images without a true class (not counted)


def _cams(ctx: BuildContext, x: torch.Tensor, targets: List[int]) -> np.ndarray:
    from reportgen.analyses.explain import explain

    return explain(ctx.model, x, CAM_METHOD, target=targets, output=ctx.output_key)


@register_section("errors")
class ErrorsSection(Section):
    title = "Errors"
    partial = "sections/errors.html.j2"
    order = 82
    requires = ("dataset",)
    options = {
        "mistakes": Int(min=0, max=MISTAKES_KEPT, default=8,
                        doc="most confident mistakes shown, each with Grad-CAM for the predicted and the true class"),
        "top_confusions": Int(min=1, max=100, default=10, doc="largest off-diagonal cells listed"),
        "classes_shown": Int(min=2, max=60, default=20,
                             doc="classes drawn in the heat table and the per-class table (more classes: those "
                                 "with the most errors, resp. the lowest recall; all are in report.json)"),
    }
    thresholds = {
        "class_gap": Float(min=0, max=1, default=0.10,
                           doc="a class underperforms when its recall's 95 % interval lies entirely below the "
                               "overall accuracy minus this"),
    }

    def dataset_taps(self, ctx: BuildContext, options: Dict[str, Any]) -> Optional[Taps]:
        return prediction_taps(ctx)

    def budget(self, ctx: BuildContext, options: Dict[str, Any]) -> bud.Needs:
        """The dataset pass (when this section owns it), two Grad-CAMs per mistake shown."""
        return bud.Needs(fixed=pass_cost(ctx, self.name) + bud.Cost(backward=2 * int(options["mistakes"])))

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> ErrorsResult:
        labels, found = require_labels(ctx, "The error analysis")
        run = clean_pass(ctx, labels, found.names)
        m = run.mistakes
        shown = min(int(options["mistakes"]), len(m))
        mistakes: List[Dict[str, Any]] = []
        cam_note = None
        if shown:
            ds = dataset_for(ctx)
            loaded = [ds.load(int(i)) for i in m.indices[:shown]]
            x = torch.stack([t for t, _ in loaded]).to(ctx.device)
            try:
                cam_pred = _cams(ctx, x, [int(v) for v in m.predicted[:shown]])
                cam_true = _cams(ctx, x, [int(v) for v in m.true[:shown]])
            except Exception as e:  # noqa: BLE001 - a model Grad-CAM cannot hook: the mistakes still show
                cam_pred = cam_true = None
                cam_note = f"Grad-CAM could not be computed for this model ({type(e).__name__}: {e})."
            for j in range(shown):
                i = int(m.indices[j])
                mistakes.append({
                    "image": public_path(ctx.dataset[i][0], ctx.spec.base_dir), "index": i,
                    "true": found.names[int(m.true[j])], "predicted": found.names[int(m.predicted[j])],
                    "confidence": float(m.confidence[j]), "p_true": float(m.p_true[j]),
                    "display": loaded[j][1],
                    "cam_predicted": None if cam_pred is None else cam_pred[j],
                    "cam_true": None if cam_true is None else cam_true[j]})
        return ErrorsResult(run.confusion, mistakes, cam_note, found.note, int((labels < 0).sum()))

    # ----------------------------------------------------------- judged
    def _judge(self, r: ErrorsResult, gap: float) -> Dict[str, Any]:
        acc = r.confusion.accuracy or 0.0
        limit = acc - gap
        per = r.confusion.per_class()
        judged = {c: v for c, v in per.items() if v["n"]}
        under = [c for c, v in judged.items() if v["recall_ci"][1] < limit]
        return {"limit": limit, "judged": len(judged), "under": under, "per_class": per}

    def view(self, result: ErrorsResult, ctx: BuildContext) -> Dict[str, Any]:
        r, c = result, result.confusion
        gap = ctx.threshold("class_gap")
        judged = self._judge(r, gap)
        per = judged["per_class"]
        k = c.k
        limit = int(self.options["classes_shown"])
        if k <= limit:
            shown = list(range(k))
        else:   # the classes with the most errors (as true or as predicted class), in class order
            errors = c.confusion.sum(axis=0) + c.confusion.sum(axis=1) - 2 * np.diag(c.confusion)
            shown = sorted(np.lexsort((np.arange(k), -errors))[:limit].tolist())
        rows = []
        for i in shown:
            n = int(c.confusion[i].sum())
            cells = []
            for j in shown:
                v = int(c.confusion[i, j])
                share = v / n if n else None
                cells.append(dict(count=v, share=share, diagonal=i == j,
                                  **heat_cell(share if v else None, 0.0, 1.0)))
            rows.append({"name": c.classes[i], "n": n, "cells": cells})
        worst = c.worst_classes(limit)
        classes = [dict(name=name, **per[name], under=name in judged["under"],
                        recall_cell=heat_cell(per[name]["recall"], 0.0, 1.0)) for name in worst]
        mistakes = [{
            "image": m["image"], "true": m["true"], "predicted": m["predicted"],
            "confidence": m["confidence"], "p_true": m["p_true"],
            "picture": picture_uri(m["display"]),
            "cam_predicted": None if m["cam_predicted"] is None else cam_overlay_uri(m["display"], m["cam_predicted"]),
            "cam_true": None if m["cam_true"] is None else cam_overlay_uri(m["display"], m["cam_true"]),
        } for m in r.mistakes]
        return {"n": c.n, "k": k, "accuracy": c.accuracy, "accuracy_ci": c.accuracy_ci,
                "rows": rows, "column_names": [c.classes[j] for j in shown], "all_shown": len(shown) == k,
                "classes": classes, "all_classes": len(worst) == k,
                "top_confusions": c.top_confusions(int(self.options["top_confusions"])),
                "mistakes": mistakes, "cam_note": r.cam_note, "label_note": r.label_note,
                "unlabelled": r.unlabelled, "gap": gap, "limit": judged["limit"],
                "judged": judged["judged"], "under": judged["under"]}

    def summary(self, result: ErrorsResult) -> Dict[str, Any]:
        c = result.confusion
        return {"n": c.n, "accuracy": c.accuracy, "accuracy_ci": list(c.accuracy_ci),
                "classes": list(c.classes), "confusion": c.confusion.tolist(), "per_class": c.per_class(),
                "top_confusions": c.top_confusions(int(self.options["top_confusions"])),
                "confident_errors": [{"image": m["image"], "true": m["true"], "predicted": m["predicted"],
                                      "confidence": m["confidence"], "true_probability": m["p_true"]}
                                     for m in result.mistakes],
                "unlabelled": result.unlabelled, "labels": result.label_note}

    def findings(self, result: ErrorsResult, ctx: BuildContext) -> List[Finding]:
        gap = ctx.threshold("class_gap")
        j = self._judge(result, gap)
        if not j["under"]:
            return []
        per = j["per_class"]
        acc = result.confusion.accuracy or 0.0
        listed = "; ".join(f"{name}: recall {per[name]['recall']:.1%} (95% CI {per[name]['recall_ci'][0]:.1%}–"
                           f"{per[name]['recall_ci'][1]:.1%}, {per[name]['n']} images)" for name in j["under"][:20])
        return [Finding(
            id="class-underperforms", severity="warning", section="errors",
            title=f"{len(j['under'])} class(es) underperform: {', '.join(j['under'][:5])}"
                  + ("…" if len(j["under"]) > 5 else ""),
            evidence=f"recall interval entirely below the overall accuracy {acc:.1%} minus "
                     f"findings.class_gap {gap:.0%} = {j['limit']:.1%}: {listed}")]

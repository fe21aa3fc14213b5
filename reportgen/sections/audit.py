"""What the audit sections (errors, calibration, robustness) share: labels and one clean pass.

* :func:`dataset_labels`: the dataset's true classes from its class folders
  (``agreement.folder_labels``, the rule the compare's flips use);
* :func:`clean_pass`: the model over the labelled dataset, once per build:
  errors and calibration read the same ``predictions.PredictionPass``. It is
  kept per model object and keyed on every input it reads, so a second section
  of the same build reuses it and another build (another model, dataset or
  preprocessing) never does.
"""
from __future__ import annotations

import json
import weakref
from typing import Any, Dict, Tuple

import numpy as np

from reportgen.analyses import predictions as pr
from reportgen.analyses.agreement import FolderLabels, folder_labels
from reportgen.errors import NotApplicable
from reportgen.sections.base import BuildContext
from reportgen.sections.topk import dataset_for

MISTAKES_KEPT = 32    # the pass keeps this many confident mistakes; the errors section shows up to it

_PASSES: "weakref.WeakKeyDictionary[Any, Dict[str, pr.PredictionPass]]" = weakref.WeakKeyDictionary()
_GIVEN: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()   # build --audit-pass, per model

NO_LABELS_HINT = ("Put the dataset's images in ImageFolder class folders named like the model's classes "
                  "(dataset.root/<class>/image.png).")


def dataset_labels(ctx: BuildContext) -> FolderLabels:
    return folder_labels([c for _, c in ctx.dataset or []], ctx.classes)


def require_labels(ctx: BuildContext, what: str) -> Tuple[np.ndarray, FolderLabels]:
    """(labels, how they were read), or NotApplicable saying why ``what`` needs them."""
    found = dataset_labels(ctx)
    if not int((found.labels >= 0).sum()):
        raise NotApplicable(f"{what} needs labelled images, and {found.note}", hint=NO_LABELS_HINT)
    return found.labels, found


def _key(ctx: BuildContext, labels: np.ndarray) -> str:
    data = ctx.spec["dataset"]
    return json.dumps({"dataset": [(str(p), c) for p, c in ctx.dataset], "labels": labels.tolist(),
                       "preprocess": ctx.spec["preprocess"], "input": list(ctx.input_size),
                       "output": repr(ctx.output_key), "device": str(ctx.device), "seed": ctx.seed,
                       "batch": data["batch_size"], "classes": list(ctx.classes)}, sort_keys=True, default=str)


def clean_pass(ctx: BuildContext, labels: np.ndarray, names) -> pr.PredictionPass:
    """The one clean pass of this build's model over its labelled dataset (computed on first use)."""
    given = _GIVEN.get(ctx.model)
    if given is not None and given.predictions is not None:
        return given.predictions
    key = _key(ctx, labels)
    found = _PASSES.setdefault(ctx.model, {})
    if key not in found:
        data = ctx.spec["dataset"]
        found.clear()            # one pass per model object: an older build's is dropped
        found[key] = pr.prediction_pass(
            ctx.model, dataset_for(ctx), labels, names, data["batch_size"], data["workers"], ctx.device,
            ctx.output_key, keep=MISTAKES_KEPT, progress=ctx.progress)
    return found[key]


# --------------------------------------------------------------------------- a sharded pass, read back

def use_audit_pass(model: Any, given: Any) -> None:
    """This build's sections read ``given`` (an ``audit_pass.AuditPass``) instead of running the dataset."""
    _GIVEN[model] = given


def given_robustness(ctx: BuildContext, corruptions) -> Any:
    """The robustness result of a given audit pass for these corruptions, or None."""
    given = _GIVEN.get(ctx.model)
    r = None if given is None else given.robustness
    return r if r is not None and list(r.corruptions) == list(corruptions) else None

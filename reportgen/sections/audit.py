"""What the audit sections (errors, calibration, robustness) share: labels and one clean pass.

* :func:`dataset_labels`: the dataset's true classes from its class folders
  (``agreement.folder_labels``, the rule the compare's flips use);
* :func:`clean_pass`: the model over the labelled dataset, once per build:
  errors and calibration read the same ``predictions.PredictionPass``, from
  the build's one dataset pass (``sections.dataset_pass``), which top-k and
  embeddings share.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional, Tuple

import numpy as np

from reportgen.analyses import predictions as pr
from reportgen.analyses.agreement import FolderLabels, folder_labels
from reportgen.analyses.dataset_pass import Taps, labels_tuple
from reportgen.errors import NotApplicable
from reportgen.sections.base import BuildContext
from reportgen.sections.dataset_pass import shared

MISTAKES_KEPT = 32    # the pass keeps this many confident mistakes; the errors section shows up to it

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


def _labelled_taps(labels: np.ndarray, names) -> Taps:
    return Taps(labels=labels_tuple(labels), classes=tuple(names), keep=MISTAKES_KEPT)


def prediction_taps(ctx: BuildContext) -> Optional[Taps]:
    """What errors and calibration read from the dataset pass: class scores against the folder labels
    (None: a sharded audit pass was given; NotApplicable when no image is labelled)."""
    given = _GIVEN.get(ctx.model)
    if given is not None and given.predictions is not None:
        return None
    labels, found = require_labels(ctx, "The audit")
    return _labelled_taps(labels, found.names)


def clean_pass(ctx: BuildContext, labels: np.ndarray, names) -> pr.PredictionPass:
    """The one clean pass of this build's model over its labelled dataset: the build's shared dataset
    pass (``sections.dataset_pass``), or the sharded pass given to ``build --audit-pass``."""
    given = _GIVEN.get(ctx.model)
    if given is not None and given.predictions is not None:
        return given.predictions
    run = shared(ctx, _labelled_taps(labels, names))
    if run.labelled_error is not None:
        raise run.labelled_error
    return run.labelled


# --------------------------------------------------------------------------- a sharded pass, read back

def use_audit_pass(model: Any, given: Any) -> None:
    """This build's sections read ``given`` (an ``audit_pass.AuditPass``) instead of running the dataset."""
    _GIVEN[model] = given


def given_robustness(ctx: BuildContext, corruptions) -> Any:
    """The robustness result of a given audit pass for these corruptions, or None."""
    given = _GIVEN.get(ctx.model)
    r = None if given is None else given.robustness
    return r if r is not None and list(r.corruptions) == list(corruptions) else None

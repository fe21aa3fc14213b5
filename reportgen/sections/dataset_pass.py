"""The build's one pass over the dataset, shared by every section that reads it.

Top-k, embeddings, errors and calibration each need one forward of every
dataset image (``analyses.dataset_pass``). Before the sections run, the
build calls :func:`gather`: it asks each section for its taps
(``Section.dataset_taps``) and merges them, and the first reader in report
order owns the pass, so the budget prices it once (:func:`pass_cost`). The
first section to run calls :func:`shared`, which runs the pass with every
gathered tap; the others read the same result from the build's memo.

A section whose taps the gathered pass does not cover (a context built by
hand, a plugin asking after the gather) gets a pass of its own: slower,
never wrong.
"""
from __future__ import annotations

from typing import Any, Dict

from reportgen.analyses import dataset_pass as dp
from reportgen.analyses.topk import ImageDataset
from reportgen.engine import budget as bud
from reportgen.sections.base import BuildContext, ask_sections

MEMO = "dataset_pass"


def dataset_for(ctx: BuildContext) -> ImageDataset:
    """The spec's dataset, preprocessed exactly like the probes."""
    pre = ctx.spec["preprocess"]
    return ImageDataset(ctx.dataset, ctx.input_size, pre["resize"], pre["center_crop"],
                        pre["mean"], pre["std"], pre["interpolation"])


def gather(sections: Dict[str, Any], ctx: BuildContext) -> None:
    """Merge the taps of every section in ``sections`` (name -> Section) that reads the dataset."""
    merged, owner = None, None
    for name, taps in ask_sections(sections, ctx, lambda section: section.dataset_taps(ctx, section.options)).items():
        if taps is None or taps.empty:
            continue
        merged = taps if merged is None else merged.merged(taps)
        owner = owner or name
    ctx.dataset_taps, ctx.dataset_owner = merged, owner


def pass_cost(ctx: BuildContext, name: str) -> bud.Cost:
    """The shared pass's forward passes, counted in the section that owns it (none in the others)."""
    n = len(ctx.dataset or ())
    if ctx.dataset_taps is None or ctx.dataset_owner == name:
        return bud.Cost(forward=n)
    return bud.Cost()


def shared(ctx: BuildContext, taps: dp.Taps) -> dp.DatasetPass:
    """The build's dataset pass, holding at least ``taps`` (run on first use, then read from the memo)."""
    found = ctx.memo.get(MEMO)
    if found is not None and found[0].covers(taps):
        return found[1]
    gathered = ctx.dataset_taps
    use = gathered if gathered is not None and gathered.covers(taps) else taps
    data = ctx.spec["dataset"]
    result = dp.dataset_pass(ctx.model, dataset_for(ctx), use, ctx.dataset_batch(), data["workers"],
                             ctx.device, ctx.output_key, progress=ctx.progress)
    ctx.memo[MEMO] = (use, result)
    return result

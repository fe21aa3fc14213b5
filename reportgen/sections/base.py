"""The section contract: each report section is options -> analysis -> view.

A section class declares, once:

* ``options``: its spec options (name, type, default, constraints such as a
  layer with a spatial output, a doc string). The spec schema, the resolver's
  layer checks, ``--only`` and the README's option table are all derived from
  these declarations; nothing else states a default.
* ``requires``: inputs without which it does not apply ("probes", "dataset",
  "checkpoint_series"); the pipeline says why in place of the section.
* ``analyze(ctx, options)``: calls ``reportgen.analyses`` and returns a typed,
  frozen result (numpy arrays + metadata, never HTML).
* ``budget(ctx, options)`` (optional): what the section costs in image passes
  and which of its expensive settings are left on ``auto`` (knobs, see
  ``reportgen.engine.budget``); ``analyze`` reads the build's choice with
  :meth:`BuildContext.planned`, and an image-heavy section its share of the
  page with :meth:`BuildContext.page_share`.
* ``view(result, ctx)``, ``summary(result)``, ``findings(result, ctx)``: pure
  functions of that result. ``view`` feeds the Jinja2 partial (``partial``),
  ``summary`` is the section's entry in report.json, ``findings`` the audit
  findings; the context is read only for what the reader sees (probe images,
  class names) and, through :meth:`BuildContext.threshold`, the findings
  thresholds.

"Does not apply here" has one spelling: raise ``NotApplicable(reason, hint)``.
Third-party packages register sections through the entry-point group
``reportgen.sections`` (see :func:`registry`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch

from reportgen.analyses import faithfulness as fa
from reportgen.engine import budget as bud
from reportgen.errors import NotApplicable, ReportgenError, SpecError
from reportgen.options import AUTO, Float, Mapping, Option


@dataclass
class Probe:
    """One probe image: what the model sees and what a person sees."""

    name: str                 # file name, shown as the label
    path: Path
    tensor: torch.Tensor      # (C, H, W), preprocessed, float32, on CPU
    display: np.ndarray       # (H, W, 3) uint8, the same crop before normalization
    target: Optional[int] = None  # class index chosen by probes.targets (None = predicted)


@dataclass
class CheckpointInfo:
    label: str
    path: Path
    metrics: Dict[str, float] = field(default_factory=dict)
    weights: Optional[str] = None             # where its weights were read (raw, state_dict, state_dict_ema, ...)
    other_weights: Tuple[str, ...] = ()       # other keys in the file holding weights (an EMA copy)


@dataclass
class Finding:
    id: str
    severity: str            # info | warning | error
    title: str
    evidence: str
    section: str
    layer: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        d = {"id": self.id, "severity": self.severity, "title": self.title,
             "evidence": self.evidence, "section": self.section}
        if self.layer is not None:
            d["layer"] = self.layer
        return d


@dataclass
class BuildContext:
    """Everything a section may read. Built once per build, read-only for sections."""

    model: torch.nn.Module            # the audit checkpoint's weights, eval mode, on `device`
    device: torch.device
    input_size: Sequence[int]         # (C, H, W)
    probes: List[Probe]
    classes: List[str]
    checkpoints: List[CheckpointInfo]
    spec: Any                         # reportgen.spec.Spec
    output_key: Any = None            # model.output from the spec
    load_checkpoint: Optional[Callable[[int], torch.nn.Module]] = None  # index -> model with those weights
    dataset: Optional[Any] = None     # list of (Path, class name or None) from `dataset:`, or []
    seed: int = 0
    metrics_path: Optional[Path] = None   # the spec's metrics: file or folder, resolved
    # progress(iterable, desc, total=None): wraps long loops with a stderr progress bar
    progress: Callable[..., Any] = field(default=lambda iterable, desc="", total=None: iterable)
    plan: Optional[bud.Plan] = None   # the build's choices for settings left on auto (None: best values)
    page_shares: Dict[str, int] = field(default_factory=dict)   # section -> bytes of page it may fill
    # the taps of every section of this build that reads the dataset (``sections.dataset_pass``), and
    # the one the shared pass is priced in; None: not gathered, each section prices its own pass
    dataset_taps: Optional[Any] = None
    dataset_owner: Optional[str] = None
    memo: Dict[Any, Any] = field(default_factory=dict)   # what one build computes once (see ``remember``)

    def planned(self, section: str, option: str, value: Any, best: Any) -> Any:
        """A setting as written in the spec; left on auto, the plan's choice (no plan: ``best``)."""
        if value != AUTO:
            return value
        found = self.plan.sections.get(section) if self.plan is not None else None
        if found is not None and option in found.choices:
            return found.choices[option]
        return best

    def page_share(self, section: str) -> Optional[int]:
        """Bytes of the page ``section`` may fill, or None when the whole page fits its budget."""
        return self.page_shares.get(section)

    def threshold(self, key: str) -> float:
        """A findings threshold: the spec's ``findings.<key>``, else its declared default."""
        found = self.spec.get("findings") if hasattr(self.spec, "get") else None
        value = (found or {}).get(key)
        if value is None:   # a spec that skipped the schema: the declared default
            value = declared_thresholds(_REGISTRY)[key].default
        return float(value)

    def read_checkpoint(self, path: Path) -> Any:
        """A checkpoint file's LoadedCheckpoint, its weights as the spec's checkpoint_weights selects."""
        from reportgen.model.checkpoints import AUTO_WEIGHTS, load_checkpoint

        found = self.spec.get("checkpoint_weights") if hasattr(self.spec, "get") else None
        return load_checkpoint(path, found or AUTO_WEIGHTS)

    def remember(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per build: what the plan and a section both ask for (a section's dataset
        taps: a forward to choose layers, another to read their layouts) or several sections share."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def dataset_batch(self) -> int:
        """Images per forward pass over the dataset: ``dataset.batch_size``, auto by device."""
        from reportgen.engine.batching import dataset_batch

        return dataset_batch((self.spec["dataset"] or {}).get("batch_size"), self.device.type)

    def probe_batch(self) -> torch.Tensor:
        """All probes stacked as (N, C, H, W) on the build device."""
        return torch.stack([p.tensor for p in self.probes]).to(self.device)

    def example(self) -> torch.Tensor:
        return example_input(self.probes, self.input_size, self.device)


def example_input(probes: Sequence[Probe], input_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """The single (1, C, H, W) input a model is traced, hooked or timed with: the first probe,
    else zeros (a build's ``BuildContext.example``, a compare's ``Resolved.example``)."""
    if probes:
        return probes[0].tensor[None].to(device)
    return torch.zeros((1, *input_size), device=device)


# Findings thresholds shared by several sections; a section adds its own through
# ``Section.thresholds``. Together they are the spec's ``findings:`` mapping.
FINDINGS_THRESHOLDS: Dict[str, Option] = {
    "dead_channel_fraction": Float(min=0, max=1, default=0.25,
                                   doc="share of never-firing channels that raises a finding"),
    "sanity_spearman": Float(min=-1, max=1, default=fa.SANITY_THRESHOLD,
                             doc="map similarity after weight randomization that fails a method"),
    "border_band": Float(min=0, max=0.5, default=fa.BORDER_FRAC,
                         doc="width of the border band, fraction of the side"),
    "border_ratio": Float(min=0, default=fa.BORDER_RATIO,
                          doc="border share over the band's area share that flags a method"),
    "border_share": Float(min=0, max=1, default=fa.BORDER_MIN_SHARE,
                          doc="minimum border share of attribution mass to flag"),
}

REQUIREMENTS = {
    "probes": ("no probe images",
               "List images under probes.images in the spec to see this section."),
    "dataset": ("no dataset in the spec",
                "Add a dataset: with root: an ImageFolder folder (one sub-folder per class, named like "
                "the model's classes) or a glob of images."),
    "checkpoint_series": ("needs at least two checkpoints; the spec gives {n}",
                          "List the checkpoints saved during training (oldest first) under checkpoints: "
                          "to see filters form, layers drift and distributions spread."),
}


class Section:
    """Base class; subclasses are registered with @register_section (see the module doc)."""

    name: str = ""
    title: str = ""
    partial: str = ""                          # Jinja2 template, under templates/ or the plugin's own
    order: int = 100                           # position in the report
    options: ClassVar[Dict[str, Option]] = {}
    thresholds: ClassVar[Dict[str, Option]] = {}   # findings thresholds this section adds
    aliases: ClassVar[Dict[str, str]] = {}          # old option name -> its new name, still accepted
    requires: ClassVar[Tuple[str, ...]] = ()
    template_dir: ClassVar[Optional[Path]] = None  # a plugin's templates folder

    def __init__(self, options: Optional[Dict[str, Any]] = None):
        # checked against the declaration: every option present, with its declared default
        self.options: Dict[str, Any] = self.schema().check(dict(options or {}), f"sections.{self.name}")

    @classmethod
    def schema(cls) -> Mapping:
        return Mapping(dict(cls.options), aliases=cls.aliases)

    def check_applicable(self, ctx: "BuildContext") -> None:
        """Raise NotApplicable when an input this section requires is missing."""
        for need in self.requires:
            present = {"probes": bool(ctx.probes), "dataset": bool(ctx.dataset),
                       "checkpoint_series": len(ctx.checkpoints) >= 2}[need]
            if not present:
                reason, hint = REQUIREMENTS[need]
                raise NotApplicable(reason.format(n=len(ctx.checkpoints)), hint=hint)

    def budget(self, ctx: "BuildContext", options: Dict[str, Any]) -> Optional[bud.Needs]:
        """Image passes this section will make and its knobs (settings on auto); None: not estimated."""
        return None

    def dataset_taps(self, ctx: "BuildContext", options: Dict[str, Any]) -> Optional[Any]:
        """What this section reads from the build's one pass over the dataset
        (``analyses.dataset_pass.Taps``), so the build can run it once for all readers; None: nothing."""
        return None

    def page_bytes(self, ctx: "BuildContext", options: Dict[str, Any]) -> Optional[float]:
        """Estimated bytes of its pictures at full settings when it can shrink them; None: it cannot."""
        return None

    def analyze(self, ctx: "BuildContext", options: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def view(self, result: Any, ctx: "BuildContext") -> Dict[str, Any]:
        raise NotImplementedError

    def summary(self, result: Any) -> Dict[str, Any]:
        return {}

    def findings(self, result: Any, ctx: "BuildContext") -> List[Finding]:
        return []


_REGISTRY: Dict[str, Type[Section]] = {}


class PluginError(ReportgenError):
    """An installed section plugin that cannot be loaded, named by its entry point.

    Exit 2 like a bad spec: the fix is in the user's environment (repair or
    uninstall the package), not in reportgen.
    """


def declared_thresholds(sections: Dict[str, Type[Section]]) -> Dict[str, Option]:
    """Every findings threshold: the shared ones plus those ``sections`` add (``Section.thresholds``),
    the spec's ``findings:`` mapping. Two sections declaring one key with two defaults: PluginError."""
    out = dict(FINDINGS_THRESHOLDS)
    for name, cls in sections.items():
        for key, opt in cls.thresholds.items():
            if key in out and out[key].default != opt.default:
                raise PluginError(f"section {name!r} declares findings.{key} with default {opt.default!r}, "
                                  f"another declares {out[key].default!r}")
            out.setdefault(key, opt)
    return out


def register_section(name: str) -> Callable[[Type[Section]], Type[Section]]:
    def deco(cls: Type[Section]) -> Type[Section]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"section {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco



def ask_sections(sections: Dict[str, "Section"], ctx: BuildContext,
                 question: Callable[["Section"], Any]) -> Dict[str, Any]:
    """``question(section)`` of every applicable section, before any runs (cost, page weight, dataset taps).

    A section that does not apply is left out; one whose answer raises gets
    None (it says what is wrong in place when it runs), except a spec error,
    which stops the build as it would have anyway.
    """
    out: Dict[str, Any] = {}
    for name, section in sections.items():
        try:
            section.check_applicable(ctx)
        except NotApplicable:
            continue
        try:
            out[name] = question(section)
        except SpecError:
            raise
        except NotApplicable:
            continue
        except Exception:  # noqa: BLE001 - the section itself will say what is wrong when it runs
            out[name] = None
    return out

"""The section registry: each report section is analysis -> renderer -> template partial.

A section class names three things and nothing else:

* ``analyze(ctx, options)``: calls a pure analysis in ``reportgen.analyses``
  and returns its plain result (numpy arrays + metadata, never HTML);
* ``render(result, ctx)``: turns that result into what the partial shows
  (data-URI images, inline SVG, table rows), via ``reportgen.render``;
* ``summary(result)``: the JSON-able numbers and auto choices for report.json.

``partial`` is the Jinja2 template (under templates/sections/) that lays it out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

import numpy as np
import torch


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
    # progress(iterable, desc, total=None): wraps long loops with a stderr progress bar
    progress: Callable[..., Any] = field(default=lambda iterable, desc="", total=None: iterable)

    def probe_batch(self) -> torch.Tensor:
        """All probes stacked as (N, C, H, W) on the build device."""
        return torch.stack([p.tensor for p in self.probes]).to(self.device)

    def example(self) -> torch.Tensor:
        """A single (1, C, H, W) input: the first probe, else zeros."""
        if self.probes:
            return self.probes[0].tensor[None].to(self.device)
        return torch.zeros((1, *self.input_size), device=self.device)


class Section:
    """Base class; subclasses are registered with @register_section."""

    name: str = ""
    title: str = ""
    partial: str = ""
    order: int = 100          # position in the report
    needs_probes: bool = False

    def __init__(self, options: Optional[Dict[str, Any]] = None):
        # the section's spec options, for render()/findings() that need them too
        self.options: Dict[str, Any] = dict(options or {})

    def analyze(self, ctx: BuildContext, options: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def render(self, result: Any, ctx: BuildContext) -> Dict[str, Any]:
        raise NotImplementedError

    def summary(self, result: Any) -> Dict[str, Any]:
        return {}

    def findings(self, result: Any, ctx: BuildContext) -> List[Finding]:
        return []


_REGISTRY: Dict[str, Type[Section]] = {}


def register_section(name: str) -> Callable[[Type[Section]], Type[Section]]:
    def deco(cls: Type[Section]) -> Type[Section]:
        if name in _REGISTRY:
            raise ValueError(f"section {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def registry() -> Dict[str, Type[Section]]:
    """Registered sections, in report order (importing the built-in ones first)."""
    import reportgen.sections.builtin  # noqa: F401  (registers)
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))

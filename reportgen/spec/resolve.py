"""Second validation pass: files exist, the model builds, layers exist, checkpoints fit.

Everything here runs before any analysis, so a bad spec fails in seconds with
the key path and line, never half-way through a long build.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from reportgen.errors import InputError, SpecError
from reportgen.options import AUTO, LayerName, layer_option
from reportgen.models import ModelError, build_model, input_size, pick_device
from reportgen.outputs import select_output
from reportgen.sections.base import CheckpointInfo, Probe
from reportgen.spec import Spec

THEMES = ("light", "dark")


@dataclass
class Resolved:
    """A spec turned into objects: what a build needs, all of it checked."""

    spec: Spec
    model: nn.Module                       # audit weights, eval, on device
    device: torch.device
    input_size: Tuple[int, int, int]
    num_classes: int
    classes: List[str]
    checkpoints: List[CheckpointInfo]
    audit_index: Optional[int]
    probes: List[Probe]
    dataset: List[Tuple[Path, str]] = field(default_factory=list)
    metrics_path: Optional[Path] = None
    theme_css: str = ""
    output_key: Any = None
    notes: List[str] = field(default_factory=list)

    def model_at(self, index: int) -> nn.Module:
        """A copy of the model with checkpoint ``index``'s weights (for evolution)."""
        from reportgen.checkpoints import apply_state_dict, load_checkpoint

        model = copy.deepcopy(self.model)
        ck = self.checkpoints[index]
        apply_state_dict(model, load_checkpoint(ck.path).state_dict, ck.path)
        return model.eval()


def _as_spec_error(spec: Spec, key: str, e: Exception) -> SpecError:
    message = getattr(e, "message", None) or str(e)
    return spec.error(key, message)


def _path_error(spec: Spec, key: str, e: InputError) -> SpecError:
    """A path the spec names that is missing or matches nothing: as written and as resolved."""
    if e.path is None:
        return _as_spec_error(spec, key, e)
    resolved = f" (resolved: {e.resolved})" if e.resolved else ""
    return spec.error(key, f"{e.message}: {e.path!r}{resolved}")


def resolve_model(spec: Spec, device: torch.device) -> Tuple[nn.Module, Tuple[int, int, int], int]:
    torch.manual_seed(spec["seed"])  # random-init models are reproducible too
    try:
        model = build_model(spec["model"], spec.base_dir)
    except ModelError as e:
        raise spec.error(e.key, e.message) from None
    size = input_size(spec["model"], model)
    out = _probe_forward(spec, model, size)
    if out.ndim != 2:
        raise spec.error("model.output", f"the class scores must be (N, classes); the model gave shape "
                                         f"{tuple(out.shape)}")
    return model, size, int(out.shape[1])


def _probe_forward(spec: Spec, model: nn.Module, size: Tuple[int, int, int]) -> torch.Tensor:
    from reportgen.hooks import eval_mode

    try:
        with torch.no_grad(), eval_mode(model):
            raw = model(torch.zeros((1, *size)))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise spec.error("model.input_size", f"the model fails on an input of size {list(size)}: "
                                             f"{first}") from None
    try:
        return select_output(raw, spec["model"]["output"])
    except ValueError as e:
        raise spec.error("model.output", str(e)) from None


def resolve_checkpoints(spec: Spec, model: nn.Module) -> List[CheckpointInfo]:
    from reportgen.checkpoints import check_fit, expand_checkpoints, load_checkpoint

    out: List[CheckpointInfo] = []
    seen = set()
    for i, entry in enumerate(spec["checkpoints"]):
        key = f"checkpoints[{i}]"
        try:
            found = expand_checkpoints([entry], spec.base_dir)
        except InputError as e:
            raise _path_error(spec, key, e) from None
        for label, path in found:
            if path in seen:
                continue
            seen.add(path)
            try:
                loaded = load_checkpoint(path)
                check_fit(model, loaded.state_dict, path)
            except InputError as e:
                raise spec.error(key, str(e)) from None
            metrics = dict(loaded.metrics)
            if loaded.epoch is not None:
                metrics.setdefault("epoch", float(loaded.epoch))
            out.append(CheckpointInfo(label=label, path=path, metrics=metrics))
    return out


def audit_index(spec: Spec, checkpoints: List[CheckpointInfo]) -> Optional[int]:
    if not checkpoints:
        return None
    choice = spec["audit_checkpoint"]
    if choice == "last":
        return len(checkpoints) - 1
    if isinstance(choice, int):
        if not -len(checkpoints) <= choice < len(checkpoints):
            raise spec.error("audit_checkpoint", f"index {choice} is out of range: there are "
                                                 f"{len(checkpoints)} checkpoints")
        return choice % len(checkpoints)
    labels = [c.label for c in checkpoints]
    if choice not in labels:
        from reportgen.options import suggest
        raise spec.error("audit_checkpoint", f"no checkpoint labelled {choice!r}{suggest(choice, labels)}; "
                                             f"labels: {', '.join(labels)}")
    return labels.index(choice)


def resolve_classes(spec: Spec, num_classes: int) -> List[str]:
    from reportgen.classes import load_classes

    try:
        names = load_classes(spec["classes"], spec.base_dir, num_classes)
    except InputError as e:
        raise _as_spec_error(spec, "classes", e) from None
    return [str(n) for n in names]


def resolve_probes(spec: Spec, size: Tuple[int, int, int], classes: List[str]) -> List[Probe]:
    from reportgen.images import list_images, load_image, preprocess

    probes_spec = spec["probes"]
    if not probes_spec:
        return []
    pre = spec["preprocess"]
    _check_norm(spec, size[0])
    probes: List[Probe] = []
    for i, pattern in enumerate(probes_spec["images"]):
        key = f"probes.images[{i}]"
        try:
            paths = list_images([pattern], spec.base_dir)
        except InputError as e:
            raise _path_error(spec, key, e) from None
        for path in paths:
            try:
                img = load_image(path)
                tensor, display = preprocess(img, size, pre["resize"], pre["center_crop"],
                                             pre["mean"], pre["std"])
            except (InputError, ValueError) as e:
                raise spec.error(key, str(e)) from None
            probes.append(Probe(name=path.name, path=path, tensor=tensor, display=display))
    targets = _resolve_targets(spec, probes_spec["targets"], len(probes), classes)
    for probe, target in zip(probes, targets):
        probe.target = target
    return probes


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _check_norm(spec: Spec, channels: int) -> None:
    for key in ("mean", "std"):
        values = spec["preprocess"][key]
        if channels == 1 and values == IMAGENET[key] and not spec.given(f"preprocess.{key}"):
            # the ImageNet default for a greyscale model: the luminance-free average
            spec["preprocess"][key] = [round(sum(values) / 3, 6)]
            continue
        if len(values) != channels:
            raise spec.error(f"preprocess.{key}", f"has {len(values)} values but the model takes "
                                                  f"{channels} input channel(s)")


def _class_index(spec: Spec, key: str, value: Any, classes: List[str]) -> int:
    if isinstance(value, int):
        if not 0 <= value < len(classes):
            raise spec.error(key, f"class index {value} is out of range (0..{len(classes) - 1})")
        return value
    if value in classes:
        return classes.index(value)
    from reportgen.options import suggest
    raise spec.error(key, f"unknown class {value!r}{suggest(value, classes)}")


def _resolve_targets(spec: Spec, targets: Any, n: int, classes: List[str]) -> List[Optional[int]]:
    key = "probes.targets"
    if targets == "predicted":
        return [None] * n
    if isinstance(targets, list):
        if len(targets) != n:
            raise spec.error(key, f"has {len(targets)} targets but {n} probe images matched")
        return [None if t == "predicted" else _class_index(spec, f"{key}[{i}]", t, classes)
                for i, t in enumerate(targets)]
    return [_class_index(spec, key, targets, classes)] * n


def resolve_dataset(spec: Spec) -> List[Tuple[Path, str]]:
    from reportgen.images import image_folder

    ds = spec["dataset"]
    if not ds:
        return []
    try:
        return image_folder(str(spec.path(ds["root"])), ds["limit"], spec["seed"])
    except InputError as e:
        # image_folder saw the absolute path: name the root as the spec writes it
        written = InputError(e.message, ds["root"], e.resolved)
        raise _path_error(spec, "dataset.root", written) from None


def resolve_theme(spec: Spec) -> str:
    from reportgen.theme import load_theme

    try:
        return load_theme(spec["output"]["theme"], spec.base_dir)
    except InputError as e:
        raise _as_spec_error(spec, "output.theme", e) from None


def _named_layers(spec: Spec) -> Iterator[Tuple[str, str, LayerName, str]]:
    """(key path, layer name, declaration, stated layout) for every layer a section's options name.

    Read from the sections' own option declarations (``LayerName``), so a new
    option that names a layer, a plugin's included, is checked without a list here.
    The stated layout is the section's ``layout`` option where it has one, else auto.
    """
    from reportgen.sections.registry import registry

    for section, cls in registry().items():
        options = spec["sections"].get(section)
        if not options:
            continue
        stated = options.get("layout", AUTO) if "layout" in cls.options else AUTO
        for key, opt in cls.options.items():
            decl = layer_option(opt)
            value = options.get(key)
            if decl is None or value in (None, AUTO):
                continue
            names = value if isinstance(value, list) else [value]
            for i, name in enumerate(names):
                path = f"sections.{section}.{key}" + (f"[{i}]" if isinstance(value, list) else "")
                yield path, name, decl, stated


def check_layers(spec: Spec, model: nn.Module) -> None:
    """Every layer named in a section exists (auto is resolved later, per section)."""
    from reportgen.layers import get_layer

    for path, name, _, _ in _named_layers(spec):
        try:
            get_layer(model, name)
        except ValueError as e:
            raise spec.error(path, str(e)) from None


def check_spatial_layers(spec: Spec, model: nn.Module, size: Tuple[int, int, int]) -> None:
    """A named layer declared spatial must give a feature map larger than 1x1.

    A feature map is (N, C, H, W), or channels-last (N, H, W, C) or tokens
    (N, L, C) on a grid, as the section's ``layout`` states or as
    ``reportgen.analyses.layout`` detects. A 1x1 map (after global pooling)
    has no "where": a CAM on it is one flat colour, so it is refused here as
    the automatic choice already refuses it.
    """
    from reportgen.layers import call_layouts
    from reportgen.analyses.layout import infer, known_grids

    named = [(path, name, stated) for path, name, decl, stated in _named_layers(spec) if decl.spatial]
    if not named:
        return
    example = torch.zeros((1, *size))
    try:
        found = call_layouts(model, example)
    except Exception:  # hooks unsupported (TorchScript): the sections say so themselves
        return
    last = {c.name: (c, lay) for c, lay in found if c.name}
    grids = known_grids(model, [lay for _, lay in found])
    for path, name, stated in named:
        if name not in last:
            raise spec.error(path, f"layer {name!r} is not called in the model's forward pass")
        call, detected = last[name]
        tensor = call.tensor
        shape = list(tensor.shape) if tensor is not None else None
        if stated == AUTO:
            lay = detected
            if lay is None:
                raise spec.error(path, f"layer {name!r} has output shape {shape}, not a spatial (N, C, H, W) "
                                       "map, a channels-last (N, H, W, C) one or tokens (N, L, C) on a grid; "
                                       "pick a convolutional or transformer-block layer, or state the layout "
                                       f"with sections.{path.split('.')[1]}.layout")
        else:
            lay = infer(shape, stated, model, size[1:], grids) if shape is not None else None
            if lay is None:
                raise spec.error(path, f"layer {name!r} has output shape {shape}, which is not a {stated} "
                                       f"map for a {size[1]}x{size[2]} input (layout: {stated})")
        if lay.grid[0] * lay.grid[1] <= 1:
            raise spec.error(path, f"layer {name!r} has a 1x1 output (shape {shape}): a map with one "
                                   "position cannot show where anything is; pick an earlier layer")


def check_occlusion(spec: Spec, size: Tuple[int, int, int]) -> None:
    """Windows and strides must fit the input the model sees."""
    options = spec["sections"].get("occlusion")
    if not options:
        return
    h, w = size[1], size[2]
    for key in ("window", "stride"):
        value = options[key]
        wh = value if isinstance(value, list) else [value, value]
        if wh[0] <= h and wh[1] <= w:
            continue
        path = f"sections.occlusion.{key}"
        if spec.given(path):  # the user asked for it: say what is wrong
            raise spec.error(path, f"{key} {wh[0]}x{wh[1]} is larger than the model's input {h}x{w}")
        options[key] = [min(wh[0], h), min(wh[1], w)]  # a default on a small input: fit it


def resolve(spec: Spec, device_override: Optional[str] = None) -> Resolved:
    """Check everything the spec refers to and load it; raises SpecError (exit 2)."""
    try:
        device = pick_device(device_override or spec["device"])
    except ModelError as e:
        if device_override:  # the command line asked, not the spec
            raise SpecError(e.message, spec.file, "--device") from None
        raise spec.error("device", e.message) from None
    model, size, num_classes = resolve_model(spec, device)
    check_layers(spec, model)
    check_spatial_layers(spec, model, size)
    check_occlusion(spec, size)
    checkpoints = resolve_checkpoints(spec, model)
    index = audit_index(spec, checkpoints)
    notes: List[str] = []
    if index is not None:
        from reportgen.checkpoints import apply_state_dict, load_checkpoint
        ck = checkpoints[index]
        apply_state_dict(model, load_checkpoint(ck.path).state_dict, ck.path)
    elif spec["model"].get("torchscript") is None:
        notes.append("No checkpoint given: the report shows the model's random initial weights.")
    classes = resolve_classes(spec, num_classes)
    probes = resolve_probes(spec, size, classes)
    dataset = resolve_dataset(spec)
    metrics_path = None
    if spec["metrics"]:
        metrics_path = spec.path(spec["metrics"])
        if not metrics_path.exists():
            missing = InputError("file not found", spec["metrics"], os.path.abspath(metrics_path))
            raise _path_error(spec, "metrics", missing)
    theme_css = resolve_theme(spec)
    model = model.to(device).eval()
    return Resolved(spec=spec, model=model, device=device, input_size=size, num_classes=num_classes,
                    classes=classes, checkpoints=checkpoints, audit_index=index, probes=probes,
                    dataset=dataset, metrics_path=metrics_path, theme_css=theme_css,
                    output_key=spec["model"]["output"], notes=notes)

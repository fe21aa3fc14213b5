"""Second validation pass: files exist, the model builds, layers exist, checkpoints fit.

Everything here runs before any analysis, so a bad spec fails in seconds with
the key path and line, never half-way through a long build.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from reportgen.cache import file_digest
from reportgen.engine.batching import dataset_batch
from reportgen.errors import InputError, SpecError
from reportgen.model.loading import ModelError, build_model, input_size, pick_device
from reportgen.model.outputs import select_output
from reportgen.options import AUTO, LayerName, layer_option
from reportgen.sections.base import CheckpointInfo, Probe, example_input
from reportgen.spec import Spec


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
    # per preprocessing key (and model.input_size): "spec", "default" or "timm pretrained_cfg"
    preprocess_source: Dict[str, str] = field(default_factory=dict)
    _digests: Dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def file_digest(self, path: Path) -> str:
        """A file's sha256, hashed once per build: the cache key and report.json's inputs_digest
        both read the checkpoints' and probes' bytes, and checkpoints are big."""
        key = str(path)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def example(self) -> torch.Tensor:
        return example_input(self.probes, self.input_size, self.device)

    def dataset_batch(self) -> int:
        """Images per forward pass over the dataset (``BuildContext.dataset_batch``'s rule)."""
        return dataset_batch((self.spec["dataset"] or {}).get("batch_size"), self.device.type)

    def model_at(self, index: int) -> nn.Module:
        """A copy of the model with checkpoint ``index``'s weights (for evolution)."""
        model = copy.deepcopy(self.model)
        apply_checkpoint(self.spec, model, self.checkpoints[index])
        return model.eval()


def apply_checkpoint(spec: Spec, model: nn.Module, ck: CheckpointInfo) -> None:
    """Load checkpoint ``ck``'s weights (those ``checkpoint_weights`` selects) into ``model``."""
    from reportgen.model.checkpoints import apply_state_dict, load_checkpoint

    apply_state_dict(model, load_checkpoint(ck.path, spec["checkpoint_weights"]).state_dict, ck.path)


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
    from reportgen.model.hooks import eval_mode

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
    from reportgen.model.checkpoints import check_fit, expand_checkpoints, load_checkpoint

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
                loaded = load_checkpoint(path, spec["checkpoint_weights"])
                check_fit(model, loaded.state_dict, path)
            except InputError as e:
                raise spec.error(key, str(e)) from None
            metrics = dict(loaded.metrics)
            if loaded.epoch is not None:
                metrics.setdefault("epoch", float(loaded.epoch))
            out.append(CheckpointInfo(label=label, path=path, metrics=metrics, weights=loaded.layout,
                                      other_weights=loaded.others))
    return out


def weights_note(spec: Spec, checkpoints: List[CheckpointInfo]) -> Optional[str]:
    """Which weights an automatic choice read when the files hold other sets too (an EMA copy)."""
    if spec["checkpoint_weights"] != "auto":
        return None
    others = sorted({k for c in checkpoints for k in c.other_weights})
    if not others:
        return None
    used = ", ".join(sorted({c.weights for c in checkpoints if c.other_weights}))
    return (f"The checkpoints also hold weights under {', '.join(others)}; the report reads {used} "
            f"(checkpoint_weights: auto). Set checkpoint_weights: {others[0]} to audit those instead.")


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
        from reportgen.errors import suggest
        raise spec.error("audit_checkpoint", f"no checkpoint labelled {choice!r}{suggest(choice, labels)}; "
                                             f"labels: {', '.join(labels)}")
    return labels.index(choice)


def resolve_classes(spec: Spec, num_classes: int) -> List[str]:
    from reportgen.model.classes import load_classes

    try:
        names = load_classes(spec["classes"], spec.base_dir, num_classes)
    except InputError as e:
        raise _as_spec_error(spec, "classes", e) from None
    return [str(n) for n in names]


def resolve_probes(spec: Spec, size: Tuple[int, int, int], classes: List[str]) -> List[Probe]:
    from reportgen.model.images import list_images, load_image, preprocess

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
                                             pre["mean"], pre["std"], pre["interpolation"])
            except (InputError, ValueError) as e:
                raise spec.error(key, str(e)) from None
            probes.append(Probe(name=path.name, path=path, tensor=tensor, display=display))
    targets = _resolve_targets(spec, "probes.targets", probes_spec["targets"], len(probes), classes)
    for probe, target in zip(probes, targets):
        probe.target = target
    return probes


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TIMM_CFG = "timm pretrained_cfg"
PREPROCESS_KEYS = ("resize", "center_crop", "mean", "std", "interpolation")


def resolve_preprocess(spec: Spec, model: nn.Module, size: Tuple[int, int, int]
                       ) -> Tuple[Dict[str, str], List[str]]:
    """Where each preprocessing value comes from, and notes; fills in a timm model's own.

    What the spec leaves unset is taken, for a timm model, from its
    pretrained_cfg as timm's eval transform uses it: mean, std, interpolation,
    a centre crop of the input size after resizing the shorter side to
    floor(crop / crop_pct). The values go into ``spec["preprocess"]``, so
    probes, the dataset and the cache key all see them.
    """
    sources = {"input_size": "spec" if spec["model"]["input_size"] else "default"}
    sources.update({key: "spec" if spec.given(f"preprocess.{key}") else "default" for key in PREPROCESS_KEYS})
    if not spec["model"].get("timm"):
        return sources, []
    from reportgen.model.images import INTERPOLATIONS
    from reportgen.model.loading import timm_data_config

    cfg, pre, notes = timm_data_config(model), spec["preprocess"], []

    def take(key: str, value: Any, how: str = TIMM_CFG) -> None:
        if sources[key] == "default":
            pre[key], sources[key] = value, how

    if "input_size" in cfg and sources["input_size"] == "default":
        sources["input_size"] = TIMM_CFG
    for key in ("mean", "std"):
        values = [float(v) for v in cfg.get(key, ())]
        if size[0] == 1 and len(values) == 3:
            take(key, [round(sum(values) / 3, 6)], f"{TIMM_CFG}, averaged for 1 channel")
        elif values:
            take(key, values)
    interpolation = cfg.get("interpolation")
    if interpolation in INTERPOLATIONS:
        take("interpolation", interpolation)
    elif interpolation and sources["interpolation"] == "default":
        notes.append(f"The timm model's interpolation {interpolation!r} has no equivalent here; "
                     f"images are resized with {pre['interpolation']!r}.")
    crop_pct = cfg.get("crop_pct")
    if crop_pct:
        take("center_crop", size[1] if size[1] == size[2] else [size[1], size[2]])
        crop = pre["center_crop"] if pre["center_crop"] is not None else [size[1], size[2]]
        side = min(crop) if isinstance(crop, list) else crop
        take("resize", math.floor(side / crop_pct), f"{TIMM_CFG}, crop_pct {crop_pct}")
        mode = cfg.get("crop_mode", "center")
        if mode != "center" and TIMM_CFG in sources["resize"]:
            notes.append(f"The timm model's crop_mode is {mode!r}; images are resized on the shorter side "
                         "and centre-cropped (timm's 'center' mode) instead.")
    return sources, notes


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


def _resolve_targets(spec: Spec, key: str, targets: Any, n: int, classes: List[str]) -> List[Optional[int]]:
    """``resolve_targets`` on the spec's ``key``, a bad class named at its key path and line."""
    from reportgen.model.classes import TargetError, resolve_targets

    try:
        return resolve_targets(targets, n, classes)
    except TargetError as e:
        raise spec.error(key if e.index is None else f"{key}[{e.index}]", str(e)) from None


def check_occlusion_target(spec: Spec, n_probes: int, classes: List[str]) -> None:
    """``sections.occlusion.target`` must name the model's classes, one per probe when a list."""
    options = spec["sections"].get("occlusion")
    if options and options.get("target") is not None:
        _resolve_targets(spec, "sections.occlusion.target", options["target"], n_probes, classes)


def resolve_dataset(spec: Spec) -> List[Tuple[Path, str]]:
    from reportgen.model.images import image_folder

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
    from reportgen.render.theme import load_theme

    try:
        return load_theme(spec["output"]["theme"], spec.base_dir)
    except InputError as e:     # str(e), not e.message: it names the CSS file where one is at fault
        raise spec.error("output.theme", str(e)) from None


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
    from reportgen.model.layers import get_layer

    for path, name, _, _ in _named_layers(spec):
        try:
            get_layer(model, name)
        except ValueError as e:
            raise spec.error(path, str(e)) from None


def check_spatial_layers(spec: Spec, model: nn.Module, size: Tuple[int, int, int]) -> None:
    """A named layer declared spatial must give a feature map larger than 1x1.

    A feature map is (N, C, H, W), or channels-last (N, H, W, C) or tokens
    (N, L, C) on a grid, as the section's ``layout`` states or as
    ``reportgen.model.layout`` detects. A 1x1 map (after global pooling)
    has no "where": a CAM on it is one flat colour, so it is refused here as
    the automatic choice already refuses it.
    """
    from reportgen.model.layers import call_layouts
    from reportgen.model.layout import infer, known_grids

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
        if value == "auto":      # the build plan picks one that fits (reportgen.engine.budget)
            continue
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
        apply_checkpoint(spec, model, checkpoints[index])
    elif spec["model"].get("torchscript") is None:
        notes.append("No checkpoint given: the report shows the model's random initial weights.")
    note = weights_note(spec, checkpoints)
    if note:
        notes.append(note)
    preprocess_source, preprocess_notes = resolve_preprocess(spec, model, size)
    notes += preprocess_notes
    classes = resolve_classes(spec, num_classes)
    probes = resolve_probes(spec, size, classes)
    check_occlusion_target(spec, len(probes), classes)
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
                    output_key=spec["model"]["output"], notes=notes, preprocess_source=preprocess_source)

"""The spec's schema: every key, its type and its default (SPEC.md, "The spec").

Extensions beyond SPEC.md are marked "(extension)" and documented in the README.
"""
from __future__ import annotations

from typing import Any, Dict

from reportgen.engine.budget import DEFAULT_PAGE_MB
from reportgen.errors import suggest
from reportgen.model.images import INTERPOLATIONS
from reportgen.model.loading import MODEL_SOURCES, ONE_SOURCE
from reportgen.options import (
    Bool,
    Choice,
    Float,
    FreeMapping,
    Int,
    ListOf,
    Mapping,
    OneOf,
    Option,
    OptionError,
    Str,
    class_targets,
    int_or_pair,
    join_path,
)


def _model_post(value: Dict[str, Any], path: str) -> None:
    sources = [k for k in MODEL_SOURCES if value.get(k) is not None]
    if not sources:
        raise OptionError(ONE_SOURCE, path)
    if len(sources) > 1:
        raise OptionError(f"give exactly one model source, not {' and '.join(sources)}",
                          join_path(path, sources[1]))
    factory = value.get("factory")
    if factory is not None and ":" not in factory:
        raise OptionError("must look like 'module:callable' (e.g. mypkg.nets:make_net)",
                          join_path(path, "factory"))


MODEL = Mapping({
    "torchvision": Str(default=None, nullable=True, doc="a torchvision.models builder name"),
    "factory": Str(default=None, nullable=True, doc="'module:callable' importable from the spec's folder"),
    "torchscript": Str(default=None, nullable=True, doc="path to a TorchScript archive"),
    "timm": Str(default=None, nullable=True, doc="a timm model name (pip extra [timm])"),
    "kwargs": FreeMapping(default={}, doc="keyword arguments for the builder/factory"),
    "input_size": ListOf(Int(min=1), default=None, min_len=3, max_len=3, nullable=True,
                         doc="C, H, W fed to the model (default [3, 224, 224])"),
    "output": OneOf(Choice([None]), Int(), Str(), default=None,
                    expected="null, an index or a key/attribute name"),
}, required=True, post=_model_post)

CHECKPOINT_ITEM = OneOf(
    Str(),
    Mapping({"path": Str(), "label": Str(default=None, nullable=True)}),
    expected="a path/glob or a mapping {path, label}")

PROBES = Mapping({
    "images": ListOf(Str(), coerce=True, min_len=1, doc="paths or globs"),
    "targets": class_targets(),
})

PREPROCESS = Mapping({
    "resize": OneOf(Choice([None]), int_or_pair(), default=None, expected="null or a size"),
    "center_crop": OneOf(Choice([None]), int_or_pair(), default=None, expected="null or a size"),
    "mean": ListOf(Float(), min_len=1, max_len=4, default=[0.485, 0.456, 0.406]),
    "std": ListOf(Float(min=1e-12), min_len=1, max_len=4, default=[0.229, 0.224, 0.225]),
    "interpolation": Choice(list(INTERPOLATIONS), default="bilinear",
                            doc="(extension) resampling of resize and crop-to-input steps"),
})

DATASET = Mapping({
    "root": Str(doc="ImageFolder root or a glob"),
    "limit": Int(min=1, default=2000),
    "batch_size": OneOf(Choice(["auto"]), Int(min=1), default="auto", expected="'auto' or a number",
                        doc="(extension) images per forward pass over the dataset (auto: 8 on a CPU, where "
                            "larger batches run slower per image, 64 on a GPU)"),
    "workers": Int(min=0, default=0, doc="(extension) DataLoader workers"),
})

class Sections(Option):
    """`sections:` maps a registered section name to false, true, or its options.

    The options of each section are the ones it declares (``Section.options``):
    built-in and plugin sections are checked alike.
    """

    check_default = True

    def check(self, value: Any, path: str) -> Any:
        from reportgen.sections.registry import registry

        sections = registry()
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise OptionError(f"expected a mapping of section names, got {type(value).__name__}", path)
        for key in value:
            if key not in sections:
                raise OptionError(f"unknown section {key!r}{suggest(key, sections)}; sections: "
                                  f"{', '.join(sections)}", join_path(path, key))
        out: Dict[str, Any] = {}
        for name, cls in sections.items():
            sub = join_path(path, name)
            raw = value.get(name, {})
            if raw is False:
                out[name] = False
                continue
            if raw is True or raw is None:
                raw = {}
            out[name] = cls.schema().check(raw, sub)
        return out


class Findings(Option):
    """`findings:` thresholds, as the sections declare them (``Section.thresholds``)."""

    check_default = True

    def check(self, value: Any, path: str) -> Any:
        from reportgen.sections.registry import findings_options

        return Mapping(findings_options()).check(value, path)


OUTPUT = Mapping({
    "dir": Str(default=None, nullable=True),
    "theme": Str(default="light", doc="light, dark, or a path to a CSS file"),
    "timestamp": Bool(default=False, doc="(extension) print the build time in the report footer"),
    "page_budget_mb": Float(min=0.1, default=DEFAULT_PAGE_MB,
                           doc="(extension) MB the page should stay under: image-heavy "
                               "sections show fewer or smaller pictures when it would not"),
}, aliases={"page_budget": "page_budget_mb"})

SPEC = Mapping({
    "title": Str(),
    "description": Str(default="", nonempty=False),
    "model": MODEL,
    "checkpoints": ListOf(CHECKPOINT_ITEM, coerce=True, default=[]),
    "audit_checkpoint": OneOf(Int(), Str(), default="last", expected="'last', an index or a label"),
    "checkpoint_weights": Str(default="auto", doc="(extension) the key in each checkpoint whose weights "
                                                  "are loaded (state_dict_ema, ...); auto: state_dict, "
                                                  "model_state_dict, model, net, else a raw state dict"),
    "probes": OneOf(Choice([None]), PROBES, default=None, expected="a mapping {images, targets}"),
    "classes": OneOf(Choice([None]), Str(), ListOf(OneOf(Str(nonempty=False), Int(), expected="a name")),
                     default=None, expected="a list of names or a .txt/.json file"),
    "preprocess": PREPROCESS,
    "metrics": Str(default=None, nullable=True),
    "dataset": OneOf(Choice([None]), DATASET, default=None, expected="a mapping {root, limit}"),
    "sections": Sections(default={}),
    "output": OUTPUT,
    "findings": Findings(default={}),
    "device": Choice(["auto", "cpu", "cuda"], default="auto"),
    "budget_s": OneOf(Choice(["auto"]), Float(min=1), default="auto",
                    expected="'auto' or seconds (at least 1)",
                    doc="(extension) seconds the whole build should take; auto: 90 on CPU, 60 on CUDA"),
    "seed": Int(min=0, default=0),
}, aliases={"budget": "budget_s"})

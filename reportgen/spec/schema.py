"""The spec's schema: every key, its type and its default (SPEC.md, "The spec").

Extensions beyond SPEC.md are marked "(extension)" and documented in the README.
"""
from __future__ import annotations

from typing import Any, Dict

from reportgen.spec.options import (Anything, Bool, Choice, Float, FreeMapping, Int, ListOf,
                                    Mapping, OneOf, Option, OptionError, Str, suggest)
from reportgen.spec.yamlload import join_path

AUTO = "auto"

CAM_METHODS = ["cam", "gradcam", "gradcampp", "scorecam", "eigencam"]
GRADIENT_METHODS = ["saliency", "deconvnet", "guided_backprop", "integrated_gradients", "smoothgrad"]


def _auto_or(opt: Option, default: Any = AUTO) -> Option:
    return OneOf(Choice([AUTO]), opt, default=default, expected=f"'auto' or {_describe(opt)}")


def _describe(opt: Option) -> str:
    if isinstance(opt, ListOf):
        return "a list of layer names"
    if isinstance(opt, Str):
        return "a layer name"
    return "a value"


def _int_or_pair(min_value: int = 1) -> Option:
    return OneOf(Int(min=min_value), ListOf(Int(min=min_value), min_len=2, max_len=2),
                 expected=f"an integer >= {min_value} or a list [h, w]")


def _model_post(value: Dict[str, Any], path: str) -> None:
    sources = [k for k in ("torchvision", "factory", "torchscript") if value.get(k) is not None]
    if not sources:
        raise OptionError("needs exactly one of torchvision, factory or torchscript", path)
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
    "targets": OneOf(Choice(["predicted"]), Str(), ListOf(OneOf(Int(min=0), Str(),
                                                                expected="a class index or name")),
                     Int(min=0), default="predicted",
                     expected="'predicted', a class name or a list (one per image)"),
})

PREPROCESS = Mapping({
    "resize": OneOf(Choice([None]), _int_or_pair(), default=None, expected="null or a size"),
    "center_crop": OneOf(Choice([None]), _int_or_pair(), default=None, expected="null or a size"),
    "mean": ListOf(Float(), min_len=1, max_len=4, default=[0.485, 0.456, 0.406]),
    "std": ListOf(Float(min=1e-12), min_len=1, max_len=4, default=[0.229, 0.224, 0.225]),
})

DATASET = Mapping({
    "root": Str(doc="ImageFolder root or a glob"),
    "limit": Int(min=1, default=2000),
    "batch_size": Int(min=1, default=64, doc="(extension)"),
    "workers": Int(min=0, default=0, doc="(extension) DataLoader workers"),
})

LAYER = _auto_or(Str())
LAYERS = _auto_or(ListOf(Str(), coerce=True, min_len=1))

SECTION_SCHEMAS: Dict[str, Mapping] = {
    "summary": Mapping({"top_k": Int(min=1, max=20, default=5)}),
    "architecture": Mapping({
        "method": Choice(["auto", "fx", "hooks"], default="auto",
                         doc="(extension) torch.fx tracing, forward hooks, or fx with a hook fallback"),
        "layout": Choice(["grandalf", "dot", "auto"], default="grandalf",
                         doc="(extension) layout engine; dot needs Graphviz on PATH, auto uses it if present"),
    }),
    "filters": Mapping({
        "layer": LAYER,
        "normalize": Choice(["per_filter", "common"], default="per_filter"),
        "sort": Choice(["norm", "noise", "index"], default="norm"),
        "noise_threshold": Float(min=0, default=0.75,
                                 doc="(extension) roughness above which a filter may be noisy; it is flagged only "
                                     "when also inside the i.i.d.-noise band for its kernel shape"),
    }),
    "activations": Mapping({
        "layers": LAYERS,
        "max_channels": Int(min=1, max=1024, default=32),
    }),
    "topk": Mapping({
        "layers": LAYERS,
        "channels": OneOf(Int(min=1, max=512), ListOf(Int(min=0), min_len=1), default=16,
                          expected="a count or a list of channel indices"),
        "k": Int(min=1, max=64, default=9),
        "projection": Choice(["none", "guided", "deconv"], default="none",
                             doc="(extension) guided-backprop / deconvnet projection of each patch"),
    }),
    "occlusion": Mapping({
        "window": _int_or_pair(),
        "stride": _int_or_pair(),
        "baseline": OneOf(Choice(["mean", "zero", "grey", "gray", "blur"]), Float(), default="mean",
                          expected="mean, zero, grey, blur or a number"),
        "target": Choice(["predicted"], default="predicted", doc="(extension)"),
        "incremental": Choice([False, True, AUTO], default=AUTO,
                              doc="(extension) recompute only what each occluder changes (exact)"),
        "top_classes": Int(min=1, max=10, default=1, doc="(extension)"),
        "faithfulness_steps": OneOf(Choice([AUTO]), Int(min=1), default=AUTO,
                                    expected="'auto' or a number of deletion/insertion steps"),
    }),
    "cam": Mapping({
        "methods": ListOf(Choice(CAM_METHODS), min_len=1, coerce=True, default=["gradcam", "gradcampp"]),
        "layer": LAYER,
        "top_classes": Int(min=1, max=10, default=1, doc="(extension) maps for the top-k classes"),
        "faithfulness_steps": OneOf(Choice([AUTO]), Int(min=1), default=AUTO,
                                    expected="'auto' or a number of deletion/insertion steps"),
        "sanity_threshold": OneOf(Choice([None]), Float(min=-1, max=1), default=None,
                                  expected="null (use findings.sanity_spearman) or a number in [-1, 1]",
                                  doc="(extension) Spearman above which a method fails the randomization check"),
    }),
    "gradients": Mapping({
        "methods": ListOf(Choice(GRADIENT_METHODS), min_len=1, coerce=True,
                          default=["saliency", "guided_backprop", "integrated_gradients"]),
        "steps": Int(min=2, default=32),
        "samples": Int(min=1, default=16),
        "noise": Float(min=0, default=0.15),
        "top_classes": Int(min=1, max=10, default=1, doc="(extension)"),
        "faithfulness_steps": OneOf(Choice([AUTO]), Int(min=1), default=AUTO,
                                    expected="'auto' or a number of deletion/insertion steps"),
        "sanity_threshold": OneOf(Choice([None]), Float(min=-1, max=1), default=None,
                                  expected="null (use findings.sanity_spearman) or a number in [-1, 1]",
                                  doc="(extension) Spearman above which a method fails the randomization check"),
    }),
    "evolution": Mapping({
        "layer": LAYER,
        "activations_layer": LAYER,
        "channels": Int(min=1, max=64, default=8, doc="(extension) feature-map channels followed"),
        "max_filters": Int(min=1, max=1024, default=64, doc="(extension)"),
        "histogram_layers": Int(min=2, max=64, default=12,
                                doc="(extension) conv/linear layers with weight/bias ridgelines"),
        "bins": Int(min=4, max=256, default=40, doc="(extension)"),
    }),
    "curves": Mapping({}),
    "featureviz": Mapping({
        "layers": LAYERS,
        "channels": OneOf(Int(min=1, max=64), ListOf(Int(min=0), min_len=1), default=4,
                          expected="a number of channels or a list of channel indices"),
        "classes": OneOf(Choice(["predicted", "none"]),
                         ListOf(OneOf(Int(min=0), Str(), expected="a class index or name"), min_len=1),
                         default="predicted", expected="'predicted', 'none' or a list of classes"),
        "max_classes": Int(min=0, max=32, default=4),
        "steps": Int(min=1, max=4096, default=128),
        "size": Int(min=8, max=512, default=128, doc="synthesized side, capped at the model input size"),
        "lr": Float(min=0, default=0.05),
        "tv": Float(min=0, default=0.0),
        "fft": Bool(default=True),
        "decorrelate": Bool(default=True),
        "batch_size": Int(min=1, default=16),
        "budget": OneOf(Choice(["auto"]), Float(min=0), default="auto",
                        expected="'auto' or GMACs (auto: 300 on CPU, 20000 on CUDA)"),
        "reference_images": Int(min=0, default=64),
    }),
    "embeddings": Mapping({
        "method": Choice(["pca", "tsne"], default="pca"),
        "layer": LAYER,
        "perplexity": Float(min=1, default=30.0),
        "thumbnail": Int(min=8, max=128, default=32),
    }),
}
# defaults that must be filled after construction (Mapping defaults are dicts)
SECTION_SCHEMAS["occlusion"].fields["window"].default = 16
SECTION_SCHEMAS["occlusion"].fields["stride"].default = 8


class Sections(Option):
    """`sections:` maps a known section name to false, true, or its options."""

    check_default = True

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise OptionError(f"expected a mapping of section names, got {type(value).__name__}", path)
        for key in value:
            if key not in SECTION_SCHEMAS:
                raise OptionError(f"unknown section {key!r}{suggest(key, SECTION_SCHEMAS)}; sections: "
                                  f"{', '.join(SECTION_SCHEMAS)}", join_path(path, key))
        out: Dict[str, Any] = {}
        for name, schema in SECTION_SCHEMAS.items():
            sub = join_path(path, name)
            raw = value.get(name, {})
            if raw is False:
                out[name] = False
                continue
            if raw is True or raw is None:
                raw = {}
            out[name] = schema.check(raw, sub)
        return out


OUTPUT = Mapping({
    "dir": Str(default=None, nullable=True),
    "theme": Str(default="light", doc="light, dark, or a path to a CSS file"),
    "timestamp": Bool(default=False, doc="(extension) print the build time in the report footer"),
})

FINDINGS = Mapping({
    "dead_channel_fraction": Float(min=0, max=1, default=0.25, doc="(extension)"),
    "noisy_filter_fraction": Float(min=0, max=1, default=0.25, doc="(extension)"),
    "frozen_change": Float(min=0, default=1e-6,
                           doc="(extension) relative change per transition below which a layer is frozen"),
    "norm_growth": Float(min=1, default=10.0, doc="(extension) last/first weight-norm ratio: explosion"),
    "norm_shrink": Float(min=0, max=1, default=0.1, doc="(extension) last/first weight-norm ratio: vanishing"),
    "regression_points": Float(min=0, default=2.0,
                               doc="(extension) accuracy points the last value may trail the best"),
    "regression_loss": Float(min=0, default=0.10, doc="(extension) relative rise of a loss over its best"),
    "sanity_spearman": Float(min=-1, max=1, default=0.5,
                             doc="(extension) map similarity after weight randomization that fails a method"),
    "border_band": Float(min=0, max=0.5, default=0.1, doc="(extension) width of the border band, fraction of side"),
    "border_ratio": Float(min=0, default=2.0, doc="(extension) border share over the band's area share"),
    "border_share": Float(min=0, max=1, default=0.5, doc="(extension) minimum border share of attribution mass"),
})

SPEC = Mapping({
    "title": Str(),
    "description": Str(default="", nonempty=False),
    "model": MODEL,
    "checkpoints": ListOf(CHECKPOINT_ITEM, coerce=True, default=[]),
    "audit_checkpoint": OneOf(Int(), Str(), default="last", expected="'last', an index or a label"),
    "probes": OneOf(Choice([None]), PROBES, default=None, expected="a mapping {images, targets}"),
    "classes": OneOf(Choice([None]), Str(), ListOf(OneOf(Str(nonempty=False), Int(), expected="a name")),
                     default=None, expected="a list of names or a .txt/.json file"),
    "preprocess": PREPROCESS,
    "metrics": Str(default=None, nullable=True),
    "dataset": OneOf(Choice([None]), DATASET, default=None, expected="a mapping {root, limit}"),
    "sections": Sections(default={}),
    "output": OUTPUT,
    "findings": FINDINGS,
    "device": Choice(["auto", "cpu", "cuda"], default="auto"),
    "seed": Int(min=0, default=0),
})

"""``reportgen.explain``: one entry point for every attribution method (SPEC.md, Library API).

Methods live in a registry, name -> callable, like Captum's single
``attribute()``: each callable is ``fn(model, images, target, [layer], *,
output_key, **params) -> numpy array``. The registry also says which report
section draws each built-in method (``methods(section)``): the sections'
``methods`` options take their choices from it, so the public function and
the spec name the same methods and a bad name lists them from one place.
Another module adds a method with ``register_method`` (drawn by no section);
occlusion is registered lazily from ``reportgen.analyses.occlusion.occlusion``
when that module exists (``_LAZY``).
"""
from __future__ import annotations

import importlib.util
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from reportgen.analyses import cam as _cam
from reportgen.analyses import gradients as _grad
from reportgen.model.hooks import eval_mode
from reportgen.model.layers import get_layer
from reportgen.model.loading import model_device

Method = Callable[..., Any]

# The built-in methods, by the report section that draws them (occlusion: its own, below)
_BUILTIN: Dict[str, Dict[str, Method]] = {
    "cam": {"cam": _cam.cam, "gradcam": _cam.gradcam, "gradcampp": _cam.gradcampp,
            "scorecam": _cam.scorecam, "eigencam": _cam.eigencam},
    "gradients": {"saliency": _grad.saliency, "deconvnet": _grad.deconvnet,
                  "guided_backprop": _grad.guided_backprop,
                  "integrated_gradients": _grad.integrated_gradients, "smoothgrad": _grad.smoothgrad},
}
_METHODS: Dict[str, Method] = {name: fn for group in _BUILTIN.values() for name, fn in group.items()}
_DRAWN_BY: Dict[str, str] = {name: section for section, group in _BUILTIN.items() for name in group}
_DRAWN_BY["occlusion"] = "occlusion"

# filled in by explain() itself, never by the caller's **params
_RESERVED = ("model", "images", "target", "layer", "output_key")


def register_method(name: str, fn: Method) -> Method:
    """Add an attribution method; names are unique, as in torchvision's model registry."""
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    _METHODS[name] = fn
    return fn


def _lazy(module: str, attr: str) -> Method:
    """A registry entry that imports ``module.attr`` on first use.

    Keeps ``import reportgen.explain`` free of analyses it may never run, and
    lets a method's module land after this one. ``load`` exposes the real
    function so its parameters can be checked like any other method's.
    """
    def load() -> Method:
        return getattr(importlib.import_module(module), attr)

    def run(model: nn.Module, images: torch.Tensor, target: Any = None, *,
            output_key: Any = None, **params: Any) -> np.ndarray:
        result = load()(model, images, target, output_key=output_key, **params)
        # analyses may return (array, extras); explain() returns the array
        return result[0] if isinstance(result, tuple) else result

    run.load = load  # type: ignore[attr-defined]
    return run


_LAZY = {"occlusion": ("reportgen.analyses.occlusion", "occlusion")}


def _ensure_lazy_methods() -> None:
    for name, (module, attr) in _LAZY.items():
        if name not in _METHODS and importlib.util.find_spec(module) is not None:
            _METHODS[name] = _lazy(module, attr)


def methods(section: Optional[str] = None) -> List[str]:
    """Sorted names of every available method; with ``section``, the methods that report
    section draws, in the registry's order (the choices of its ``methods`` option)."""
    _ensure_lazy_methods()
    if section is None:
        return sorted(_METHODS)
    return [name for name in _METHODS if _DRAWN_BY.get(name) == section]


def drawn_by(name: Any) -> Optional[str]:
    """The report section that draws method ``name``; None for a registered or unknown one."""
    return _DRAWN_BY.get(name) if isinstance(name, str) else None


def get_method(name: str) -> Method:
    """The callable registered as ``name``; ValueError listing the valid names otherwise."""
    _ensure_lazy_methods()
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(methods())}")
    return _METHODS[name]


def _parameters(fn: Method) -> Mapping[str, inspect.Parameter]:
    """The parameters of the function a registry entry finally calls."""
    return inspect.signature(fn.load() if hasattr(fn, "load") else fn).parameters


def _check_params(name: str, fn: Method, params: Dict[str, Any], layer: Optional[str]) -> None:
    """Unknown keyword -> ValueError naming what the method accepts (not a bare TypeError)."""
    sig = _parameters(fn)
    if layer is not None and "layer" not in sig:
        takes = [m for m in methods() if "layer" in _parameters(_METHODS[m])]
        raise ValueError(f"method {name!r} attributes to the input pixels and takes no layer; "
                         f"layer applies to: {', '.join(takes)}")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        return
    valid = sorted(k for k in sig if k not in _RESERVED)
    for key in sorted(params):
        if key not in sig or key in _RESERVED:
            raise ValueError(f"unknown parameter {key!r} for method {name!r}; valid parameters: "
                             f"{', '.join(valid + ['output']) or '(none)'}")


def _check_images(images: Any) -> torch.Tensor:
    if not torch.is_tensor(images):
        raise ValueError(f"images must be a float tensor (N, C, H, W), not {type(images).__name__}")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W); got {images.dtype} "
                         f"of shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty (N = 0)")
    return images


def explain(model: nn.Module, images: torch.Tensor, method: str, target: Any = None,
            layer: Optional[str] = None, **params: Any) -> np.ndarray:
    """Attribution maps for ``images`` as a float32 numpy array (SPEC.md, Library API).

    ``target``: an int, a list of N ints, or None for the predicted class.
    ``layer``: a dotted module name for the CAM family, None for the automatic
    choice. ``output=`` picks the class scores from a tuple/dict output (as
    the spec's ``model.output``); other keywords go to the method. The model
    runs in eval mode (each module's flag is restored after) with no hook
    left on it, whatever happens.
    """
    fn = get_method(method)
    output_key = params.pop("output", None)
    _check_params(method, fn, params, layer)
    images = _check_images(images)
    if layer is not None:
        get_layer(model, layer)
    if isinstance(target, (list, tuple, np.ndarray, torch.Tensor)):
        n_targets = target.numel() if torch.is_tensor(target) else len(target)
        if n_targets != images.shape[0]:
            raise ValueError(f"target has {n_targets} entries but there are {images.shape[0]} images")
    images = images.detach().to(model_device(model, images.device))
    kwargs = dict(params, output_key=output_key)
    if layer is not None:
        kwargs["layer"] = layer
    # gradients are needed even when the caller sits in no_grad / inference_mode
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        result = fn(model, images, target, **kwargs)
    return np.asarray(result, dtype=np.float32)

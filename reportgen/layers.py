"""Finding layers by dotted name, and picking sensible ones automatically."""
from __future__ import annotations

import difflib
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from reportgen.errors import MethodNotApplicable


def layer_names(model: nn.Module) -> List[str]:
    """Dotted names of every sub-module (the root, named "", excluded)."""
    return [n for n, _ in model.named_modules() if n]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name``; ValueError listing close matches otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    raise ValueError(f"unknown layer {name!r}.{hint} Valid layers: {shown}")


def first_conv(model: nn.Module) -> str:
    """Name of the first Conv2d in registration order (the usual 'first layer')."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) or (getattr(m, "original_name", None) == "Conv2d" and name):
            return name
    raise ValueError("the model has no Conv2d layer")


@torch.no_grad()
def output_shapes(model: nn.Module, example: torch.Tensor) -> Dict[str, Tuple[int, ...]]:
    """Output shape of every leaf and container module for one forward pass.

    Modules called several times keep their last shape; modules never called
    are absent.
    """
    from reportgen.hooks import eval_mode, hooks
    from reportgen.outputs import select_output

    shapes: Dict[str, Tuple[int, ...]] = {}

    def make(name):
        def fn(_m, _i, out):
            if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
                out = out[0]
            if torch.is_tensor(out):
                shapes[name] = tuple(out.shape)
        return fn

    with eval_mode(model), hooks() as hs:
        for name, m in model.named_modules():
            if name:
                hs.append(m.register_forward_hook(make(name)))
        select_output(model(example), None)
    return shapes


def last_spatial_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last module (in execution order) whose output is (N, C, H, W) with H*W > 1.

    This is the usual CAM target: the deepest layer that still has a spatial map.
    Containers win over their last child when they produce the same tensor, so
    'layer4' is chosen for a ResNet rather than 'layer4.1.relu'. A model without
    one, or a TorchScript model (no hooks), raises ``MethodNotApplicable``.
    """
    from reportgen.hooks import eval_mode, hooks
    from reportgen.outputs import select_output

    if isinstance(model, torch.jit.ScriptModule):
        raise MethodNotApplicable("needs forward hooks on a layer, which a TorchScript model does not "
                                  "allow (its modules run outside Python)")

    order: List[Tuple[str, Tuple[int, ...]]] = []

    def make(name):
        def fn(_m, _i, out):
            if torch.is_tensor(out):
                order.append((name, tuple(out.shape)))
        return fn

    with torch.no_grad(), eval_mode(model), hooks() as hs:
        for name, m in model.named_modules():
            if name:
                hs.append(m.register_forward_hook(make(name)))
        select_output(model(example), None)
    spatial = [n for n, s in order if len(s) == 4 and s[2] * s[3] > 1]
    if not spatial:
        raise MethodNotApplicable("no layer of the model has a spatial (N, C, H, W) output")
    last = spatial[-1]
    # forward hooks fire child-first, so a container that ends with `last`
    # fires right after it; prefer the outermost such container.
    best = last
    for name in spatial[::-1]:
        if last.startswith(name + "."):
            best = name if len(name) < len(best) else best
    return best

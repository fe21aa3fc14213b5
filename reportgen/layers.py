"""Finding layers by dotted name, and picking sensible ones automatically."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from reportgen.errors import MethodNotApplicable
from reportgen.hooks import record_calls
from reportgen.layer_lookup import get_layer, layer_names
from reportgen.outputs import select_output

__all__ = ["layer_names", "get_layer", "first_conv", "output_shapes", "spatial_calls", "last_spatial_layer"]


def first_conv(model: nn.Module) -> str:
    """Name of the first Conv2d in registration order (the usual 'first layer')."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) or (getattr(m, "original_name", None) == "Conv2d" and name):
            return name
    raise ValueError("the model has no Conv2d layer")


def output_shapes(model: nn.Module, example: torch.Tensor) -> Dict[str, Tuple[int, ...]]:
    """Output shape of every leaf and container module for one forward pass.

    Modules called several times keep their last shape; modules never called
    are absent.
    """
    rec = record_calls(model, example)
    select_output(rec.output, None)
    return {c.name: tuple(c.tensor.shape) for c in rec.calls if c.name and c.tensor is not None}


def spatial_calls(model: nn.Module, example: torch.Tensor) -> List[Tuple[str, Tuple[int, int]]]:
    """(name, (H, W)) of every module call, in execution order, that returns an
    (N, C, H, W) tensor with H*W > 1. A module called twice appears twice."""
    rec = record_calls(model, example)
    select_output(rec.output, None)
    return [(c.name, (int(c.output.shape[2]), int(c.output.shape[3]))) for c in rec.calls
            if c.name and torch.is_tensor(c.output) and c.output.ndim == 4
            and c.output.shape[2] * c.output.shape[3] > 1]


def last_spatial_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last module (in execution order) whose output is (N, C, H, W) with H*W > 1.

    This is the usual CAM target: the deepest layer that still has a spatial map.
    Containers win over their last child when they produce the same tensor, so
    'layer4' is chosen for a ResNet rather than 'layer4.1.relu'. A model without
    one, or a TorchScript model (no hooks), raises ``MethodNotApplicable``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodNotApplicable("needs forward hooks on a layer, which a TorchScript model does not "
                                  "allow (its modules run outside Python)")
    spatial = [name for name, _hw in spatial_calls(model, example)]
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

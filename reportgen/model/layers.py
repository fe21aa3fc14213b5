"""Finding layers by dotted name, and picking sensible ones automatically.

Which outputs are feature maps, and how they are laid out (channels-first,
channels-last, token sequences), is decided by ``reportgen.model.layout``
on one recorded forward pass (:func:`call_layouts`); every automatic choice
here reads that one decision.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from reportgen.errors import MethodNotApplicable
from reportgen.model.hooks import Call, hooks, record_calls
from reportgen.model.layer_lookup import get_layer, layer_names
from reportgen.model.layout import AUTO, Layout, detect, infer, known_grids
from reportgen.model.outputs import select_output

__all__ = ["layer_names", "get_layer", "first_conv", "output_shapes", "call_layouts", "spatial_calls",
           "layer_layouts", "last_spatial_layer", "last_spatial_call"]


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


def call_layouts(model: nn.Module, example: torch.Tensor,
                 output_key: Any = None) -> List[Tuple[Call, Optional[Layout]]]:
    """Every module call of one forward pass with the layout of its output (None: not a feature map)."""
    rec = record_calls(model, example)
    select_output(rec.output, output_key)
    found = detect(rec.calls, model, tuple(example.shape[-2:]), int(example.shape[0]))
    return list(zip(rec.calls, found))


def _pickable(call: Call, layout: Optional[Layout]) -> bool:
    """A named call whose plain-tensor output is a feature map larger than 1x1, no attention internal."""
    return (bool(call.name) and layout is not None and layout.skip is None and torch.is_tensor(call.output)
            and layout.grid[0] * layout.grid[1] > 1)


def spatial_calls(model: nn.Module, example: torch.Tensor) -> List[Tuple[str, Tuple[int, int]]]:
    """(name, (h, w)) of every module call, in execution order, whose output is a feature map
    with h*w > 1: (N, C, H, W), or channels-last or tokens read as one (``reportgen.model.layout``),
    attention internals left out. A module called twice appears twice."""
    return [(c.name, lay.grid) for c, lay in call_layouts(model, example) if _pickable(c, lay)]


Stated = Union[str, Mapping[str, str]]


def layer_layouts(model: nn.Module, example: torch.Tensor, names: Sequence[str],
                  stated: Stated = AUTO, output_key: Any = None, strict: bool = True) -> Dict[str, Layout]:
    """The Layout of each named layer's output (its last call), detected or as ``stated``.

    ``stated`` is one kind for all ("auto", "nchw", "nhwc", "tokens") or a
    mapping name -> kind. A named layer is read even where automatic choices
    would skip it (an attention internal). ValueError when a layer is unknown
    or not called, and (``strict``) when its output cannot be read in the
    layout asked for; without ``strict`` such a layer is left out.
    """
    for name in names:
        get_layer(model, name)
    found = call_layouts(model, example, output_key)
    last: Dict[str, Tuple[Call, Optional[Layout]]] = {c.name: (c, lay) for c, lay in found}
    grids = known_grids(model, [lay for _, lay in found])
    out: Dict[str, Layout] = {}
    for name in names:
        if name not in last:
            raise ValueError(f"layer {name!r} was not called during the forward pass")
        call, detected = last[name]
        kind = stated.get(name, AUTO) if isinstance(stated, Mapping) else stated
        try:
            out[name] = _resolve(name, call, detected, kind, model, example, grids)
        except ValueError:
            if strict:
                raise
    return out


def _resolve(name: str, call: Call, detected: Optional[Layout], kind: str, model: nn.Module,
             example: torch.Tensor, grids) -> Layout:
    tensor = call.tensor
    shape = tuple(tensor.shape) if tensor is not None else None
    if kind == AUTO:
        if detected is not None:
            return detected
        raise ValueError(f"layer {name!r} has output shape {list(shape) if shape else type(call.output).__name__}, "
                         "not (N, C, H, W), channels-last (N, H, W, C) or tokens (N, L, C) on a grid: not "
                         "a feature map; pick a convolutional or transformer-block layer, or state its "
                         "layout (layout: nchw | nhwc | tokens)")
    layout = infer(shape, kind, model, tuple(example.shape[-2:]), grids) if shape is not None else None
    if layout is None:
        raise ValueError(f"layer {name!r} has output shape {list(shape) if shape else None}, which is not a "
                         f"{kind} feature map for a {example.shape[-2]}x{example.shape[-1]} input")
    return layout


def last_spatial_layer(model: nn.Module, example: torch.Tensor, output_key: Any = None) -> str:
    """The last module (in execution order) whose output is a feature map with H*W > 1.

    This is the usual CAM target: the deepest layer that still has a spatial map.
    Containers win over their last child when they produce the same tensor, so
    'layer4' is chosen for a ResNet rather than 'layer4.1.relu'. Where maps
    carry prefix tokens (a ViT's class token), only layers whose grid the class
    score depends on count (one backward pass): after a ViT's last attention
    every patch token is read only by itself, and a head that reads the class
    token gives them zero gradient, so the choice is the last block's
    ``norm1``, where the patch tokens still feed the class token. A model
    without a map, or a TorchScript model (no hooks), raises
    ``MethodNotApplicable``.
    """
    return last_spatial_call(model, example, output_key)[0]


def last_spatial_call(model: nn.Module, example: torch.Tensor,
                      output_key: Any = None) -> Tuple[str, Layout]:
    """:func:`last_spatial_layer` and the Layout of its output, from one recorded pass."""
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodNotApplicable("needs forward hooks on a layer, which a TorchScript model does not "
                                  "allow (its modules run outside Python)")
    found = [(c, lay) for c, lay in call_layouts(model, example, output_key) if _pickable(c, lay)]
    if not found:
        raise MethodNotApplicable("no layer of the model has a spatial (N, C, H, W) output")
    layouts = {c.name: lay for c, lay in found}      # a module called twice: its last call
    spatial = [c.name for c, _ in found]
    if any(lay.prefix for lay in layouts.values()):
        depends = score_dependent(model, example, layouts, output_key)
        spatial = [n for n in spatial if n in depends] or spatial
    last = spatial[-1]
    # forward hooks fire child-first, so a container that ends with `last`
    # fires right after it; prefer the outermost such container.
    best = last
    for name in spatial[::-1]:
        if last.startswith(name + "."):
            best = name if len(name) < len(best) else best
    return best, layouts[best]


def score_dependent(model: nn.Module, example: torch.Tensor, layouts: Mapping[str, Layout],
                    output_key: Any = None) -> Set[str]:
    """The layers among ``layouts`` whose map (grid positions only) the top class score has a
    nonzero gradient on, for ``example``; one forward and one backward pass, in eval mode."""
    from reportgen.model.hooks import eval_mode

    outs: List[Tuple[str, torch.Tensor]] = []

    def keep(name: str):
        def fn(_module, _inputs, output):
            # the rest of the network gets a clone, so a later in-place op cannot change `output`
            if torch.is_tensor(output) and output.requires_grad:
                outs.append((name, output))
                return output.clone()
            return None
        return fn

    with eval_mode(model), torch.enable_grad(), hooks() as hs:
        for name in layouts:
            hs.append(get_layer(model, name).register_forward_hook(keep(name)))
        scores = select_output(model(example.detach()), output_key)
    if not outs or not scores.requires_grad:
        return set()
    top = scores.gather(1, scores.argmax(dim=1, keepdim=True)).sum()
    grads = torch.autograd.grad(top, [o for _, o in outs], allow_unused=True)
    depends: Set[str] = set()
    for (name, out), g in zip(outs, grads):
        if g is None or tuple(g.shape) != tuple(out.shape):
            continue
        try:
            on_grid = layouts[name].to_nchw(g)
        except ValueError:
            continue
        if bool(on_grid.abs().amax() > 0):
            depends.add(name)
    return depends

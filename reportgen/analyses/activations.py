"""Feature maps of chosen layers for each probe, and how alive each layer is.

Seeds (activation visualization): good feature maps are sparse and local; a
map that looks like the input learned little; channels that never fire are
dead capacity. Layers default to the last module of each resolution stage.

A channel that never fires on the probes is either dead for certain or merely
silent. Dead: even its largest pre-activation lies more than ``DEAD_SPREADS``
spreads below zero, the spread being the layer's robust standard deviation
(1.4826 x the median absolute deviation over all probes, channels and
positions, so a few dead channels cannot widen it). Such a channel needs an
input unlike any probe by many spreads to fire, so one probe shows it as
surely as a thousand (a bias of -1000 does that). Silent: never positive, yet
not that far below zero; on a few probes that may just be a selective channel.
The values judged are the layer's recorded output, or for a ReLU module its
input: a ReLU's output is >= 0 and cannot tell -0.01 from -1000. A layer whose
output has passed a ReLU inside it (a ResNet stage) is >= 0 too, so its quiet
channels are only ever silent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from reportgen.model.hooks import ActivationRecorder, eval_mode, hooks
from reportgen.model.layer_lookup import get_layer
from reportgen.model.layers import Stated, layer_layouts, spatial_calls
from reportgen.model.layout import AUTO, Layout
from reportgen.model.outputs import select_output

DEAD_SPREADS = 6.0   # a channel peaking this many layer spreads below zero is dead for certain


def stage_layers(model: nn.Module, example: torch.Tensor, max_layers: int = 4) -> List[str]:
    """The outermost module that ends each run of equal spatial resolution.

    For a ResNet that is [relu, layer1, layer2, layer3, layer4]; when there are
    more stages than ``max_layers``, evenly spaced ones are kept, always
    including the deepest. Channels-last maps and token grids count by their
    grid (``reportgen.model.layers.spatial_calls``): a Swin gives one pick per stage,
    a ViT (one grid throughout) its final norm.
    """
    done = spatial_calls(model, example[:1])
    runs: List[List[str]] = []
    last_hw = None
    for name, hw in done:
        if hw != last_hw:
            runs.append([])
            last_hw = hw
        runs[-1].append(name)
    picks = []
    for run in runs:
        depth = min(n.count(".") for n in run)
        picks.append([n for n in run if n.count(".") == depth][-1])
    picks = list(dict.fromkeys(picks))  # a container can close two runs; keep it once
    if len(picks) > max_layers:
        idx = np.linspace(0, len(picks) - 1, max_layers).round().astype(int)
        picks = [picks[i] for i in sorted(set(idx.tolist()))]
    return picks


@dataclass
class LayerActivations:
    layer: str
    shape: List[int]             # (C, h, w), as read in ``layout``
    channels: np.ndarray         # (N, K) channel indices shown per probe, most active first
    maps: np.ndarray             # (N, K, h, w) float32
    mean_activation: np.ndarray  # (N, C) spatial mean per probe and channel
    sparsity: float              # fraction of activations <= 0 over all probes
    dead: np.ndarray             # (C,) bool: dead for certain (see the module docstring)
    silent: np.ndarray           # (C,) bool: never positive on any probe, yet not provably dead
    layout: str = "nchw"         # how the layer's output was read: nchw | nhwc | tokens

    @property
    def never_fire(self) -> np.ndarray:
        """(C,) bool: never positive on any probe, dead or silent."""
        return self.dead | self.silent


@dataclass
class ActivationsResult:
    layers: List[LayerActivations]
    auto: bool
    n_probes: int


@torch.no_grad()
def activations(model: nn.Module, batch: torch.Tensor, layers: Sequence[str], max_channels: int = 32,
                output_key=None, auto: bool = False, layout: Stated = AUTO,
                layouts: Optional[Mapping[str, Layout]] = None) -> ActivationsResult:
    """Feature maps of ``layers`` for every image of ``batch``.

    Each layer's output is read as (N, C, H, W) through its Layout:
    ``layouts`` when given, else detected on the first image or as ``layout``
    states ("auto", "nchw", "nhwc", "tokens", or a mapping layer -> kind).
    """
    if layouts is None:
        layouts = layer_layouts(model, batch[:1], layers, layout, output_key)
    relu_inputs: Dict[str, torch.Tensor] = {}

    def keep_input(name):
        def fn(_module, inputs):
            relu_inputs[name] = inputs[0].detach().clone()   # clone: an in-place ReLU overwrites it
        return fn

    with eval_mode(model), ActivationRecorder(model, layers) as rec, hooks() as hs:
        for name in layers:
            module = get_layer(model, name)
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                hs.append(module.register_forward_pre_hook(keep_input(name)))
        select_output(model(batch), output_key)
        outputs = dict(rec.outputs)
    result = []
    for name in layers:
        out = outputs.get(name)
        if out is None:
            raise ValueError(f"layer {name!r} was not called during the forward pass")
        lay = layouts[name]
        if out.ndim != (3 if lay.kind == "tokens" else 4):
            raise ValueError(f"layer {name!r} has output shape {tuple(out.shape)}, not (N, C, H, W); "
                             "pick a convolutional layer")
        pre = relu_inputs.get(name)
        la = _summarize_layer(name, lay.to_nchw(out).float(), max_channels,
                              None if pre is None else lay.to_nchw(pre).float())
        la.layout = lay.kind
        result.append(la)
    return ActivationsResult(layers=result, auto=auto, n_probes=int(batch.shape[0]))


def dead_and_silent(values: torch.Tensor, spreads: float = DEAD_SPREADS) -> Tuple[np.ndarray, np.ndarray]:
    """(dead, silent), (C,) bools, for a layer's pre-activations ``values`` (N, C, H, W).

    Without a spread (all values alike) nothing is dead for certain.
    """
    best = values.amax(dim=(0, 2, 3))
    flat = values.flatten()
    spread = float(1.4826 * (flat - flat.median()).abs().median())
    quiet = best <= 0
    if spread > 0 and np.isfinite(spread):
        dead = quiet & (best < -spreads * spread)
    else:
        dead = torch.zeros_like(quiet)
    return dead.cpu().numpy(), (quiet & ~dead).cpu().numpy()


def _summarize_layer(name: str, out: torch.Tensor, max_channels: int,
                     pre: Optional[torch.Tensor] = None) -> LayerActivations:
    n, c = out.shape[:2]
    mean = out.mean(dim=(2, 3))                                  # (N, C)
    k = min(max_channels, c)
    # stable order: by mean activation, ties by channel index
    order = torch.stack([torch.from_numpy(np.lexsort((np.arange(c), -m.cpu().numpy()))[:k])
                         for m in mean])
    maps = torch.stack([out[i, order[i]] for i in range(n)])
    dead, silent = dead_and_silent(out if pre is None else pre)
    return LayerActivations(layer=name, shape=list(out.shape[1:]), channels=order.numpy(),
                            maps=maps.cpu().numpy().astype(np.float32),
                            mean_activation=mean.cpu().numpy().astype(np.float32),
                            sparsity=float((out <= 0).float().mean()),
                            dead=dead, silent=silent)

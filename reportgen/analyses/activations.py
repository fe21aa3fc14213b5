"""Feature maps of chosen layers for each probe, and how alive each layer is.

Seeds (activation visualization): good feature maps are sparse and local; a
map that looks like the input learned little; channels that never fire are
dead capacity. Layers default to the last module of each resolution stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch
from torch import nn

from reportgen.hooks import ActivationRecorder, eval_mode
from reportgen.layers import spatial_calls
from reportgen.outputs import select_output


def stage_layers(model: nn.Module, example: torch.Tensor, max_layers: int = 4) -> List[str]:
    """The outermost module that ends each run of equal spatial resolution.

    For a ResNet that is [relu, layer1, layer2, layer3, layer4]; when there are
    more stages than ``max_layers``, evenly spaced ones are kept, always
    including the deepest.
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
    shape: List[int]             # (C, h, w)
    channels: np.ndarray         # (N, K) channel indices shown per probe, most active first
    maps: np.ndarray             # (N, K, h, w) float32
    mean_activation: np.ndarray  # (N, C) spatial mean per probe and channel
    sparsity: float              # fraction of activations <= 0 over all probes
    dead: np.ndarray             # (C,) bool: never positive on any probe


@dataclass
class ActivationsResult:
    layers: List[LayerActivations]
    auto: bool
    n_probes: int


@torch.no_grad()
def activations(model: nn.Module, batch: torch.Tensor, layers: Sequence[str], max_channels: int = 32,
                output_key=None, auto: bool = False) -> ActivationsResult:
    with eval_mode(model), ActivationRecorder(model, layers) as rec:
        select_output(model(batch), output_key)
        outputs = dict(rec.outputs)
    result = []
    for name in layers:
        out = outputs.get(name)
        if out is None:
            raise ValueError(f"layer {name!r} was not called during the forward pass")
        if out.ndim != 4:
            raise ValueError(f"layer {name!r} has output shape {tuple(out.shape)}, not (N, C, H, W); "
                             "pick a convolutional layer")
        result.append(_summarize_layer(name, out.float(), max_channels))
    return ActivationsResult(layers=result, auto=auto, n_probes=int(batch.shape[0]))


def _summarize_layer(name: str, out: torch.Tensor, max_channels: int) -> LayerActivations:
    n, c = out.shape[:2]
    mean = out.mean(dim=(2, 3))                                  # (N, C)
    k = min(max_channels, c)
    # stable order: by mean activation, ties by channel index
    order = torch.stack([torch.from_numpy(np.lexsort((np.arange(c), -m.cpu().numpy()))[:k])
                         for m in mean])
    maps = torch.stack([out[i, order[i]] for i in range(n)])
    alive = (out > 0).flatten(2).any(dim=2).any(dim=0)          # (C,)
    return LayerActivations(layer=name, shape=list(out.shape[1:]), channels=order.numpy(),
                            maps=maps.cpu().numpy().astype(np.float32),
                            mean_activation=mean.cpu().numpy().astype(np.float32),
                            sparsity=float((out <= 0).float().mean()),
                            dead=(~alive).cpu().numpy())

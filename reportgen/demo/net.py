"""ShapesNet: the small CNN the demo trains, shaped so its explanations are legible.

Design choices, each for the report rather than for accuracy:

* a 5x5 first convolution on the 3 colour channels, so the filters section
  shows recognisable colour/edge detectors;
* four conv/BN/ReLU stages with max-pooling, ending in an 8x8 map whose units
  see 40x40 pixels (receptive field), small enough that a class activation
  map can single out one object in a 64x64 image;
* global average pooling then one Linear layer, the architecture CAM was
  defined for, so ``fc.weight`` times the last feature map *is* the CAM;
* non-inplace ReLUs, because inplace ones break backward hooks (Grad-CAM,
  guided backprop) on the tensors they overwrite.

Layer names are stable (``features.conv1`` ... ``features.conv4``, ``fc``):
specs and tests refer to them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple

import torch
from torch import nn

# (in, out, kernel) per stage; every stage but the last halves the resolution.
STAGES: List[Tuple[int, int, int]] = [(3, 16, 5), (16, 32, 3), (32, 64, 3), (64, 64, 3)]


class ShapesNet(nn.Module):
    """conv(5x5) -> 3x conv(3x3), BN/ReLU, 3 max-pools -> 8x8x64 -> GAP -> Linear."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(_stages())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGES[-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _stages() -> "OrderedDict[str, nn.Module]":
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, (c_in, c_out, k) in enumerate(STAGES, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
        layers[f"relu{i}"] = nn.ReLU()
        if i < len(STAGES):
            layers[f"pool{i}"] = nn.MaxPool2d(2)
    return layers

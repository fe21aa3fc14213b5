"""A tiny, complete reportgen project on disk: factory model, checkpoints, probes, spec."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINYNET = '''
import torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv1(x))), 1))
'''

GOOD = """\
title: tiny
model:
  factory: tinynet:TinyNet
  kwargs: {num_classes: 3}
  input_size: [3, 16, 16]
checkpoints:
  - ckpt/*.pt
probes:
  images: [probes/*.png]
classes: [cat, dog, bird]
"""


def make_project(root: Path, spec_text: str = GOOD, checkpoints: int = 1) -> Path:
    """Write the project into ``root`` and return the spec's path."""
    (root / "tinynet.py").write_text(TINYNET)
    (root / "ckpt").mkdir(exist_ok=True)
    (root / "probes").mkdir(exist_ok=True)
    sys.path.insert(0, str(root))
    try:
        sys.modules.pop("tinynet", None)
        mod = importlib.import_module("tinynet")
        for epoch in range(1, checkpoints + 1):
            torch.manual_seed(epoch)
            torch.save({"model_state_dict": mod.TinyNet(3).state_dict(), "epoch": epoch,
                        "metrics": {"val_acc": 0.5 + 0.1 * epoch}},
                       root / "ckpt" / f"epoch_{epoch}.pt")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("tinynet", None)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "probes" / f"{name}.png")
    spec = root / "spec.yaml"
    spec.write_text(spec_text)
    return spec

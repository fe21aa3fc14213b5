"""Known answers for the shortcuts section: a shapes task with a planted watermark, trained in seconds.

Three classes (circle, square, triangle) drawn by ``reportgen.demo.shapes``.
``watermark="fixed"``: every image of class 0 carries a PATCH x PATCH white
square at a fixed place near the top-left corner, and its object is left out of
``ABSENT`` of its images, so the patch is the only reliable cue for class 0 (a
Clever Hans). ``"moving"``: the same patch at a random place in each image.
``None``: the plain task, no patch, every object drawn.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from reportgen.demo import shapes

CLASSES = ["circle", "square", "triangle"]
PATCH = 4
CORNER = (2, 2)          # (y, x) of the fixed patch
SIZE = 32                # image side: the shapes are drawn at 64 px and downscaled, so training takes seconds
ABSENT = 0.6             # share of class-0 images without their object
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

NET = '''
import torch
from torch import nn


class WatermarkNet(nn.Module):
    """Four conv/BN/ReLU stages (two max-pools: 32 -> 8 px), global average pool, linear."""

    def __init__(self, num_classes=3):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate([(3, 8), (8, 16), (16, 32), (32, 32)]):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
'''


def make_images(n: int, seed: int, watermark: Optional[str], size: int = SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 images (drawn at 64 px, then area-downscaled) and (N,) labels cycling 0, 1, 2."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    for i in range(n):
        image, _ = shapes._draw_one(rng, int(labels[i]))
        absent = rng.uniform() < ABSENT
        y, x = CORNER if watermark != "moving" else tuple(int(v) for v in rng.integers(2, size - PATCH - 2, 2))
        if watermark is not None and labels[i] == 0 and absent:
            # the object left out: only clutter, drawn from the same stream
            image = shapes._background(rng, rng.uniform(50, 205) + rng.uniform(-15, 15, size=3))
        if size != shapes.SIZE:
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BOX))
        if watermark is not None and labels[i] == 0:
            image = image.copy()
            image[y:y + PATCH, x:x + PATCH] = 255
        images[i] = image
    return images, labels


def to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def build_net(root: Path) -> nn.Module:
    (root / "watermarknet.py").write_text(NET)
    sys.path.insert(0, str(root))
    try:
        sys.modules.pop("watermarknet", None)
        import watermarknet  # noqa: F401 - the module just written
        return sys.modules["watermarknet"].WatermarkNet(len(CLASSES))
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("watermarknet", None)


def train(root: Path, watermark: Optional[str], seed: int = 0, n: int = 600, epochs: int = 8,
          size: int = SIZE) -> float:
    """Train on ``n`` images, write the checkpoint; returns the training accuracy of the last epoch."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = build_net(root)
    images, labels = make_images(n, 1000 + seed, watermark, size)
    x, y = to_input(images), torch.from_numpy(labels)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for _ in range(epochs):
        net.train()
        correct = 0
        for batch in torch.randperm(n, generator=gen).split(64):
            out = net(x[batch])
            loss = nn.functional.cross_entropy(out, y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == y[batch]).sum())
    (root / "ckpt").mkdir(exist_ok=True)
    torch.save(net.state_dict(), root / "ckpt" / "model.pt")
    return correct / n


def write_project(root: Path, watermark: Optional[str], seed: int = 0, n_dataset: int = 300,
                  sections: str = "", size: int = SIZE) -> Path:
    """Train, write ``n_dataset`` held-out images in class folders, a probe and the spec; the spec's path."""
    root.mkdir(parents=True, exist_ok=True)
    train(root, watermark, seed, size=size)
    images, labels = make_images(n_dataset, 5000 + seed, watermark, size)
    for i, (img, lab) in enumerate(zip(images, labels)):
        folder = root / "data" / CLASSES[lab]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    (root / "probes").mkdir(exist_ok=True)
    Image.fromarray(images[0]).save(root / "probes" / "p0.png")
    spec = root / "spec.yaml"
    spec.write_text(f"""\
title: watermark {watermark} seed {seed}
model:
  factory: watermarknet:WatermarkNet
  kwargs: {{num_classes: 3}}
  input_size: [3, {size}, {size}]
checkpoints: [ckpt/model.pt]
probes:
  images: [probes/p0.png]
classes: [{", ".join(CLASSES)}]
dataset:
  root: data
  limit: {n_dataset}
{sections}""")
    return spec

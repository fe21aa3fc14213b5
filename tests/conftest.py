"""Shared fixtures: tiny seeded CNNs and inputs, small enough to run anywhere in milliseconds."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """conv3x3 -> ReLU -> maxpool2 -> conv3x3 -> ReLU -> global average pool -> linear.

    ``relu`` picks how the ReLUs are called, so attribution code can be tested
    against every form a real model uses: "module" (nn.ReLU), "inplace"
    (nn.ReLU(inplace=True)), "functional" (F.relu in forward) and "tensor"
    (x.relu_() in forward). ReLU modules hold no parameters, so every variant
    built with the same seed has the same weights.
    """

    def __init__(self, in_ch: int = 3, classes: int = 4, mid: int = 6, feat: int = 5,
                 relu: str = "module"):
        super().__init__()
        self.mode = relu
        self.conv1 = nn.Conv2d(in_ch, mid, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(mid, feat, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(feat, classes)
        if relu in ("module", "inplace"):
            self.relu1 = nn.ReLU(inplace=relu == "inplace")
            self.relu2 = nn.ReLU(inplace=relu == "inplace")

    def _relu(self, x: torch.Tensor, which: str) -> torch.Tensor:
        if self.mode in ("module", "inplace"):
            return getattr(self, which)(x)
        if self.mode == "functional":
            return F.relu(x)
        x.relu_()          # in place, return value ignored on purpose
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self._relu(self.conv1(x), "relu1"))
        x = self._relu(self.conv2(x), "relu2")
        return self.fc(torch.flatten(self.gap(x), 1))


@pytest.fixture
def make_cnn() -> Callable[..., TinyCNN]:
    """Factory: ``make_cnn(in_ch=3, classes=4, mid=6, feat=5, relu="module", seed=0)``."""
    def make(seed: int = 0, **kwargs) -> TinyCNN:
        torch.manual_seed(seed)
        return TinyCNN(**kwargs).eval()
    return make


@pytest.fixture
def make_images() -> Callable[..., torch.Tensor]:
    """Factory: ``make_images(n=3, c=3, h=16, w=12, seed=0)``, a seeded (N, C, H, W) batch."""
    def make(n: int = 3, c: int = 3, h: int = 16, w: int = 12, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((n, c, h, w), generator=g)
    return make


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Builds in tests never read or fill the user's ~/.cache/reportgen."""
    import os
    old = os.environ.get("REPORTGEN_CACHE_DIR")
    os.environ["REPORTGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("reportgen-cache"))
    yield
    if old is None:
        os.environ.pop("REPORTGEN_CACHE_DIR", None)
    else:
        os.environ["REPORTGEN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The demo project, trained once per test session (about a minute on 2 cores).

    A user's file is put in the folder first: prepare_demo must leave it alone.
    REPORTGEN_TEST_DEMO_DIR names a folder to reuse across sessions instead
    (prepare_demo retrains there whenever the demo's code changed).
    """
    import os
    from pathlib import Path

    from reportgen.demo import prepare_demo

    reuse = os.environ.get("REPORTGEN_TEST_DEMO_DIR")
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("demo")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "notes.txt").exists():
        (out / "notes.txt").write_text("mine")
    prepare_demo(out, quiet=True)
    return out


@pytest.fixture(scope="session")
def trained_vit():
    """A small timm ViT (conv stem, 8x8 tokens + class token) trained on the demo's shapes task
    once per test session, about a minute of one CPU thread (see tests/vit_shapes.py)."""
    pytest.importorskip("timm")
    from tests.vit_shapes import train_vit

    return train_vit()

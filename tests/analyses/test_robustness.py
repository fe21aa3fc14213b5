"""The robustness pass on a model whose answer is known: classes differ only in 2-px gratings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reportgen.analyses import robustness as rb
from reportgen.analyses.topk import ImageDataset

SIDE = 64


def _images(n: int, seed: int, levels=(0.15, 0.35)):
    """Grey images on a random flat level; class 1 adds a vertical 1-px-on/1-px-off grating (period 2 px)."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(*levels, size=(n, 1, 1))
    y = np.arange(n) % 2
    stripes = np.where(np.arange(SIDE) % 2 == 0, 0.1, -0.1)[None, None, :]
    x = level + y[:, None, None] * stripes + rng.normal(0, 0.01, size=(n, SIDE, SIDE))
    return np.clip(x, 0, 1), y


def _train() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _images(512, seed=1, levels=(0.1, 0.9))   # every level: the class is the grating, not the grey
    xt = (torch.tensor(x, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1) - 0.5) / 0.25
    yt = torch.tensor(y)
    for step in range(200):
        idx = torch.arange(step * 32, step * 32 + 32) % 512
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def grating_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("gratings")
    x, y = _images(40, seed=2)
    items = []
    for i, (img, label) in enumerate(zip(x, y)):
        path = root / f"{i:03d}.png"
        Image.fromarray((img * 255).round().astype(np.uint8)).convert("RGB").save(path)
        items.append((path, str(label)))
    data = ImageDataset(items, (3, SIDE, SIDE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return rb.robustness_pass(_train(), data, y, ["gaussian_blur", "defocus_blur", "brightness", "contrast"],
                              [1, 2, 3, 4, 5], batch_size=16)


def test_gratings_fall_to_chance_under_blur_and_survive_brightness(grating_result):
    r = grating_result
    assert r.clean_accuracy >= 0.95
    acc = dict(zip(r.corruptions, r.accuracy))
    assert acc["gaussian_blur"][2:].max() <= 0.6, acc["gaussian_blur"]        # severities 3-5: chance
    assert acc["defocus_blur"][1:].max() <= 0.6, acc["defocus_blur"]
    assert acc["brightness"].min() >= 0.9, acc["brightness"]
    assert r.worst()["corruption"] in ("gaussian_blur", "defocus_blur")
    assert r.mean_accuracy_drop > 0.1
    assert r.examples and all(e["picture"].dtype == np.uint8 for e in r.examples)


def test_flip_rates_need_no_labels(grating_result, tmp_path):
    x, _ = _images(8, seed=3)
    items = []
    for i, img in enumerate(x):
        path = tmp_path / f"{i}.png"
        Image.fromarray((img * 255).round().astype(np.uint8)).convert("RGB").save(path)
        items.append((path, None))
    data = ImageDataset(items, (3, SIDE, SIDE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 2))
    r = rb.robustness_pass(model, data, [-1] * 8, ["gaussian_noise"], [1, 5], batch_size=3)
    assert r.accuracy is None and r.clean_accuracy is None and r.mean_accuracy_drop is None
    assert r.flip_rate.shape == (1, 2) and r.worst()["accuracy_drop"] is None


def test_spread_picks_evenly():
    assert rb.spread(10, 3) == [0, 4, 9] and rb.spread(3, 5) == [0, 1, 2]

"""Embeddings: features of separable toy data cluster, labels and errors are right, the SVG is safe."""
from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses import embeddings as emb
from reportgen.model.hooks import count_hooks
from reportgen.render.embeddings import render_embeddings, scatter_svg

CLASSES = ["red", "green", "blue"]


class ColourNet(nn.Module):
    """Mean colour -> 3 features -> linear; class k wins when channel k dominates."""

    def __init__(self):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.feat = nn.Linear(3, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.feat.weight.copy_(torch.eye(3) * 2 - 0.5)
            self.feat.bias.zero_()
            self.fc.weight.copy_(torch.eye(3))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.relu(self.feat(torch.flatten(self.gap(x), 1))))


class ToyDataset:
    """``items`` + ``load(i)`` like topk.ImageDataset, without files: colour images with noise."""

    def __init__(self, colours: List[int], folders: List[Optional[str]], seed: int = 0, size: int = 8):
        g = torch.Generator().manual_seed(seed)
        self.items = [(Path(f"img_{i}.png"), f) for i, f in enumerate(folders)]
        self.x = []
        for c in colours:
            img = 0.1 * torch.rand((3, size, size), generator=g)
            img[c] += 0.8
            self.x.append(img)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Tuple[torch.Tensor, np.ndarray]:
        x = self.x[i]
        return x, (x.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


def _toy(n_per: int = 6) -> ToyDataset:
    colours = [c for c in range(3) for _ in range(n_per)]
    return ToyDataset(colours, [CLASSES[c] for c in colours])


def test_separable_data_gives_separated_clusters():
    model = ColourNet().eval()
    res = emb.embeddings(model, _toy(), CLASSES, batch_size=4, thumb=8)
    assert res.coords.shape == (18, 2) and res.coords.dtype == np.float32
    assert res.layer == "fc" and res.layer_input and res.feature_dim == 3
    assert res.thumbnails.shape == (18, 8, 8, 3) and res.thumbnails.dtype == np.uint8
    assert res.names[0] == "red/img_0.png"
    means = np.stack([res.coords[res.labels == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(res.coords[res.labels == c] - means[c], axis=1).max() for c in range(3))
    gaps = [np.linalg.norm(means[a] - means[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 5 * spread, (gaps, spread)
    assert res.accuracy() == 1.0 and not res.misclassified.any()
    assert count_hooks(model) == 0


def test_misclassified_mask_and_unknown_labels():
    model = ColourNet().eval()
    colours = [0, 1, 2, 0, 1]
    folders = ["red", "red", "blue", None, "purple"]    # 1: wrong, 3: no folder, 4: not a class
    res = emb.embeddings(model, ToyDataset(colours, folders), CLASSES, thumb=4)
    assert res.labels.tolist() == [0, 0, 2, -1, -1]
    assert res.predictions.tolist() == [0, 1, 2, 0, 1]
    assert res.misclassified.tolist() == [False, True, False, False, False]
    assert res.accuracy() == pytest.approx(2 / 3)


def test_named_layer_is_pooled_and_batch_size_does_not_matter():
    model = ColourNet().eval()
    data = _toy(3)
    a = emb.embeddings(model, data, CLASSES, layer="gap", batch_size=2)
    b = emb.embeddings(model, data, CLASSES, layer="gap", batch_size=9)
    assert a.layer == "gap" and not a.layer_input and a.feature_dim == 3
    np.testing.assert_allclose(a.coords, b.coords, atol=1e-5)


def test_pca_is_deterministic_with_a_sign_convention():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)) * [5, 3, 1, 1, 1]
    c1, ev = emb.pca_2d(x)
    c2, _ = emb.pca_2d(x.copy())
    np.testing.assert_array_equal(c1, c2)
    assert ev[0] > ev[1] > 0 and ev.sum() <= 1
    # each axis's largest loading is positive, so negating the data negates the scores
    xc = x - x.mean(axis=0)
    loadings = np.linalg.lstsq(xc, c1.astype(np.float64), rcond=None)[0]     # (5, 2)
    for k in range(2):
        assert loadings[np.argmax(np.abs(loadings[:, k])), k] > 0
    c3, _ = emb.pca_2d(-x)
    np.testing.assert_allclose(c3, -c1, atol=1e-4)
    assert emb.pca_2d(np.zeros((0, 4)))[0].shape == (0, 2)
    assert emb.pca_2d(np.ones((1, 4)))[0].shape == (1, 2)


@pytest.mark.skipif(emb.tsne_backend() is None, reason="no t-SNE package (openTSNE/scikit-learn)")
def test_tsne_runs_and_is_seeded():
    x = np.concatenate([np.random.default_rng(0).normal(size=(10, 4)) + 8 * k for k in range(2)])
    a, backend = emb.tsne_2d(x, seed=1, perplexity=5)
    b, _ = emb.tsne_2d(x, seed=1, perplexity=5)
    assert a.shape == (20, 2) and backend in ("openTSNE", "scikit-learn")
    np.testing.assert_allclose(a, b, atol=1e-4)
    da = np.linalg.norm(a[:10].mean(0) - a[10:].mean(0))
    assert da > np.linalg.norm(a[:10] - a[:10].mean(0), axis=1).max()


def test_tsne_without_a_library_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("openTSNE", "sklearn") else real(name, *a))
    assert emb.tsne_backend() is None
    with pytest.raises(emb.MissingDependency, match="scikit-learn"):
        emb.tsne_2d(np.zeros((10, 3)))


def test_svg_parses_and_escapes_hostile_class_names():
    hostile = ['<script>alert("x")</script>', "a&b", "quote\"'"]
    model = ColourNet().eval()
    data = ToyDataset([0, 1, 2, 1], hostile[:3] + [hostile[0]])
    res = emb.embeddings(model, data, hostile, thumb=4)
    view = render_embeddings(res, hostile)
    svg = view["svg"]
    root = ET.fromstring(svg)                       # well-formed XML
    assert root.tag.endswith("svg")
    assert "<script" not in svg and "&lt;script&gt;" in svg and "a&amp;b" in svg
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any('<script>alert("x")</script>' in t for t in titles)   # round-trips as text
    assert view["sprite"]["uri"].startswith("data:image/webp;base64,")
    assert [item["name"] for item in view["legend"]] == hostile[:3]


def test_svg_is_deterministic_and_fixed_format():
    coords = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
    args = (coords, ["#ff0000"] * 3, np.array([False, True, False]), ["a", "b", "c"], "label")
    a, b = scatter_svg(*args), scatter_svg(*args)
    assert a == b
    root = ET.fromstring(a)
    for c in root.iter("{http://www.w3.org/2000/svg}circle"):
        assert len(c.get("cx").split(".")[1]) == 1
    # the misclassified point is drawn last, on top
    assert [c.get("data-i") for c in root.iter("{http://www.w3.org/2000/svg}circle")][-1] == "1"


def test_model_without_linear_needs_a_layer():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(ValueError, match="no nn.Linear"):
        emb.embeddings(model, _toy(1), CLASSES)
    assert count_hooks(model) == 0

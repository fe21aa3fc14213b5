"""One pass over the dataset feeds top-k, embeddings and predictions exactly as their own passes do."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.analyses import dataset_pass as dp
from reportgen.analyses import embeddings as emb
from reportgen.analyses import predictions as pr
from reportgen.analyses import topk as tk
from reportgen.model.layers import layer_layouts

SIZE = (3, 12, 12)


@pytest.fixture
def dataset(tmp_path) -> tk.ImageDataset:
    rng = np.random.default_rng(0)
    items = []
    for i in range(11):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        items.append((path, None))
    return tk.ImageDataset(items, SIZE, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


LABELS = (0, 1, 2, 3, -1, 0, 1, 2, 3, 0, 1)
CLASSES = ("a", "b", "c", "d")


def _taps(model, dataset, **over) -> dp.Taps:
    layouts = layer_layouts(model, dataset.load(0)[0][None], ["relu1", "relu2"])
    base = dict(topk_layers=("relu1", "relu2"), topk_k=4, topk_layouts=layouts, features_layer="fc",
                features_input=True, thumbnail=8, labels=LABELS, classes=CLASSES, keep=5)
    base.update(over)
    return dp.Taps(**base)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_one_pass_equals_the_three_separate_passes(make_cnn, dataset, batch_size):
    model = make_cnn()
    run = dp.dataset_pass(model, dataset, _taps(model, dataset), batch_size=batch_size)
    assert run.n_images == 11 and run.topk_error is run.features_error is run.labelled_error is None

    alone = tk.stream_topk(model, dataset, ["relu1", "relu2"], 4, batch_size=batch_size)
    for layer in ("relu1", "relu2"):
        for field in ("images", "positions"):
            assert run.topk.layers[layer][field].tolist() == alone.layers[layer][field].tolist()
        np.testing.assert_allclose(run.topk.layers[layer]["values"], alone.layers[layer]["values"], rtol=1e-6)

    batches = (torch.stack([dataset.load(i)[0] for i in range(j, min(j + batch_size, 11))])
               for j in range(0, 11, batch_size))
    feats, preds = emb.extract_features(model, batches, "fc", True)
    np.testing.assert_allclose(run.features, feats, rtol=1e-6)
    assert run.predictions.tolist() == preds.tolist()
    assert run.thumbnails.shape == (11, 8, 8, 3)
    assert np.array_equal(run.thumbnails[3], emb.thumbnail(dataset.load(3)[1], 8))

    counted = pr.prediction_pass(model, dataset, LABELS, CLASSES, batch_size=batch_size, keep=5)
    assert np.array_equal(run.labelled.confusion.confusion, counted.confusion.confusion)
    assert run.labelled.mistakes.indices.tolist() == counted.mistakes.indices.tolist()
    np.testing.assert_allclose(run.labelled.confidence, counted.confidence, rtol=1e-6)


def test_a_failing_tap_keeps_its_error_and_the_others_go_on(make_cnn, dataset):
    """A layer that is no feature map fails top-k alone; class names of the wrong count fail predictions alone."""
    model = make_cnn()
    taps = _taps(model, dataset, topk_layers=("fc",), topk_layouts={}, classes=("a", "b"), labels=(0,) * 11)
    run = dp.dataset_pass(model, dataset, taps, batch_size=4)
    assert isinstance(run.topk_error, ValueError) and run.topk is None
    assert "(N, C, H, W)" in str(run.topk_error)
    assert isinstance(run.labelled_error, ValueError) and run.labelled is None
    assert "2 classes are named" in str(run.labelled_error)
    assert run.features_error is None and run.features.shape == (11, 5)


def test_hooks_are_removed_and_the_mode_restored(make_cnn, dataset):
    model = make_cnn().train()
    dp.dataset_pass(model, dataset, _taps(model, dataset), batch_size=4)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_covers_and_merged():
    a = dp.Taps(topk_layers=("x",), topk_k=9)
    b = dp.Taps(features_layer="fc", features_input=True, thumbnail=32)
    both = a.merged(b)
    assert both.covers(a) and both.covers(b) and not a.covers(b)
    assert not both.covers(dp.Taps(topk_layers=("x",), topk_k=10))
    assert not both.covers(dp.Taps(labels=(0, 1), classes=("a", "b")))
    assert dp.Taps().empty and not both.empty

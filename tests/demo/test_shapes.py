"""The demo task's generator: deterministic, balanced, and boxes that are exact.

The pointing-game tests of later issues trust these boxes, and the demo's
claim that "only the shape tells the class" is checked here on the data.
"""
from __future__ import annotations

import numpy as np
import pytest

from reportgen.demo import held_out, shapes


def test_shapes_and_dtypes():
    images, labels, boxes = shapes.make_split(12, seed=3)
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int64
    assert boxes.shape == (12, 4) and boxes.dtype == np.int64
    assert len(shapes.CLASSES) >= 4


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = shapes.make_split(16, seed=5)
    b = shapes.make_split(16, seed=5)
    c = shapes.make_split(16, seed=6)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    assert a[0].tobytes() != c[0].tobytes()


def test_a_smaller_split_is_a_prefix_of_a_larger_one():
    small = shapes.make_split(5, seed=9)
    large = shapes.make_split(11, seed=9)
    for s, l in zip(small, large):
        np.testing.assert_array_equal(s, l[:5])


def test_classes_are_balanced():
    _, labels, _ = shapes.make_split(40, seed=1)
    assert np.bincount(labels, minlength=len(shapes.CLASSES)).tolist() == [10] * len(shapes.CLASSES)


def test_box_is_the_tight_box_of_the_object_pixels():
    _, _, boxes, masks = shapes.make_split(60, seed=2, with_masks=True)
    for box, mask in zip(boxes, masks):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert mask.any() and not (mask & ~inside).any(), "object pixels outside the box"
        # tight: every edge row/column of the box holds object pixels
        assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
        assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def test_object_pixels_are_one_colour_that_stands_out_from_the_background():
    images, _, _, masks = shapes.make_split(40, seed=4, with_masks=True)
    for image, mask in zip(images, masks):
        obj = image[mask].astype(int)
        assert np.ptp(obj, axis=0).max() <= 2 * shapes.FINE_NOISE  # flat colour + fine noise
        background = np.median(image[~mask].astype(int), axis=0)
        assert np.abs(np.median(obj, axis=0) - background).max() >= shapes.MIN_CONTRAST / 2


def test_neither_colour_nor_size_gives_the_class_away():
    """The net must look at the shape: per-class colour and area distributions match."""
    images, labels, _, masks = shapes.make_split(800, seed=11, with_masks=True)
    colours = np.array([im[m].mean(0) for im, m in zip(images, masks)])
    areas = masks.sum((1, 2))
    overall_colour, overall_area = colours.mean(0), areas.mean()
    for c in range(len(shapes.CLASSES)):
        assert np.abs(colours[labels == c].mean(0) - overall_colour).max() < 20
        assert abs(areas[labels == c].mean() - overall_area) < 0.12 * overall_area


def test_held_out_is_disjoint_from_training_streams():
    from reportgen.demo.train import split_seed

    ho, _, _ = held_out(8)
    tr, _, _ = shapes.make_split(8, split_seed("train"))
    assert ho.tobytes() != tr.tobytes()
    assert len({split_seed(n) for n in ("train", "val", "probes", "held_out")}) == 4


def test_object_mask_rejects_unknown_label():
    with pytest.raises((ValueError, IndexError)):
        shapes.object_mask(len(shapes.CLASSES), 32, 32, 10, 0.0)

"""Prediction comparison on hand-made logits: every count can be checked by eye."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.analyses import agreement as ag

CLASSES = ["cat", "dog", "fox"]


def onehot(classes, k=3):
    """Logits whose top-1 is ``classes[i]`` for row i."""
    out = torch.zeros(len(classes), k)
    out[torch.arange(len(classes)), torch.tensor(classes)] = 1.0
    return out


#            image:  0  1  2  3  4  5  6  7
BASE = onehot([0, 1, 2, 0, 1, 2, 0, 1])
NEW = onehot([0, 1, 1, 1, 1, 2, 2, 1])
LABELS = [0, 1, 2, 1, 0, 2, 0, -1]
# same top-1: 0, 1, 4, 5, 7 -> 5 of 8
# image 2: right -> wrong (negative); 3: wrong -> right (positive); 4: wrong -> wrong;
# 6: right -> wrong (negative); 7: unlabelled


def test_counts_flips_and_per_class_accuracy():
    res = ag.compare_predictions(BASE, NEW, LABELS, CLASSES)
    assert res.n == 8 and res.agree == 5 and res.agreement == pytest.approx(5 / 8)
    assert res.n_labelled == 7
    assert res.negative_flips == 2 and res.positive_flips == 1
    assert res.negative.indices.tolist() == [2, 6]
    assert res.negative.labels.tolist() == [2, 0]
    assert res.negative.base.tolist() == [2, 0] and res.negative.new.tolist() == [1, 2]
    assert res.positive.indices.tolist() == [3]
    assert res.changed.indices.tolist() == [2, 3, 6]
    # cat: images 0, 4, 6 -> base right on 0, 6; new right on 0
    # dog: images 1, 3 -> base right on 1; new right on 1, 3.  fox: image 2, 5 -> base 2/2, new 1/2
    assert res.class_count.tolist() == [3, 2, 2]
    assert res.per_class() == {"cat": {"base_accuracy": 2 / 3, "new_accuracy": 1 / 3},
                               "dog": {"base_accuracy": 1 / 2, "new_accuracy": 1.0},
                               "fox": {"base_accuracy": 1.0, "new_accuracy": 1 / 2}}
    assert res.base_accuracy == pytest.approx(5 / 7) and res.new_accuracy == pytest.approx(4 / 7)


def test_json_has_exactly_the_spec_keys():
    got = ag.compare_predictions(BASE, NEW, LABELS, CLASSES).predictions_json()
    assert set(got) == {"n", "agreement", "negative_flips", "positive_flips", "per_class"}
    assert got["n"] == 8 and got["negative_flips"] == 2 and got["positive_flips"] == 1
    assert all(set(v) == {"base_accuracy", "new_accuracy"} for v in got["per_class"].values())
    import json
    json.dumps(got)     # plain Python numbers only


def test_without_labels_flips_are_null_not_zero():
    res = ag.compare_predictions(BASE, NEW, None, CLASSES)
    got = res.predictions_json()
    assert got["negative_flips"] is None and got["positive_flips"] is None
    assert got["per_class"] == {} and got["agreement"] == pytest.approx(5 / 8)
    assert res.changed.indices.tolist() == [2, 3, 6] and res.changed.labels.tolist() == [-1] * 3
    all_unknown = ag.compare_predictions(BASE, NEW, [-1] * 8, CLASSES).predictions_json()
    assert all_unknown["negative_flips"] is None


def test_a_class_without_images_is_left_out():
    res = ag.compare_predictions(BASE[:2], NEW[:2], [0, 1], CLASSES)
    assert list(res.per_class()) == ["cat", "dog"]


def test_ties_go_to_the_lowest_class_and_nan_never_wins():
    logits = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [float("nan"), 0.0, -1.0]])
    assert ag.top1(logits).tolist() == [1, 0, 1]


def test_batches_and_shards_merge_to_one_pass():
    one = ag.compare_predictions(BASE, NEW, LABELS, CLASSES)
    shards = []
    for r in range(3):       # interleaved shards, fed in batches of 2
        c = ag.AgreementCounter(CLASSES)
        idx = list(range(r, 8, 3))
        for lo in range(0, len(idx), 2):
            part = idx[lo:lo + 2]
            c.update(BASE[part], NEW[part], torch.tensor(part), torch.tensor([LABELS[i] for i in part]))
        shards.append(c)
    merged = ag.AgreementCounter(CLASSES)
    for c in shards:
        merged.merge(c)
    res = merged.result()
    assert res.predictions_json() == one.predictions_json()
    for kind in ("negative", "positive", "changed"):
        for f in ("indices", "labels", "base", "new"):
            np.testing.assert_array_equal(getattr(getattr(res, kind), f), getattr(getattr(one, kind), f))


def test_bad_inputs_are_refused():
    c = ag.AgreementCounter(CLASSES)
    with pytest.raises(ValueError, match="one shape"):
        c.update(BASE, NEW[:, :2], torch.arange(8))
    with pytest.raises(ValueError, match="3 class names"):
        c.update(onehot([0], k=4), onehot([0], k=4), torch.arange(1))
    with pytest.raises(ValueError, match="outside"):
        c.update(BASE[:1], NEW[:1], torch.arange(1), torch.tensor([3]))
    with pytest.raises(ValueError, match="merge"):
        c.merge(ag.AgreementCounter(["a", "b", "c"]))
    assert ag.compare_predictions(BASE[:0], NEW[:0], None, CLASSES).agreement is None


def test_labels_from_class_folders():
    by_name = ag.folder_labels(["dog", "cat", None, "wolf"], CLASSES)
    assert by_name.rule == "name" and by_name.labels.tolist() == [1, 0, -1, -1]
    assert "wolf" in by_name.note and by_name.names == tuple(CLASSES)
    # no folder names a class, as many folders as classes: torchvision's sorted-folder rule
    folder = ag.folder_labels(["n02", "n01", "n03", "n01"], ["class_0", "class_1", "class_2"])
    assert folder.rule == "imagefolder" and folder.labels.tolist() == [1, 0, 2, 0]
    assert folder.names == ("n01", "n02", "n03")
    none = ag.folder_labels(["x", "y"], CLASSES)
    assert none.rule is None and (none.labels == -1).all() and "none of" in none.note
    flat = ag.folder_labels([None, None], CLASSES)
    assert flat.rule is None and "no class folders" in flat.note

"""ShapesNet, its deterministic training, and prepare_demo's reuse contract.

The fast tests train on a few hundred images for a few steps; the slow one
runs the real demo and checks what the issue promises (accuracy, checkpoints,
spec, reuse) plus that a plain CAM points inside the objects' boxes, which
later localization tests rely on.
"""
from __future__ import annotations

import csv
import json
import time

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from reportgen.demo import held_out, is_complete, prepare_demo, shapes
from reportgen.demo.net import ShapesNet
from reportgen.demo.train import TRAIN_THREADS, TrainConfig, channel_stats, deterministic_torch, to_input, train

TINY = TrainConfig(n_train=128, n_val=32, epochs=2, batch_size=32)


def test_shapesnet_is_cam_friendly():
    model = ShapesNet(num_classes=4)
    names = dict(model.named_modules())
    conv1 = names["features.conv1"]
    assert conv1.in_channels == 3 and conv1.kernel_size == (5, 5)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and isinstance(model.fc, nn.Linear)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    x = torch.zeros(2, 3, 64, 64)
    assert model.features(x).shape == (2, 64, 8, 8)
    assert model(x).shape == (2, 4)


def test_loss_decreases_on_a_fixed_batch():
    images, labels, _ = shapes.make_split(32, seed=21)
    mean, std = channel_stats(images)
    x, y = to_input(torch.from_numpy(images), mean, std), torch.from_numpy(labels)
    losses = []
    with deterministic_torch(TRAIN_THREADS):  # one thread: fast and the same on every box
        torch.manual_seed(0)
        model = ShapesNet()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(12):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_tiny_training_writes_loadable_checkpoints_and_metrics(tmp_path):
    result = train(tmp_path, TINY, quiet=True)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert len(result.mean) == len(result.std) == 3
    for epoch in range(3):
        ckpt = torch.load(tmp_path / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)
        assert ckpt["epoch"] == epoch
        assert set(ckpt["metrics"]) >= {"train_loss", "val_loss", "val_acc"}
        ShapesNet().load_state_dict(ckpt["model_state_dict"])
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"train_loss", "val_loss", "val_acc"} <= set(rows[0])


def test_training_is_deterministic_and_leaves_torch_settings_alone(tmp_path):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    train(tmp_path / "a", TINY, quiet=True)
    train(tmp_path / "b", TINY, quiet=True)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)
    for epoch in (0, 2):
        a = torch.load(tmp_path / "a" / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)
        for k in a["model_state_dict"]:
            assert torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]), k
        assert a["metrics"] == b["metrics"]


def test_folder_without_manifest_or_with_other_key_is_not_reused(tmp_path):
    (tmp_path / "spec.yaml").write_text("title: x\n")
    assert not is_complete(tmp_path, "k")  # an interrupted run writes no manifest
    (tmp_path / "demo.json").write_text(json.dumps({"key": "other", "files": {"spec.yaml": 9}}))
    assert not is_complete(tmp_path, "k")
    (tmp_path / "demo.json").write_text(json.dumps({"key": "k", "files": {"spec.yaml": 9, "gone.pt": 1}}))
    assert not is_complete(tmp_path, "k")
    (tmp_path / "demo.json").write_text(json.dumps({"key": "k", "files": {"spec.yaml": 9}}))
    assert is_complete(tmp_path, "k")


@pytest.mark.slow
def test_prepare_demo_end_to_end_and_reuse(demo_dir):
    out = demo_dir  # trained once per session; conftest put a user's notes.txt there first
    spec_path = out / "spec.yaml"

    spec = yaml.safe_load(spec_path.read_text())
    assert {"title", "description", "model", "checkpoints", "probes", "classes", "preprocess",
            "metrics", "dataset", "seed"} <= set(spec)
    assert spec["model"]["factory"] == "reportgen.demo.net:ShapesNet"
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(out.glob(".demo-tmp-*"))

    ckpts = sorted(out.glob("checkpoints/epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    assert len(ckpts) >= 5
    for p in ckpts:
        ckpt = torch.load(p, weights_only=True)
        assert {"model_state_dict", "epoch", "metrics"} <= set(ckpt)
    final = torch.load(ckpts[-1], weights_only=True)
    assert final["metrics"]["val_acc"] >= 0.90

    classes = (out / "classes.txt").read_text().split()
    assert classes == shapes.CLASSES
    assert sorted(p.name for p in (out / "data" / "val").iterdir()) == sorted(classes)
    boxes = json.loads((out / "boxes.json").read_text())["images"]
    pngs = [p.relative_to(out).as_posix() for p in out.rglob("*.png")]
    assert sorted(pngs) == sorted(boxes)
    probe_classes = {boxes[p]["class"] for p in pngs if p.startswith("probes/")}
    assert probe_classes == set(classes)

    _assert_cam_points_inside_boxes(final["model_state_dict"], spec["preprocess"])

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    start = time.perf_counter()
    assert prepare_demo(out, quiet=True) == spec_path
    assert time.perf_counter() - start < 5, "second run should reuse, not retrain"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def _assert_cam_points_inside_boxes(state_dict, preprocess, n=200):
    """Plain CAM (fc weights . last feature map): its argmax must hit the box >= 90%."""
    model = ShapesNet()
    model.load_state_dict(state_dict)
    model.eval()
    images, _, boxes = held_out(n)
    x = to_input(torch.from_numpy(images), preprocess["mean"], preprocess["std"])
    with torch.no_grad():
        feats = model.features(x)
        pred = model.fc(model.pool(feats).flatten(1)).argmax(1)
        cam = torch.relu(torch.einsum("nc,nchw->nhw", model.fc.weight[pred], feats))
        cam = F.interpolate(cam[:, None], size=64, mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1).argmax(1).numpy()
    ys, xs = flat // 64, flat % 64
    hit = (xs >= boxes[:, 0]) & (xs < boxes[:, 2]) & (ys >= boxes[:, 1]) & (ys < boxes[:, 3])
    assert hit.mean() >= 0.90, f"CAM pointing game {hit.mean():.3f}"

"""The embedded demo: a task whose answer is known, a model trained on it, and a spec.

``prepare_demo(out_dir)`` leaves in ``out_dir`` everything ``reportgen build``
needs, all relative to ``spec.yaml``::

    spec.yaml            valid spec (SPEC.md) pointing at the files below
    classes.txt          circle, square, triangle, cross
    checkpoints/         epoch_0.pt (initialization) ... epoch_N.pt, with metrics
    metrics.csv          epoch,train_loss,val_loss,val_acc,train_acc
    probes/*.png         one or more probe images per class
    data/val/<class>/    held-out images in ImageFolder layout
    boxes.json           object box and class of every probe and dataset image
    demo.json            manifest; written last, it marks the folder complete

Why a manifest written last: a second run reuses the folder only when
``demo.json`` matches the current generator, network and training code and
every file it lists exists, so an interrupted run (no manifest) or a changed
demo (different key) is rebuilt instead of being reused half-done or stale.
Everything is first written to a scratch folder inside ``out_dir`` and moved
into place only when complete.

``held_out(n, seed)`` draws a large extra held-out set (with boxes) for
localization tests such as the pointing game.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from reportgen.atomic import atomic_write

__all__ = ["prepare_demo", "held_out", "DEMO_VERSION", "N_DATASET", "N_PROBES"]

DEMO_VERSION = 1
N_DATASET = 400   # held-out images written to data/val (100 per class)
N_PROBES = 6      # probe images; labels cycle through the classes
_OUTPUTS = ["spec.yaml", "classes.txt", "checkpoints", "metrics.csv", "probes", "data", "boxes.json"]
_MANIFEST = "demo.json"
_SCRATCH_PREFIX = ".demo-tmp-"


def held_out(n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images never used for training or validation: (images, labels, boxes).

    Same conventions as ``shapes.make_split``; for tests that need many boxed
    images (pointing game) without touching the demo folder.
    """
    from reportgen.demo import shapes
    from reportgen.demo.train import split_seed

    return shapes.make_split(n, split_seed("held_out", seed))


def prepare_demo(out_dir: Path, quiet: bool = False) -> Path:
    """Make (or reuse) the demo in ``out_dir``; returns the path of its ``spec.yaml``."""
    out_dir = Path(out_dir)
    key = demo_key()
    if is_complete(out_dir, key):
        _say(quiet, f"reportgen demo: reusing the trained demo in {out_dir}")
        return out_dir / "spec.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _MANIFEST).unlink(missing_ok=True)  # from here on the folder is incomplete
    _remove_stale_scratch(out_dir)
    scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=out_dir))
    try:
        manifest = _build(scratch, key, quiet)
        _move_into_place(scratch, out_dir)
        atomic_write(out_dir / _MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir / "spec.yaml"


def demo_key() -> str:
    """Digest of everything that determines the demo's files.

    It hashes the parameters *and* the source of the generator, network,
    trainer and this module, so any code change rebuilds instead of reusing
    files the new code would not have made.
    """
    from reportgen.demo import net, shapes, train

    h = hashlib.sha256()
    params = {"version": DEMO_VERSION, "shapes": shapes.PARAMS, "train": train.TrainConfig().as_dict(),
              "n_dataset": N_DATASET, "n_probes": N_PROBES}
    h.update(json.dumps(params, sort_keys=True).encode())
    for module in (shapes, net, train, sys.modules[__name__]):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def is_complete(out_dir: Path, key: str) -> bool:
    """True when the manifest matches ``key`` and every file it lists is present."""
    try:
        manifest = json.loads((out_dir / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return False
    files = manifest.get("files")
    return isinstance(files, dict) and all(
        (out_dir / rel).is_file() and (out_dir / rel).stat().st_size == size for rel, size in files.items())


def _build(scratch: Path, key: str, quiet: bool) -> dict:
    """Write every demo file into ``scratch``; returns the manifest to write last."""
    from reportgen.demo import shapes
    from reportgen.demo.train import TrainConfig, train

    config = TrainConfig()
    result = train(scratch, config, quiet=quiet)
    history, mean, std = result.history, result.mean, result.std
    boxes = _write_dataset(scratch, config.seed)
    boxes.update(_write_probes(scratch, config.seed))
    (scratch / "classes.txt").write_text("\n".join(shapes.CLASSES) + "\n")
    (scratch / "boxes.json").write_text(json.dumps(
        {"box_format": "x0, y0, x1, y1 in pixels; x1 and y1 exclusive", "images": boxes},
        indent=1, sort_keys=True) + "\n")
    (scratch / "spec.yaml").write_text(_spec_text(mean, std, history[-1]["val_acc"], len(history)))
    _say(quiet, f"reportgen demo: held-out accuracy {history[-1]['val_acc']:.1%} "
                f"after {history[-1]['epoch']} epochs")
    return {"key": key, "version": DEMO_VERSION, "seed": config.seed, "mean": mean, "std": std,
            "final_metrics": history[-1], "files": _file_sizes(scratch)}


def _write_dataset(root: Path, seed: int) -> Dict[str, dict]:
    """data/val/<class>/<index>.png from the validation split (never trained on)."""
    from reportgen.demo import shapes
    from reportgen.demo.train import split_seed

    images, labels, boxes = shapes.make_split(N_DATASET, split_seed("val", seed))
    names = [f"data/val/{shapes.CLASSES[y]}/{i:04d}.png" for i, y in enumerate(labels)]
    return _write_pngs(root, names, images, labels, boxes)


def _write_probes(root: Path, seed: int) -> Dict[str, dict]:
    from reportgen.demo import shapes
    from reportgen.demo.train import split_seed

    images, labels, boxes = shapes.make_split(N_PROBES, split_seed("probes", seed))
    names = [f"probes/{i:02d}_{shapes.CLASSES[y]}.png" for i, y in enumerate(labels)]
    return _write_pngs(root, names, images, labels, boxes)


def _write_pngs(root: Path, names: List[str], images: np.ndarray, labels: np.ndarray,
                boxes: np.ndarray) -> Dict[str, dict]:
    """Save PNGs (lossless, so the report sees the exact pixels trained on); return box records."""
    from reportgen.demo import shapes

    records = {}
    for name, image, label, box in zip(names, images, labels, boxes):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="PNG")
        records[name] = {"class": shapes.CLASSES[int(label)], "box": [int(v) for v in box]}
    return records


def _spec_text(mean: List[float], std: List[float], val_acc: float, n_checkpoints: int) -> str:
    """The demo's spec, written by hand (not yaml.dump) so it reads like one a user would write."""
    return f"""\
# Written by `reportgen demo`. Paths are relative to this file.
# Rebuild the report with:  reportgen build spec.yaml
title: "ShapesNet demo: what a small CNN learned about shapes"
description: |
  A demonstration on a task whose answer is known. Each 64x64 image holds
  **one** coloured shape (circle, square, triangle or cross) at a random
  position, size and rotation, on a cluttered low-contrast background. The
  colour is random, so only the *shape* tells the class: a model that
  learned the task has to look at the object, and its explanations should
  point inside the object's box (the boxes are in `boxes.json`).

  `ShapesNet` (4 conv layers, global average pooling, one linear layer) was
  trained on CPU for {n_checkpoints - 1} epochs; held-out accuracy
  {val_acc:.1%}. Checkpoints run from the untrained initialization
  (`epoch_0`) to the end of training.
model:
  factory: "reportgen.demo.net:ShapesNet"
  kwargs: {{num_classes: 4}}
  input_size: [3, 64, 64]
checkpoints:
  - "checkpoints/epoch_*.pt"
audit_checkpoint: last
probes:
  images: ["probes/*.png"]
  targets: predicted
classes: classes.txt
preprocess:
  mean: [{", ".join(str(v) for v in mean)}]
  std: [{", ".join(str(v) for v in std)}]
metrics: metrics.csv
dataset:
  root: data/val
  limit: {N_DATASET}
sections:
  # 64x64 images with 15-40 px objects: a window about half an object wide
  # localizes; the 16 px default (sized for 224 px images) smears the map.
  occlusion: {{window: 8, stride: 4, baseline: mean}}
  # every corruption at every severity on a quarter of the dataset (100 images):
  # 4,100 small forward passes, a few seconds; all 400 would make the budget drop severities.
  robustness: {{images: 100}}
seed: 0
"""


def _file_sizes(root: Path) -> Dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file()}


def _move_into_place(scratch: Path, out_dir: Path) -> None:
    """Replace the demo's own outputs in ``out_dir`` with the fresh ones.

    Only the names in _OUTPUTS are touched; anything else in ``out_dir``
    (a report built there, a user's notes) is left alone.
    """
    for name in _OUTPUTS:
        src, dst = scratch / name, out_dir / name
        if dst.is_symlink():
            dst.unlink()
        elif dst.is_dir():
            os.replace(dst, scratch / f"old-{name}")  # deleted with the scratch folder
        os.replace(src, dst)


def _remove_stale_scratch(out_dir: Path) -> None:
    """Scratch folders left by killed runs; they are never reused, only deleted."""
    for p in out_dir.glob(_SCRATCH_PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


# The demo's compare shows the review workflow on what training changed. It runs the
# sections whose comparison reads at a glance (summary, filters, activations, Grad-CAM, and the
# audit's errors and calibration; robustness, 15 s a side, is left to the build);
# the full set would double the demo's time for the mid-training model.
COMPARE_SECTIONS = ("summary", "filters", "activations", "cam", "errors", "calibration")


def mid_training_spec(spec_path: Path) -> Path:
    """``spec_mid.yaml`` beside the demo's spec: the same project audited at its middle checkpoint."""
    import yaml

    spec_path = Path(spec_path)
    data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    labels = sorted(p.stem for p in (spec_path.parent / "checkpoints").glob("epoch_*.pt"))
    labels.sort(key=lambda label: int(label.split("_")[1]))
    middle = labels[len(labels) // 2]
    data["title"] = f"ShapesNet demo at {middle} (mid-training)"
    data["audit_checkpoint"] = middle
    data.pop("description", None)
    out = spec_path.parent / "spec_mid.yaml"
    text = ("# Written by `reportgen demo`: the demo audited at its middle checkpoint, the BASE of\n"
            "# its compare:  reportgen compare spec_mid.yaml spec.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")
    return out


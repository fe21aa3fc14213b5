"""The compare's audit part (SPEC.md, "Audit", ``comparison.audit``) on two tiny labelled projects.

BASE's classifier is zeroed: every image gets the uniform distribution (confidence 1/3 at
accuracy 1/3: ECE 0) and no corruption can change its prediction. NEW is the same network
with its classifier scaled x1000: confidence ~1 at chance accuracy, so ``overconfident`` is a
finding new in NEW and ``--fail-on new-warning`` exits 3.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.cli import main
from tests.project import GOOD, make_project

SPEC = GOOD + """dataset:
  root: data
sections:
  robustness: {images: 24, severities: [1, 2], corruptions: [gaussian_noise, brightness]}
"""
ONLY = ["errors", "calibration", "robustness"]


def _project(root: Path, scale: float) -> Path:
    root.mkdir(parents=True)
    spec = make_project(root, SPEC)
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "bird"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "data" / cls / f"{i}.png")
    path = root / "ckpt" / "epoch_1.pt"
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["model_state_dict"]
    state["fc.weight"] *= scale
    state["fc.bias"] *= scale
    torch.save(ckpt, path)
    return spec


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-audit")
    base, new = _project(root / "base", 0.0), _project(root / "new", 1000.0)
    code = main(["compare", str(base), str(new), "-o", str(root / "out"), "--only", *ONLY, "--quiet",
                 "--no-cache", "--fail-on", "new-warning"])
    return code, json.loads((root / "out" / "report.json").read_text()), (root / "out" / "index.html").read_text()


def test_audit_keys_are_specs(compared):
    _, data, _ = compared
    audit = data["comparison"]["audit"]
    assert {"accuracy", "ece", "mean_accuracy_drop", "robustness", "shortcuts"} <= set(audit)
    for key in ("accuracy", "ece", "mean_accuracy_drop"):
        assert set(audit[key]) == {"base", "new"} and all(isinstance(v, float) for v in audit[key].values())
    assert set(audit["robustness"]) == {"gaussian_noise", "brightness"}
    for row in audit["robustness"].values():
        assert set(row) == {"base", "new"} and len(row["base"]) == len(row["new"]) == 2
    assert audit["shortcuts"] == {"base": [], "new": []}    # no shortcuts section ran
    base, new = data["comparison"]["audit"]["ece"]["base"], data["comparison"]["audit"]["ece"]["new"]
    assert base < 0.01 < 0.3 < new
    assert audit["mean_accuracy_drop"]["base"] == 0.0      # a constant prediction survives everything


def test_new_overconfident_trips_new_warning(compared):
    code, data, page = compared
    assert code == 3
    by_id = {f["id"]: f for f in data["findings"]}
    assert by_id["overconfident"]["state"] == "new"
    assert all(f["state"] == "new" for i, f in by_id.items() if i.startswith("fragile-"))   # BASE never flips
    assert any("Calibration regressed" in s for s in data["verdict"])
    assert 'id="audit"' in page


def test_confusion_difference_on_the_page(compared):
    _, data, page = compared
    s = data["sections"]["errors"]
    d = np.array(s["new"]["confusion"]) - np.array(s["base"]["confusion"])
    assert "Confusion matrix: NEW − BASE" in page
    if d.any():     # BASE predicts class 0 for every image; NEW spreads them
        assert "+%d" % d.max() in page or "%+d" % d.min() in page


def test_confusion_diff_many_classes_keeps_the_changed_ones():
    from reportgen.render.audit import confusion_diff

    k = 50
    base = np.diag(np.full(k, 10))
    new = base.copy()
    new[7, 7], new[7, 31] = 4, 6          # class 7 now taken for 31 six times: worse
    new[40, 40], new[40, 2] = 10, 0
    base[40, 40], base[40, 2] = 8, 2      # class 40 fixed: better
    names = [f"c{i}" for i in range(k)]
    out = confusion_diff({"classes": names, "confusion": base.tolist()},
                         {"classes": names, "confusion": new.tolist()}, shown=5, top=3)
    assert out["k"] == k and not out["all_shown"] and len(out["columns"]) == 5
    assert {"c7", "c31", "c40", "c2"} <= set(out["columns"])
    first = out["changes"][0]
    assert (first["true"], first["predicted"], first["delta"], first["worse"]) in {("c7", "c7", -6, True),
                                                                                  ("c7", "c31", 6, True)}
    assert out["changed"] == 4 and len(out["changes"]) == 3
    row7 = out["rows"][out["columns"].index("c7")]["cells"]
    assert row7[out["columns"].index("c31")]["value"] == 6
    same = confusion_diff({"classes": names, "confusion": base.tolist()},
                          {"classes": names, "confusion": base.tolist()})
    assert same["unchanged"] and same["changes"] == []
    assert confusion_diff({}, {"classes": names, "confusion": base.tolist()}) is None

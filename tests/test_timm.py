"""`model: {timm: NAME}`: built with pretrained=False, preprocessing from its pretrained_cfg
where the spec is silent, timm train.py checkpoints (EMA copy, argparse args) read safely.

Tests that build a timm model skip where timm is not installed; the missing-timm
message is checked everywhere.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reportgen
from reportgen.cli import main
from reportgen.commands.build import make_context
from reportgen.spec import load_spec
from reportgen.spec.resolve import TIMM_CFG, resolve

SIDE = 64
CROP_PCT = 0.95   # resnet18's pretrained_cfg (timm's default tag, a1_in1k)


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


def project(tmp_path: Path, model: str = "timm: resnet18", extra: str = "") -> Path:
    (tmp_path / "probes").mkdir(exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "probes" / "p.png")
    spec = tmp_path / "spec.yaml"
    spec.write_text("title: timm model\n"
                    "model:\n"
                    f"  {model}\n"
                    "  kwargs: {num_classes: 3}\n"
                    f"  input_size: [3, {SIDE}, {SIDE}]\n"
                    "probes: {images: [probes/*.png]}\n"
                    "classes: [a, b, c]\n" + extra)
    return spec


def save_like_timm_train(path: Path, weights: torch.nn.Module, ema: torch.nn.Module) -> None:
    """A checkpoint as timm's train.py (CheckpointSaver) writes it."""
    import argparse

    args = argparse.Namespace(model="resnet18", num_classes=3, lr=0.1, epochs=2, model_ema=True,
                              input_size=[3, SIDE, SIDE], data_dir="/data/train")
    torch.save({"epoch": 1, "arch": "resnet18", "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "version": 2, "args": args, "state_dict": weights.state_dict(),
                "state_dict_ema": ema.state_dict(), "metric": 61.25}, path)


def built(spec: Path, tmp_path: Path):
    report = reportgen.build(spec, out_dir=tmp_path / "site", only=["summary", "filters"],
                             cache_dir=tmp_path / "cache", quiet=True)
    data = json.loads(report.json_path.read_text())
    assert all("error" not in s for s in data["sections"].values()), data["sections"]
    return report, data


def assert_no_external_address(*texts: str) -> None:
    """pretrained_cfg holds download addresses (url, hf_hub_id); none may reach the report."""
    for text in texts:
        assert not re.search(r"https?:|://|hf_hub|huggingface|github", text), \
            re.search(r".{0,60}(https?:|://|hf_hub|huggingface|github).{0,60}", text).group(0)


def test_timm_model_builds_a_report_with_its_pretrained_preprocessing(timm, tmp_path, capsys):
    spec = project(tmp_path)
    assert main(["validate", str(spec), "--quiet"]) == 0
    report, data = built(spec, tmp_path)
    page = report.path.read_text(encoding="utf-8")
    model = data["model"]
    assert model["source"] == "timm: resnet18" and "timm: resnet18" in page
    assert model["num_classes"] == 3 and model["input_size"] == [3, SIDE, SIDE]
    assert model["preprocess"] == {"center_crop": SIDE, "interpolation": "bicubic",
                                   "mean": [0.485, 0.456, 0.406], "resize": math.floor(SIDE / CROP_PCT),
                                   "std": [0.229, 0.224, 0.225]}
    assert model["preprocess_source"] == {
        "input_size": "spec", "mean": TIMM_CFG, "std": TIMM_CFG, "interpolation": TIMM_CFG,
        "center_crop": TIMM_CFG, "resize": f"{TIMM_CFG}, crop_pct {CROP_PCT}"}
    assert_no_external_address(report.json_path.read_text(encoding="utf-8"), page)


def test_spec_preprocessing_wins_over_pretrained_cfg(timm, tmp_path):
    spec = project(tmp_path, extra="preprocess: {resize: 72, mean: [0.5, 0.5, 0.5], "
                                   "interpolation: bilinear}\n")
    res = resolve(load_spec(spec), "cpu")
    pre = res.spec["preprocess"]
    assert (pre["resize"], pre["mean"], pre["interpolation"]) == (72, [0.5, 0.5, 0.5], "bilinear")
    assert pre["std"] == [0.229, 0.224, 0.225] and pre["center_crop"] == SIDE   # unset: from timm
    assert {k: v for k, v in res.preprocess_source.items() if v == "spec"} == {
        "input_size": "spec", "resize": "spec", "mean": "spec", "interpolation": "spec"}
    assert res.preprocess_source["std"] == res.preprocess_source["center_crop"] == TIMM_CFG


def test_input_size_from_pretrained_cfg_when_unset(timm, tmp_path):
    spec = project(tmp_path)
    spec.write_text(spec.read_text().replace(f"  input_size: [3, {SIDE}, {SIDE}]\n", ""))
    res = resolve(load_spec(spec), "cpu")
    assert res.input_size == (3, 224, 224) and res.preprocess_source["input_size"] == TIMM_CFG
    assert res.spec["preprocess"]["resize"] == math.floor(224 / CROP_PCT) == 235
    # the probe is what timm's own eval transform makes of the image
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    expected = transform(Image.open(tmp_path / "probes" / "p.png").convert("RGB"))
    assert torch.allclose(res.probes[0].tensor, expected, atol=1e-5)


def test_torchvision_model_keeps_the_spec_defaults(tmp_path):
    res = resolve(load_spec(project(tmp_path, "torchvision: resnet18")), "cpu")
    assert res.spec["preprocess"]["resize"] is None and res.spec["preprocess"]["interpolation"] == "bilinear"
    assert set(res.preprocess_source.values()) == {"spec", "default"}


def test_missing_timm_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)   # `import timm` raises ImportError
    spec = project(tmp_path)
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:3: model.timm: needs the timm package: pip install 'timm>=0.9' (reportgen's timm extra)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("model, kwargs, key, line, fragment", [
    ("timm: resnt18", None, "model.timm", 3, "unknown timm model 'resnt18' (did you mean 'resnet18'"),
    ("timm: hf-hub:timm/resnet18", None, "model.timm", 3, "names a hub or folder"),
    ("timm: resnet18", "{num_classes: 3, bogus: 1}", "model.kwargs", 4, "unexpected keyword argument 'bogus'"),
    ("timm: resnet18", "{num_classes: 3, pretrained: true}", "model.kwargs.pretrained", 4, "never downloads"),
])
def test_bad_timm_model_is_a_spec_error(timm, tmp_path, capsys, model, kwargs, key, line, fragment):
    spec = project(tmp_path, model)
    if kwargs:
        spec.write_text(spec.read_text().replace("{num_classes: 3}", kwargs))
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:{line}: {key}:" in err and fragment in err, err


def test_timm_train_checkpoint_weights_are_stated_and_selectable(timm, tmp_path):
    torch.manual_seed(1)
    trained = timm.create_model("resnet18", pretrained=False, num_classes=3)
    torch.manual_seed(2)
    ema = timm.create_model("resnet18", pretrained=False, num_classes=3)
    save_like_timm_train(tmp_path / "checkpoint-1.pth.tar", trained, ema)
    spec = project(tmp_path, extra="checkpoints: [checkpoint-1.pth.tar]\n")

    report, data = built(spec, tmp_path)
    ck = data["model"]["checkpoints"][0]
    assert data["model"]["checkpoint_weights"] == "auto"
    assert (ck["weights"], ck["other_weights"]) == ("state_dict", ["state_dict_ema"])
    assert ck["metrics"] == {"epoch": 1.0, "metric": 61.25}
    assert any("state_dict_ema" in note and "checkpoint_weights" in note for note in data["notes"])
    assert_no_external_address(report.json_path.read_text(encoding="utf-8"))
    res = resolve(load_spec(spec), "cpu")
    assert torch.equal(res.model.conv1.weight, trained.conv1.weight)

    spec.write_text(spec.read_text() + "checkpoint_weights: state_dict_ema\n")
    res = resolve(load_spec(spec), "cpu")
    assert (res.checkpoints[0].weights, res.checkpoints[0].other_weights) == ("state_dict_ema", ("state_dict",))
    assert torch.equal(res.model.conv1.weight, ema.conv1.weight)
    assert torch.equal(res.model_at(0).fc.weight, ema.fc.weight)
    # evolution streams every checkpoint through the same selection
    assert make_context(res).read_checkpoint(res.checkpoints[0].path).layout == "state_dict_ema"
    assert not any("checkpoint_weights" in note for note in res.notes)


def test_selected_weights_missing_from_a_checkpoint_is_a_spec_error(timm, tmp_path, capsys):
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "plain.pt")
    spec = project(tmp_path, extra="checkpoints: [plain.pt]\ncheckpoint_weights: state_dict_ema\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints[0]:" in err and "no weights under 'state_dict_ema'" in err and "'state_dict'" in err

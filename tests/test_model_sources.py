"""Model sources and output conventions end to end: TorchScript, dict/tuple/object outputs,
DataParallel wrappers, greyscale models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reportgen
from reportgen.cli import main

NETS = '''
import torch
from dataclasses import dataclass
from torch import nn

class Body(nn.Module):
    def __init__(self, in_ch=3, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv1(x))), 1))

class DictOut(Body):
    def forward(self, x):
        return {"features": x.mean(), "logits": super().forward(x)}

class TupleOut(Body):
    def forward(self, x):
        return super().forward(x), x.mean()

@dataclass
class Output:
    logits: torch.Tensor

class ObjectOut(Body):
    def forward(self, x):
        return Output(super().forward(x))

def wrapped(**kw):
    return nn.DataParallel(Body(**kw))
'''


def project(tmp_path: Path, model_block: str, channels: int = 3, extra: str = "") -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "probes").mkdir(exist_ok=True)
    mode = "L" if channels == 1 else "RGB"
    arr = np.random.default_rng(0).integers(0, 255, (18, 18) + ((3,) if channels == 3 else ()), dtype=np.uint8)
    Image.fromarray(arr, mode).save(tmp_path / "probes" / "p.png")
    spec = tmp_path / "spec.yaml"
    model = "".join(f"  {line}\n" for line in model_block.strip().splitlines())
    spec.write_text("title: sources\nmodel:\n" + model + "probes: {images: [probes/*.png]}\n"
                    "classes: [a, b, c]\nsections: {architecture: false}\n" + extra)
    return spec


def built(spec: Path, tmp_path: Path) -> dict:
    report = reportgen.build(spec, cache_dir=tmp_path / "cache")
    data = json.loads(report.json_path.read_text())
    assert all("error" not in s for s in data["sections"].values()), data["sections"]
    return data


@pytest.mark.parametrize("cls,output,shown", [("DictOut", None, "auto"), ("DictOut", "logits", "logits"),
                                              ("TupleOut", None, "auto"), ("TupleOut", 0, 0),
                                              ("ObjectOut", None, "auto")])
def test_structured_outputs(tmp_path, cls, output, shown):
    out = "null" if output is None else json.dumps(output)
    spec = project(tmp_path, f"factory: nets:{cls}\ninput_size: [3, 16, 16]\noutput: {out}\n")
    data = built(spec, tmp_path)
    assert data["model"]["num_classes"] == 3 and data["model"]["output"] == shown
    assert len(data["sections"]["summary"]["top1"]) == 1


def test_wrong_output_key_is_a_spec_error(tmp_path, capsys):
    spec = project(tmp_path, "factory: nets:DictOut\ninput_size: [3, 16, 16]\noutput: scores\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "model.output" in err and "scores" in err and "logits" in err


def test_dataparallel_is_unwrapped(tmp_path):
    spec = project(tmp_path, "factory: nets:wrapped\ninput_size: [3, 16, 16]\n")
    data = built(spec, tmp_path)
    assert data["sections"]["filters"]["layer"] == "conv1"   # not module.conv1


def test_torchscript_archive(tmp_path):
    import importlib
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        project(tmp_path, "torchscript: model.pt\ninput_size: [3, 16, 16]\n")
        nets = importlib.import_module("nets")
        torch.manual_seed(0)
        torch.jit.script(nets.Body()).save(str(tmp_path / "model.pt"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("nets", None)
    report = reportgen.build(tmp_path / "spec.yaml", cache_dir=tmp_path / "cache")
    data = json.loads(report.json_path.read_text())
    assert data["model"]["source"] == "torchscript: model.pt"
    assert data["model"]["checkpoints"] == []
    assert data["sections"]["summary"]["parameters"] == 3 * 4 * 9 + 4 + 4 * 3 + 3
    assert data["sections"]["filters"]["layer"] == "conv1"
    # hooks cannot attach to TorchScript: the section says so instead of failing
    assert "TorchScript" in data["sections"]["activations"]["skipped"]
    assert not any(f["id"].startswith("section-failed") for f in data["findings"])
    assert "Not shown: The activations section needs forward hooks" in report.path.read_text()


def test_greyscale_model_with_default_normalization(tmp_path):
    spec = project(tmp_path, "factory: nets:Body\nkwargs: {in_ch: 1}\ninput_size: [1, 16, 16]\n", channels=1)
    data = built(spec, tmp_path)
    assert data["model"]["input_size"] == [1, 16, 16]
    assert data["sections"]["filters"]["filters"] == 4


def test_rgb_probe_for_greyscale_model_and_rgba_probe(tmp_path):
    spec = project(tmp_path, "factory: nets:Body\nkwargs: {in_ch: 1}\ninput_size: [1, 16, 16]\n")
    rgba = np.zeros((10, 10, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "probes" / "q.png")
    data = built(spec, tmp_path)
    assert len(data["sections"]["summary"]["top1"]) == 2

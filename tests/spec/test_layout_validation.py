"""Named token and channels-last layers: validate accepts them when their layout is stated or
detected, refuses a stated layout the output does not have, and a build records the layout."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reportgen
from reportgen.cli import main

TOKENNET = '''
import torch
from torch import nn

class TokenNet(nn.Module):
    """4x4 patches of a 16x16 image -> a class token + 16 patch tokens -> a token MLP -> norm -> head."""
    num_prefix_tokens = 1

    def __init__(self, num_classes=3, dim=6):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.norm(self.block(x))[:, 1:].mean(dim=1))
'''

SPEC = """\
title: tokens
model:
  factory: tokennet:TokenNet
  kwargs: {num_classes: 3}
  input_size: [3, 16, 16]
probes:
  images: [probe.png]
classes: [a, b, c]
sections:
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tokennet.py").write_text(TOKENNET)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
        tmp_path / "probe.png")
    return tmp_path


def _validate(project: Path, sections: str, capsys) -> tuple:
    spec = project / "spec.yaml"
    spec.write_text(SPEC + textwrap.indent(textwrap.dedent(sections), "  "))
    code = main(["validate", str(spec)])
    return code, capsys.readouterr().err, spec


@pytest.mark.parametrize("sections", [
    "cam: {layer: block}\n",                                   # detected: tokens on the 4x4 grid
    "activations: {layers: [block, norm], layout: tokens}\n",  # stated
    "cam: {layer: patch, layout: nchw}\n",
])
def test_token_layers_named_in_the_spec_validate(project, capsys, sections):
    code, err, _ = _validate(project, sections, capsys)
    assert code == 0, err


def test_a_stated_layout_the_output_does_not_have_is_refused(project, capsys):
    code, err, spec = _validate(project, "cam:\n  layer: block\n  layout: nhwc\n", capsys)
    assert code == 2
    assert f"{spec}:11:" in err and "sections.cam.layer" in err
    assert "'block'" in err and "[1, 17, 6]" in err and "not a nhwc map" in err


def test_a_vector_layer_is_still_not_spatial(project, capsys):
    code, err, _ = _validate(project, "cam: {layer: head}\n", capsys)
    assert code == 2 and "'head'" in err and "[1, 3]" in err and "spatial" in err


def test_a_build_reads_the_named_token_layer_and_records_its_layout(project):
    spec = project / "spec.yaml"
    spec.write_text(SPEC + "  activations: {layers: [block]}\n  cam: {layer: block, methods: [gradcam], "
                           "faithfulness_steps: 1}\n")
    report = reportgen.build(spec, out_dir=project / "site", only=["activations", "cam"], use_cache=False)
    data = json.loads(Path(report.json_path).read_text())
    act, cam = data["sections"]["activations"], data["sections"]["cam"]
    assert act["layouts"] == {"block": "tokens"} and act["per_layer"]["block"]["channels"] == 6
    assert cam["layer"] == "block" and cam["layouts"] == {"block": "tokens"}
    assert "error" not in cam["methods"]["gradcam"], cam["methods"]["gradcam"]
    assert report.results["activations"]["layers"][0]["maps"].shape[-2:] == (4, 4)

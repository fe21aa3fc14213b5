"""Every torchvision classification builder, built by name and run through a minimal report.

No weights are downloaded (weights=None); inputs are as small as each
architecture allows so the whole sweep stays in CI's budget.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import reportgen
from reportgen.model.loading import torchvision_classifiers

# the smallest square input each family accepts (default 32)
MIN_SIDE = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224}
HUGE = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32"}


def _case(name: str):
    kwargs = {"num_classes": 4}
    side = MIN_SIDE.get(name, 32)
    if name.startswith("vit_"):
        kwargs["image_size"] = 32 if name != "vit_h_14" else 28  # patch 14 divides 28
        side = kwargs["image_size"]
    marks = [pytest.mark.slow] if name in HUGE else []
    return pytest.param(name, kwargs, side, id=name, marks=marks)


@pytest.mark.parametrize("name,kwargs,side", [_case(n) for n in torchvision_classifiers()])
def test_builder_runs_through_a_minimal_report(tmp_path, name, kwargs, side):
    Image.fromarray(np.full((side + 5, side + 3, 3), 100, np.uint8)).save(tmp_path / "probe.png")
    spec = {"title": name, "model": {"torchvision": name, "kwargs": kwargs, "input_size": [3, side, side]},
            "probes": {"images": [str(tmp_path / "probe.png")]},
            "sections": {"summary": {}, "filters": {}}}
    report = reportgen.build(spec, out_dir=tmp_path / "site", only=["summary", "filters"],
                             use_cache=False)
    data = json.loads(report.json_path.read_text())
    assert data["model"]["num_classes"] == 4
    summary = data["sections"]["summary"]
    assert "error" not in summary, summary
    assert summary["parameters"] > 0 and summary["macs"] > 0
    assert len(summary["top1"]) == 1 and 0 <= summary["top1"][0] < 4
    assert "error" not in data["sections"]["filters"], data["sections"]["filters"]

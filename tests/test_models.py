"""reportgen/model/loading.py: a factory module edited between two builds in one process runs edited."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reportgen
from reportgen.model.loading import build_model

FACTORY = '''
import torch
from torch import nn

WEIGHT = 0.50
CLASSES = 3

def make():
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(2, CLASSES))
    with torch.no_grad():
        net[0].weight.fill_(WEIGHT)
    return net
'''

SPEC = """\
title: edited
model:
  factory: "{module}:make"
  input_size: [3, 8, 8]
probes: {{images: [p.png]}}
sections: {{filters: {{layer: "0"}}}}
"""


@pytest.fixture(autouse=True)
def _forget_modules(monkeypatch, tmp_path):
    """Each test imports its own modules; none leaks into the next.

    Bytecode is written as on a user's machine (CI may turn it off), so a
    stale .pyc can be trusted where a user's would be; it goes under tmp_path.
    """
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "pycache"))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _edit(path: Path, old: str, new: str) -> None:
    """Rewrite ``path`` keeping its size and mtime: an editor's save within the same second.

    Python trusts a cached .pyc whose recorded source size and mtime (whole
    seconds) match, so this is the hardest edit to notice.
    """
    text = path.read_text()
    assert old in text and len(old) == len(new)
    stat = path.stat()
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _project(root: Path, module: str = "edited_net") -> Path:
    (root / f"{module}.py").write_text(FACTORY)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "p.png")
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(module=module))
    return spec


def test_an_edited_factory_module_runs_edited_in_the_next_build(tmp_path):
    spec = _project(tmp_path)
    first = reportgen.build(spec, cache_dir=tmp_path / "cache")
    assert first.data["model"]["num_classes"] == 3
    assert np.all(first.results["filters"]["filters"]["weights"] == np.float32(0.5))
    _edit(tmp_path / "edited_net.py", "WEIGHT = 0.50\nCLASSES = 3", "WEIGHT = 0.25\nCLASSES = 5")
    second = reportgen.build(spec, cache_dir=tmp_path / "cache")
    assert second.data["model"]["num_classes"] == 5
    assert np.all(second.results["filters"]["filters"]["weights"] == np.float32(0.25))
    # the edit changed the cache key: nothing came from the first build's results
    assert second.data["cached"] == []


def _weight(model: torch.nn.Module) -> float:
    return float(model[0].weight.detach().flatten()[0])


def test_an_unchanged_factory_module_is_not_imported_again(tmp_path):
    (tmp_path / "same_net.py").write_text(FACTORY)
    build_model({"factory": "same_net:make"}, tmp_path)
    module = sys.modules["same_net"]
    build_model({"factory": "same_net:make"}, tmp_path)
    assert sys.modules["same_net"] is module


@pytest.mark.parametrize("consts,factory", [("edited_helper.py", "helped_net:make"),
                                            ("edited_pkg/consts.py", "edited_pkg.net:make")],
                         ids=["helper-beside-it", "submodule-of-its-package"])
def test_an_edited_module_the_factory_imports_runs_edited(tmp_path, consts, factory):
    """The factory's module is unchanged; the user module it takes its constants from is edited."""
    module = factory.partition(":")[0]
    source = tmp_path / (module.replace(".", "/") + ".py")
    source.parent.mkdir(exist_ok=True)
    if source.parent != tmp_path:
        (source.parent / "__init__.py").write_text("")
    (tmp_path / consts).write_text("WEIGHT = 0.50\nCLASSES = 3\n")
    source.write_text(FACTORY.replace("WEIGHT = 0.50\nCLASSES = 3",
                                      f"from {consts[:-3].replace('/', '.')} import WEIGHT, CLASSES"))
    assert _weight(build_model({"factory": factory}, tmp_path)) == 0.5
    _edit(tmp_path / consts, "0.50", "0.25")
    assert _weight(build_model({"factory": factory}, tmp_path)) == 0.25


def test_the_same_module_name_in_another_spec_folder_is_that_folders_module(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "twin_net.py").write_text(FACTORY)
    (two / "twin_net.py").write_text(FACTORY.replace("0.50", "0.25"))
    assert _weight(build_model({"factory": "twin_net:make"}, one)) == 0.5
    assert _weight(build_model({"factory": "twin_net:make"}, two)) == 0.25

"""``torchrun -m reportgen.distributed compare`` (2 CPU processes, gloo) equals one process,
and ``reportgen compare --pass`` uses that file (and refuses one made on other inputs).

BASE and NEW are one small architecture with different seeds, so the pass
carries everything: per-layer CKA terms, agreement and flips (the class
folders give labels) and the units' per-channel terms and top-k states. One
image per batch on both sides, so each image's activations are computed
identically and the sums differ only by the order they are added in.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reportgen.analyses.compare_pass import load_pass
from reportgen.cli import main

ROOT = Path(__file__).resolve().parents[1]

NET = '''
import torch
from torch import nn

class TwoConv(nn.Module):
    def __init__(self, num_classes=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(x.mean(dim=(2, 3)))
'''


def _spec(seed: int) -> str:
    return (f"title: seed {seed}\nmodel:\n  factory: twonet:TwoConv\n  kwargs: {{num_classes: 2, seed: {seed}}}\n"
            "  input_size: [1, 8, 8]\nclasses: [a, b]\npreprocess: {mean: [0.0], std: [1.0]}\n"
            "dataset: {root: data, batch_size: 1}\n")


def write_pair(root: Path, per_class: int) -> Path:
    """BASE (seed 0) and NEW (seed 1) specs in ``root``, with ``per_class`` 8x8 images in classes a and b."""
    (root / "twonet.py").write_text(NET)
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(root / "data" / cls / f"{i}.png")
    (root / "base.yaml").write_text(_spec(0))
    (root / "new.yaml").write_text(_spec(1))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = write_pair(tmp_path_factory.mktemp("dcompare"), 7)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "reportgen.distributed", "compare", "--base", "base.yaml", "--new", "new.yaml",
         "--out", "pass.npz"], cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_two_processes_equal_one(project):
    from reportgen.analyses.weight_diff import architecture_mismatch
    from reportgen.commands.compare import dataset_pass, resolve_pair

    got, header = load_pass(project / "pass.npz")
    _, _, base, new = resolve_pair(project / "base.yaml", project / "new.yaml", "cpu")
    assert not architecture_mismatch(base.model, new.model)
    want = dataset_pass(base, new, same=True)

    g, w = got.predictions, want.predictions
    assert g.predictions_json() == w.predictions_json() and g.n == 14 and g.negative_flips is not None
    for kind in ("negative", "positive", "changed"):
        for f in ("indices", "labels", "base", "new"):
            np.testing.assert_array_equal(getattr(getattr(g, kind), f), getattr(getattr(w, kind), f))
    assert got.cka.n == want.cka.n == 14 and got.cka.base_layers == want.cka.base_layers
    np.testing.assert_allclose(got.cka.biased, want.cka.biased, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.cka.debiased, want.cka.debiased, rtol=1e-5, atol=1e-9)
    assert got.cka.base_reduction == want.cka.base_reduction

    gu, wu = got.units, want.units
    assert gu.layers == wu.layers and "relu2" in gu.layers and gu.base.n_images == 14
    for name in gu.layers:
        for terms in ("covariance", "base_variance", "new_variance"):
            np.testing.assert_allclose(getattr(gu, terms)[name], getattr(wu, terms)[name], rtol=1e-5, atol=1e-9)
        for side in ("base", "new"):
            got_side, want_side = getattr(gu, side).layers[name], getattr(wu, side).layers[name]
            # torchrun's ranks run one thread, this process more: activations agree to float32's last bits
            np.testing.assert_allclose(got_side["values"], want_side["values"], rtol=1e-5, atol=1e-7)
            for f in ("images", "positions"):
                np.testing.assert_array_equal(got_side[f], want_side[f])


def test_compare_uses_the_pass_and_refuses_a_stale_one(project, tmp_path, capsys):
    args = ["--only", "summary", "--quiet", "--no-cache"]
    assert main(["compare", str(project / "base.yaml"), str(project / "new.yaml"), "-o", str(tmp_path / "a"),
                 *args]) == 0
    assert main(["compare", str(project / "base.yaml"), str(project / "new.yaml"), "-o", str(tmp_path / "b"),
                 "--pass", str(project / "pass.npz"), *args]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text())["comparison"] for d in "ab")
    assert b["inputs"]["pass_file"] and a["inputs"]["pass_file"] is None
    assert a["predictions"] == b["predictions"]
    assert a["units"]["layer"] == b["units"]["layer"] and a["units"]["channels"] == b["units"]["channels"]
    ckas = {layer: v["cka"] for layer, v in a["layers"].items() if v["cka"] is not None}
    assert ckas and all(b["layers"][layer]["cka"] == pytest.approx(v, rel=1e-5) for layer, v in ckas.items())
    capsys.readouterr()
    # BASE and NEW swapped: not what the pass was computed on
    assert main(["compare", str(project / "new.yaml"), str(project / "base.yaml"), "-o", str(tmp_path / "c"),
                 "--pass", str(project / "pass.npz"), *args]) == 2
    assert "other inputs" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_a_compare_reads_its_dataset_and_counts_its_flips_once(tmp_path, monkeypatch):
    """compare_dataset (the listing, labels and preprocessing of NEW's inputs) and the flips per class
    each ran twice per compare; one compare calls each once, and report.json still has the flips."""
    from reportgen.commands import compare as cmp

    root = write_pair(tmp_path, 3)
    calls = {"compare_dataset": 0, "_negative_flips_by_class": 0}
    for name in calls:
        real = getattr(cmp, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(cmp, name, counted)
    assert main(["compare", str(root / "base.yaml"), str(root / "new.yaml"), "-o", str(tmp_path / "out"),
                 "--only", "summary", "--quiet", "--no-cache"]) == 0
    assert calls == {"compare_dataset": 1, "_negative_flips_by_class": 1}
    assert "flips_by_class" in json.loads((tmp_path / "out" / "report.json").read_text())

"""``reportgen build --topk`` reads the pass ``torchrun -m reportgen.distributed topk`` wrote (run here
as one process): the same report.json top-k summary as a plain build, and a file made for other
inputs or top-k options, or no pass at all, exits 2 naming the file and writes nothing.

The model is BoxNet (integer weights on 0/1 images): every activation is an exact small integer, so
the sharded pass and the build's own stream agree bit for bit whatever the batch size.
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

from reportgen.cli import main
from tests.analyses.test_topk_distributed import BOXNET, SPEC

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--only", "topk", "--quiet", "--no-cache"]


def _torchrun(root: Path, out: str, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
         "-m", "reportgen.distributed", "topk", "--spec", "spec.yaml", "--out", out, *extra],
        cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dtopk")
    (root / "boxnet.py").write_text(BOXNET)
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((rng.random((8, 8)) < 0.3).astype(np.uint8) * 255).save(root / "data" / cls / f"{i}.png")
    (root / "spec.yaml").write_text(SPEC)
    _torchrun(root, "topk.npz")
    _torchrun(root, "k4.npz", "--k", "4")           # made for other top-k options than the spec's
    return root


def test_build_with_the_pass_matches_a_plain_build(project, tmp_path, monkeypatch):
    from reportgen.analyses import topk as tk

    spec = project / "spec.yaml"
    assert main(["build", str(spec), "-o", str(tmp_path / "plain"), *ARGS]) == 0

    def no_stream(*args, **kwargs):
        raise AssertionError("build --topk streamed the dataset")
    monkeypatch.setattr(tk, "stream_topk", no_stream)
    assert main(["build", str(spec), "-o", str(tmp_path / "pass"), "--topk", str(project / "topk.npz"), *ARGS]) == 0
    plain, given = (json.loads((tmp_path / d / "report.json").read_text())["sections"]["topk"]
                    for d in ("plain", "pass"))
    assert given == plain
    assert plain["layers"] == ["relu", "pool"] and plain["k"] == 5 and plain["images"] == 8


def test_build_refuses_a_pass_made_for_other_inputs(project, tmp_path, capsys):
    spec = project / "spec.yaml"
    assert main(["build", str(spec), "-o", str(tmp_path / "k"), "--topk", str(project / "k4.npz"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "k4.npz" in err and "top-k options" in err and not (tmp_path / "k").exists()
    # other images: the dataset listing changed since the pass
    other = project / "other.yaml"
    other.write_text(SPEC.replace("root: data", "root: data/a"))
    assert main(["build", str(other), "-o", str(tmp_path / "o"), "--topk", str(project / "topk.npz"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "topk.npz" in err and "other inputs" in err and not (tmp_path / "o").exists()
    # not a pass at all
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert main(["build", str(spec), "-o", str(tmp_path / "j"), "--topk", str(junk), *ARGS]) == 2
    assert "not a top-k pass" in capsys.readouterr().err and not (tmp_path / "j").exists()

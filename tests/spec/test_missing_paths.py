"""A path the spec names that is not there: the error shows it as written and as resolved."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from reportgen.cli import main
from tests.project import GOOD, make_project

CASES = [
    # (name, spec text, key, path as written)
    ("probe-file", GOOD.replace("probes/*.png", "probes/cat.png"), "probes.images[0]", "probes/cat.png"),
    ("probe-glob", GOOD.replace("probes/*.png", "nothing/*.png"), "probes.images[0]", "nothing/*.png"),
    ("probe-folder", GOOD.replace("probes/*.png", "ckpt"), "probes.images[0]", "ckpt"),
    ("checkpoint-file", GOOD.replace("ckpt/*.pt", "ckpt/../runs/epoch_9.pt"), "checkpoints[0]",
     "ckpt/../runs/epoch_9.pt"),
    ("checkpoint-glob", GOOD.replace("ckpt/*.pt", "runs/*.pt"), "checkpoints[0]", "runs/*.pt"),
    ("checkpoint-labelled", GOOD.replace("- ckpt/*.pt", "- {path: runs/last.pt, label: last}"),
     "checkpoints[0]", "runs/last.pt"),
    ("dataset-root", GOOD + "dataset: {root: data/val}\n", "dataset.root", "data/val"),
    ("dataset-glob", GOOD + "dataset: {root: 'data/*.png'}\n", "dataset.root", "data/*.png"),
    ("metrics", GOOD + "metrics: runs/metrics.csv\n", "metrics", "runs/metrics.csv"),
]


@pytest.mark.parametrize("name,text,key,written", CASES, ids=[c[0] for c in CASES])
def test_missing_path_is_named_as_written_and_as_resolved(tmp_path, capsys, name, text, key, written):
    spec = make_project(tmp_path, text)
    code = main(["validate", str(spec)])
    err = capsys.readouterr().err
    assert code == 2, err
    resolved = os.path.abspath(tmp_path / written)     # absolute, ".." folded away
    assert f" {key}: " in err, err
    assert f"'{written}' (resolved: {resolved})" in err, err
    assert Path(resolved).is_absolute() and ".." not in Path(resolved).parts

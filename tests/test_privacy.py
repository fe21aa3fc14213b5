"""A report goes public: the folder it was built in (user names, layout) appears nowhere in it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import reportgen
from reportgen.render.page import public_path
from tests.project import make_project
from tests.sections.test_featureviz_embeddings import SPEC, make_dataset


def test_built_from_a_deep_folder_the_folder_is_nowhere_in_the_output(tmp_path):
    deep = tmp_path / "home" / "alice-private" / "projects" / "secret-model"
    deep.mkdir(parents=True)
    spec = make_project(deep, SPEC, checkpoints=2)
    make_dataset(deep)
    (deep / "log.csv").write_text("step,val_loss\n0,1.0\n1,0.5\n")
    spec.write_text(spec.read_text() + "metrics: log.csv\n")
    report = reportgen.build(spec, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
                             only=["summary", "topk", "embeddings", "curves", "evolution"])
    data = json.loads(report.json_path.read_text())
    assert [c["path"] for c in data["model"]["checkpoints"]] == ["ckpt/epoch_1.pt", "ckpt/epoch_2.pt"]
    for out in (report.path, report.json_path):
        text = out.read_text()
        for leak in (str(deep), str(tmp_path), "alice-private"):
            assert leak not in text, f"{leak} in {out.name}"


def test_public_path_outside_the_spec_folder_is_the_file_name(tmp_path):
    assert public_path(tmp_path / "a" / "b.pt", tmp_path) == "a/b.pt"
    assert public_path(Path("/elsewhere/runs/c.pt"), tmp_path) == "c.pt"

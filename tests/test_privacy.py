"""A report goes public: the folder it was built in (user names, layout) appears nowhere in it."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

import reportgen
from reportgen.paths import public_path, public_text
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


def _leaks(outputs, *secrets) -> list:
    return [f"{leak} in {out.name}" for out in outputs for leak in secrets if leak in out.read_text()]


def test_a_torchscript_file_outside_the_spec_folder_shows_as_its_name(tmp_path):
    """The model source printed the spec's value: an absolute path, user name and all."""
    from tests.test_model_sources import project

    outside = tmp_path / "home" / "alice-private"
    outside.mkdir(parents=True)
    (tmp_path / "spec").mkdir()
    spec = project(tmp_path / "spec", f"torchscript: {outside / 'model.pt'}\ninput_size: [3, 16, 16]\n")
    sys.path.insert(0, str(spec.parent))
    try:
        torch.manual_seed(0)
        torch.jit.script(importlib.import_module("nets").Body()).save(str(outside / "model.pt"))
    finally:
        sys.path.remove(str(spec.parent))
        sys.modules.pop("nets", None)
    report = reportgen.build(spec, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", only=["summary"])
    assert json.loads(report.json_path.read_text())["model"]["source"] == "torchscript: model.pt"
    assert not _leaks((report.path, report.json_path), str(tmp_path), "alice-private")


def test_a_failing_section_names_no_absolute_path(tmp_path, monkeypatch):
    """A section's exception becomes an error finding; its text keeps the file's public name only."""
    from reportgen.sections.registry import registry

    deep = tmp_path / "home" / "alice-private" / "proj"
    deep.mkdir(parents=True)
    spec = make_project(deep)
    secret = tmp_path / "home" / "alice-private" / "weights" / "x.pt"

    def fails(self, ctx, options):
        raise FileNotFoundError(f"No such file: {secret}; also tried '{deep / 'ckpt' / 'y.pt'}'")

    monkeypatch.setattr(registry()["summary"], "analyze", fails)
    report = reportgen.build(spec, out_dir=tmp_path / "out", use_cache=False, only=["summary"])
    finding = next(f for f in report.findings if f["id"] == "section-failed-summary")
    assert finding["evidence"] == "FileNotFoundError: No such file: x.pt; also tried 'ckpt/y.pt'"
    assert not _leaks((report.path, report.json_path), str(tmp_path), "alice-private")


def test_a_failing_attribution_method_names_no_absolute_path(tmp_path, monkeypatch):
    """Attribution methods fail one by one, inside their section: their texts are scrubbed too."""
    from reportgen.sections.attribution import AttributionSection

    deep = tmp_path / "home" / "alice-private"
    deep.mkdir(parents=True)
    spec = make_project(deep)

    def method(self, name, *args):
        def run(model, images, targets):
            raise OSError(f"cannot read {deep / 'cache' / name}.npy")
        return run

    monkeypatch.setattr(AttributionSection, "_method", method)
    report = reportgen.build(spec, out_dir=tmp_path / "out", use_cache=False, only=["gradients"])
    evidence = [f["evidence"] for f in report.findings
                if f["section"] == "gradients" and "cannot read" in f["evidence"]]
    assert evidence and all(e.startswith("OSError: cannot read cache/") for e in evidence)
    assert not _leaks((report.path, report.json_path), str(tmp_path), "alice-private")


@pytest.mark.parametrize("text, public", [
    ("[Errno 2] No such file or directory: '/home/alice/secret/x.pt'", "[Errno 2] No such file or directory: 'x.pt'"),
    ("No such file: /home/alice/secret/x.pt.", "No such file: x.pt."),
    ("open /home/alice/proj/ckpt/a.pt failed", "open ckpt/a.pt failed"),
    ('File "/usr/lib/python3/x.py", line 3', 'File "x.py", line 3'),
    ("/srv/a/b.py:12: in f", "b.py:12: in f"),
    ("PosixPath('/srv/my data/x.pt')", "PosixPath('x.pt')"),
    ("[/tmp/x, /tmp/y]", "[x, y]"),
    ("C:\\Users\\alice\\m.pt is broken", "m.pt is broken"),
    ("~/data/x.png missing", "x.png missing"),
    # relative paths, URLs, fractions and lone slashes stay as they are
    ("see https://example.com/a/b, ckpt/a.pt, 1/2 and x / y", "see https://example.com/a/b, ckpt/a.pt, 1/2 and x / y"),
])
def test_public_text_replaces_absolute_paths_only(text, public):
    assert public_text(text, "/home/alice/proj") == public

"""build --baseline: findings get states against a previous report.json, and gates trip on new ones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reportgen.cli import main
from reportgen.commands.baseline import diff_findings, gate_tripped, load_baseline
from reportgen.errors import InputError
from tests.project import make_project


def _f(fid: str, severity: str = "warning", evidence: str = "e", title: str = "t", section: str = "s"):
    return {"id": fid, "severity": severity, "title": title, "evidence": evidence, "section": section}


def test_states_by_id_title_and_evidence():
    base = [_f("a"), _f("b", evidence="old"), _f("gone", "error")]
    now = [_f("a"), _f("b", evidence="new"), _f("c", "info")]
    findings, resolved = diff_findings(now, base)
    assert [(f["id"], f["state"]) for f in findings] == [("c", "new"), ("b", "updated"), ("a", "unchanged")]
    assert resolved == [_f("gone", "error")]


def test_without_a_baseline_everything_is_new_in_severity_order():
    findings, resolved = diff_findings([_f("x", "info"), _f("y", "error"), _f("z")], None)
    assert [f["id"] for f in findings] == ["y", "z", "x"] and {f["state"] for f in findings} == {"new"}
    assert resolved == []


def test_a_baseline_that_already_has_states_is_compared_on_content():
    base = [dict(_f("a"), state="new")]
    findings, _ = diff_findings([_f("a")], base)
    assert findings[0]["state"] == "unchanged"


@pytest.mark.parametrize("level, ids", [
    ("warning", ["n", "u"]), ("error", []), ("new-warning", ["n"]), ("new-error", []), (None, []),
])
def test_gates(level, ids):
    findings = [dict(_f("n"), state="new"), dict(_f("u"), state="unchanged"), dict(_f("i", "info"), state="new")]
    assert [f["id"] for f in gate_tripped(findings, level)] == ids


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1"),
    ('{"name": "left-pad", "version": "1.0.0"}', "not a reportgen report.json"),
    ('[1, 2]', "not a reportgen report.json"),
    ('{"reportgen": "0.1.0", "findings": [{"id": "x"}]}', "key findings[0].severity: missing"),
    ('{"reportgen": "0.1.0", "findings": [{"id": "x", "severity": "fatal", "title": "", "evidence": ""}]}',
     "key findings[0].severity: 'fatal' is not one of info, warning, error"),
])
def test_bad_baseline_names_the_file(tmp_path, content, message):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(InputError) as e:
        load_baseline(tmp_path)        # the folder that holds it works too
    assert message in str(e.value) and str(path) in str(e.value)


@pytest.fixture(scope="module")
def frozen_project(tmp_path_factory) -> Path:
    """Two identical checkpoints: every layer is frozen, a warning finding."""
    root = tmp_path_factory.mktemp("frozen")
    spec = make_project(root, checkpoints=2)
    shutil.copy(root / "ckpt" / "epoch_1.pt", root / "ckpt" / "epoch_2.pt")
    return spec


def _build(spec: Path, out: Path, *extra: str) -> int:
    return main(["build", str(spec), "-o", str(out), "--quiet", "--only", "summary", "evolution", *extra])


def test_rebuild_against_itself_is_unchanged_and_the_new_gate_stays_open(frozen_project, tmp_path, capsys):
    first = tmp_path / "first"
    assert _build(frozen_project, first, "--fail-on", "warning") == 3      # the known warning
    data = json.loads((first / "report.json").read_text())
    assert data["kind"] == "build" and data["resolved"] == [] and data["baseline"] is None
    assert [f["state"] for f in data["findings"]] == ["new"] and data["findings"][0]["id"] == "frozen-layers"
    second = tmp_path / "second"
    assert _build(frozen_project, second, "--baseline", str(first), "--fail-on", "new-warning") == 0
    again = json.loads((second / "report.json").read_text())
    assert [f["state"] for f in again["findings"]] == ["unchanged"]
    assert again["baseline"]["spec_digest"] == data["spec_digest"]
    html = (second / "index.html").read_text()
    assert 'class="badge state-unchanged">unchanged<' in html and str(first) not in html
    assert _build(frozen_project, tmp_path / "third", "--baseline", str(first), "--fail-on", "warning") == 3


def test_new_updated_and_resolved_against_an_edited_baseline(frozen_project, tmp_path, capsys):
    first = tmp_path / "first"
    _build(frozen_project, first)
    data = json.loads((first / "report.json").read_text())
    frozen = data["findings"][0]
    edited = dict(data, findings=[dict(frozen, evidence="old numbers"),
                                  _f("noisy-filters", section="filters", title="noisy")])
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    out = tmp_path / "vs-edited"
    assert _build(frozen_project, out, "--baseline", str(tmp_path / "edited.json"), "--fail-on", "new-warning") == 0
    got = json.loads((out / "report.json").read_text())
    assert [(f["id"], f["state"]) for f in got["findings"]] == [("frozen-layers", "updated")]
    assert [f["id"] for f in got["resolved"]] == ["noisy-filters"] and "state" not in got["resolved"][0]
    assert "Resolved since the baseline" in (out / "index.html").read_text()
    # a baseline without the warning: it is new, and the gate trips
    (tmp_path / "clean.json").write_text(json.dumps(dict(data, findings=[])))
    assert _build(frozen_project, tmp_path / "vs-clean", "--baseline", str(tmp_path / "clean.json"),
                  "--fail-on", "new-warning") == 3
    assert "worst warning: 2 of 2 layers never change" in capsys.readouterr().err


def test_bad_baseline_exits_2_and_writes_nothing(frozen_project, tmp_path, capsys):
    bad = tmp_path / "package.json"
    bad.write_text('{"name": "x"}')
    out = tmp_path / "out"
    assert _build(frozen_project, out, "--baseline", str(bad)) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a reportgen report.json" in err and "Traceback" not in err
    assert not out.exists()
    assert _build(frozen_project, out, "--baseline", str(tmp_path / "missing")) == 2
    assert not out.exists()

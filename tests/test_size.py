"""A report's size: report.json records the page's bytes and each section's share; a report
over 10 MB warns on stderr (even --quiet) naming its heaviest sections, without a finding."""
from __future__ import annotations

import json

from reportgen.cli import main
from reportgen.commands import build as pipeline
from tests.project import make_project


def test_size_is_recorded_and_a_heavy_report_warns(tmp_path, capsys, monkeypatch):
    spec = make_project(tmp_path, checkpoints=2)
    args = ["build", str(spec), "--only", "summary", "filters", "--quiet", "--fail-on", "error"]
    assert main(args) == 0
    assert "reportgen: warning" not in capsys.readouterr().err
    data = json.loads((tmp_path / "site" / "report.json").read_text())
    size = data["size"]
    assert size["bytes"] == (tmp_path / "site" / "index.html").stat().st_size
    assert set(size["sections"]) == {"summary", "filters"}
    assert 0 < sum(size["sections"].values()) < size["bytes"]

    monkeypatch.setattr(pipeline, "SIZE_WARNING_BYTES", 1000)
    assert main(args) == 0                                  # a warning, not a finding: the gate holds
    err = capsys.readouterr().err
    heaviest = max(size["sections"], key=size["sections"].get)
    assert "reportgen: warning: index.html is" in err and "heaviest sections: " + heaviest in err
    assert "Keeping reports small" in err

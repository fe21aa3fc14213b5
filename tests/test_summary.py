"""`reportgen summary`: Markdown for a PR comment, with a marker, states, numbers, a size cap."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reportgen.cli import main
from reportgen.summary import GITHUB_LIMIT, md, summary_markdown
from tests.published import FINDINGS, build_reports


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return build_reports(tmp_path_factory.mktemp("summary"))


def _data(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_build_summary_has_marker_verdict_findings_and_numbers(reports, capsys):
    assert main(["summary", str(reports.builds[2]), "--link", "https://me.github.io/repo/reports/x/"]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith("<!-- reportgen:tiny-v3-") and first.endswith(" -->")
    assert "❌ 3 finding(s): 1 error, 1 warning, 1 info." in text
    assert "[Full report](https://me.github.io/repo/reports/x/)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "conv1" in line]
    assert rows[0].startswith("| error | conv1 filters look like noise")          # worst first
    assert "| val\\_acc | 0.8 |" in text


def test_states_with_a_baseline_and_resolved(reports):
    data = _data(reports.builds[2])
    data["baseline"] = {"title": "tiny v2", "findings": 2}
    states = ["new", "unchanged", "updated"]
    data["findings"] = [dict(f, state=s) for f, s in zip(FINDINGS, states)]
    data["resolved"] = [{"id": "old", "severity": "warning", "title": "gone", "evidence": "e", "section": "x"}]
    text = summary_markdown(data, report_id="pr-review")
    assert text.startswith("<!-- reportgen:pr-review -->\n")
    assert "⚠️ 1 new finding(s): 1 warning; 1 updated; 1 unchanged; 1 resolved." in text
    order = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| **new**") or
             line.startswith(("| updated", "| resolved", "| unchanged"))]
    assert order == ["| **new**", "| updated", "| resolved", "| unchanged"]


def test_compare_summary_lists_the_largest_changes(reports):
    text = summary_markdown(_data(reports.compare))
    assert text.startswith("<!-- reportgen:tiny-v1-vs-tiny-v3-")
    assert "### reportgen compare: tiny v1 vs tiny v3" in text
    assert "**Largest changes**" in text and "| `conv1` |" in text
    assert "| agreement |" in text


def test_never_over_githubs_limit_and_says_what_it_left_out(reports):
    data = _data(reports.builds[0])
    data["findings"] = [{"id": f"f{i}", "severity": ("info", "warning", "error")[i % 3], "title": f"finding {i}",
                         "evidence": "x" * 1000, "section": "filters"} for i in range(2000)]
    text = summary_markdown(data)
    assert len(text) <= GITHUB_LIMIT
    assert "row(s) left out to stay within GitHub's 65,536-character comment limit" in text
    kept = [line for line in text.splitlines() if line.startswith("| ") and "finding " in line]
    assert kept and all(line.startswith("| error") for line in kept)   # the least important went first


def test_report_text_cannot_inject_markup_or_images(reports):
    data = _data(reports.builds[0])
    data["title"] = "![x](data:image/png;base64,AAAA) <img src=x onerror=alert(1)> | [link](http://e.vil)"
    data["findings"] = [dict(FINDINGS[0], evidence="<script>alert(1)</script>\n| broken | row |")]
    text = summary_markdown(data)
    assert "![" not in text and "<img" not in text and "<script" not in text
    assert "data:" not in text
    row = next(line for line in text.splitlines() if line.startswith("| warning"))
    assert row.count("|") - row.count("\\|") == 5                 # as many cells as the header
    assert md("a|b_c*d") == "a\\|b\\_c\\*d"


def test_out_file_and_bad_input(reports, tmp_path, capsys):
    out = tmp_path / "comment.md"
    assert main(["summary", str(reports.builds[1] / "report.json"), "-o", str(out), "--id", "pr-7"]) == 0
    assert out.read_text().startswith("<!-- reportgen:pr-7 -->") and capsys.readouterr().out == ""
    foreign = tmp_path / "foreign.json"
    foreign.write_text("[1, 2]")
    assert main(["summary", str(foreign)]) == 2
    assert str(foreign) in capsys.readouterr().err
    assert main(["summary", str(reports.builds[1]), "--id", "a/b"]) == 2
    assert main(["summary", str(reports.builds[1]), "-o", str(tmp_path / "nope" / "x.md")]) == 2

"""`reportgen summary`: Markdown for a PR comment, with a marker, states, numbers, a size cap."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reportgen.cli import main
from reportgen.commands.pr_comment import GITHUB_LIMIT, md, summary_markdown
from tests.github_markdown import assert_safe_on_github
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
    assert md("@me www.x.y http://x.y #1 GH-2") == "@\u2060me www\u2060.x.y http:\u2060//x.y \\#\u20601 GH\u2060-2"


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


# --------------------------------------------------------------------------- safe on GitHub (issue 15, item 4)

BAIT = "see https://evil.example, www.evil.example or mail a@evil.example; cc @octocat and @org/team #12"


def _metrics(data: dict) -> dict:
    model = data["model"]
    return next(c for c in model["checkpoints"] if c["label"] == model["audit_checkpoint"])["metrics"]


def test_report_fields_make_no_link_and_no_mention_on_github(reports):
    data = _data(reports.builds[0])
    data["title"] = BAIT
    data["findings"] = [dict(FINDINGS[0], title=BAIT, evidence=BAIT, section=BAIT, layer=BAIT)]
    _metrics(data)[BAIT] = 1.0
    link = "https://me.github.io/repo/reports/x/"
    html = assert_safe_on_github(summary_markdown(data, link=link), link)
    assert "https:" in html and "evil.example" in html and "octocat" in html   # still readable
    compare = _data(reports.compare)
    compare["comparison"]["predictions"]["per_class"] = {BAIT: {"base_accuracy": 0.9, "new_accuracy": 0.5}}
    compare["comparison"]["layers"][BAIT] = {"cka": 0.5, "weight_change": 9.0}
    compare["verdict"] = [BAIT]
    compare["base"]["title"] = BAIT
    assert_safe_on_github(summary_markdown(compare))


def test_kind_and_state_show_only_their_own_words(reports):
    data = _data(reports.builds[2])
    data["kind"] = "<img src=x onerror=alert(1)>"
    data["baseline"] = {"title": "tiny v2", "findings": 2}
    data["findings"] = [dict(FINDINGS[0], state="**x** <b>y</b>")]
    text = summary_markdown(data, report_id="pr-review")
    html = assert_safe_on_github(text)
    assert "<strong>x</strong>" not in html
    assert "\\*\\*x\\*\\*" in text                # shown, escaped


def test_a_crafted_digest_cannot_break_out_of_the_marker(reports):
    data = _data(reports.builds[0])
    data["spec_digest"] = data["inputs_digest"] = "--> <img src=x onerror=alert(1)> <!--"
    text = summary_markdown(data)
    assert text.startswith("<!-- reportgen:tiny-v1 -->\n")           # a digest that is not hex adds nothing
    assert_safe_on_github(text)
    data["spec_digest"] = "abcdef12zz"
    assert summary_markdown(data).startswith("<!-- reportgen:tiny-v1 -->\n")
    data["spec_digest"] = "ABCDEF1234"
    assert summary_markdown(data).startswith("<!-- reportgen:tiny-v1 -->\n")
    data["spec_digest"] = "0123456789abcdef"
    assert summary_markdown(data).startswith("<!-- reportgen:tiny-v1-01234567 -->\n")


@pytest.mark.parametrize("bad", ["PR-7", "a/b", "", ".x", "-x", "x" * 101, "a -->", "a\nb"])
def test_a_bad_id_exits_2(reports, bad, capsys):
    assert main(["summary", str(reports.builds[1]), f"--id={bad}"]) == 2
    assert "--id" in capsys.readouterr().err


def test_hundreds_of_long_metric_names_shrink_the_key_numbers(reports, tmp_path, capsys):
    data = _data(reports.builds[0])
    _metrics(data).update({f"metric {i} " + "m" * 1000: i for i in range(300)})
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    assert main(["summary", str(path)]) == 0
    text = capsys.readouterr().out
    assert len(text) <= GITHUB_LIMIT and "row(s) left out" in text
    assert "| metric 0 " in text and "| metric 299 " not in text         # the first rows stay
    assert_safe_on_github(text)


def test_every_line_is_capped_so_even_a_small_limit_holds(reports):
    data = _data(reports.compare)
    data["base"]["title"] = "t" * 100_000
    data["verdict"] = ["v" * 100_000]
    data["findings"] = [dict(FINDINGS[0], evidence="e" * 100_000) for _ in range(50)]
    for limit in (GITHUB_LIMIT, 5000, 1000):
        text = summary_markdown(data, limit=limit, link="https://x.example/" + "l" * 100_000)
        assert len(text) <= limit
        assert text.startswith("<!-- reportgen:")

"""The built report in a real headless Chromium, offline: no request, no console error."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import reportgen
from tests.browser import ARTIFACTS_ENV, check_report, chromium_available, screenshot_path
from tests.project import GOOD, make_project
from tests.test_build import HOSTILE

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not chromium_available(), reason="needs chromium + chromedriver")]

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name,text", [("tiny-light", GOOD),
                                       ("tiny-dark", GOOD + "output: {theme: dark}\n"),
                                       ("hostile", HOSTILE)])
def test_report_opens_offline_without_requests_or_errors(tmp_path, name, text):
    spec = make_project(tmp_path, text, checkpoints=2)
    report = reportgen.build(spec, cache_dir=tmp_path / "cache")
    result = check_report(report.path, screenshot_path(f"report-{name}.png", tmp_path))
    if not os.environ.get(ARTIFACTS_ENV):
        assert REPO not in result.screenshot.resolve().parents  # never into the checkout
    assert result.requests == [], result.requests
    assert result.console_errors == [], result.console_errors
    assert result.dom_text_len > 500
    assert result.screenshot.stat().st_size > 10_000
    if name == "hostile":
        assert result.title == "<script>alert('title')</script>"  # shown as text, not run

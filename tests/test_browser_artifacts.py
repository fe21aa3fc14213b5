"""Where browser tests put screenshots: never into the checkout."""
from __future__ import annotations

from pathlib import Path

from tests.browser import ARTIFACTS_ENV, screenshot_path

REPO = Path(__file__).resolve().parent.parent


def test_screenshots_go_to_the_tests_tmp_dir_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    path = screenshot_path("report-x.png", tmp_path)
    assert path == tmp_path / "report-x.png"
    assert REPO not in path.resolve().parents


def test_screenshots_go_to_the_folder_the_env_var_names(tmp_path, monkeypatch):
    kept = tmp_path / "ci" / "artifacts"
    monkeypatch.setenv(ARTIFACTS_ENV, str(kept))
    path = screenshot_path("report-x.png", tmp_path / "unused")
    assert path == kept / "report-x.png"
    assert kept.is_dir()

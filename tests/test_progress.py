"""Progress in a CI log: one plain line per step, no carriage-return frames of a bar."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.project import GOOD, make_project

REPO = Path(__file__).resolve().parent.parent


def test_a_build_logged_to_a_file_writes_plain_lines(tmp_path):
    spec = make_project(tmp_path, GOOD)
    env = dict(os.environ, PYTHONPATH=str(REPO), REPORTGEN_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "reportgen", "build", str(spec), "-o", str(tmp_path / "out"),
                           "--only", "summary", "filters"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr                      # no bar frames
    lines = done.stderr.splitlines()
    assert any(line.startswith("reportgen: summary done in") for line in lines), done.stderr
    assert len(lines) < 20, done.stderr

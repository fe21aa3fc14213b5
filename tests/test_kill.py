"""A build or a publish killed at any point leaves the old pair/site or the new one (issue 15).

Two kinds of test: a crash injected at every file-system step of the writers in
turn (deterministic: each step is hit once), and SIGKILL sent to a real
`build` / `publish` process at random moments of its work (what CI runners and
impatient users do).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from reportgen import atomic, report
from reportgen.commands.publish import publish
from tests.project import GOOD, make_project
from tests.published import variant
from tests.test_publish_trust import consistent, reports  # noqa: F401  (the module's shared fixture)

REPO = Path(__file__).resolve().parent.parent


class Crash(BaseException):
    """A kill, as far as the code under test can tell: nothing after it runs, no except clause catches it."""


def pair(folder: Path) -> Tuple[str, bool]:
    """(the report's title, whether report.json belongs to the index.html beside it)."""
    data = json.loads((folder / "report.json").read_text())
    page = (folder / "index.html").read_bytes()
    return data["title"], data["page_sha256"] == hashlib.sha256(page).hexdigest()


def crash_at(monkeypatch, k: int) -> List[int]:
    """Make the k-th file-system step (fsync, link, rename, exchange, chmod) raise Crash."""
    calls = [0]

    def wrap(fn: Callable) -> Callable:
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise Crash()
            return fn(*args, **kwargs)
        return step

    for name in ("fsync", "link", "rename", "replace", "chmod"):
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    monkeypatch.setattr(atomic, "_exchange", wrap(atomic._exchange) if atomic._exchange else None)
    return calls


def test_write_pair_crashed_at_every_step_leaves_the_old_pair_or_the_new(tmp_path, monkeypatch):
    out = tmp_path / "site"
    report.write_pair(out, "<p>old</p>", {"title": "old"})
    (out / "CNAME").write_text("user's file\n")
    k = 1
    while True:
        with monkeypatch.context() as m:
            calls = crash_at(m, k)
            try:
                report.write_pair(out, f"<p>new {k}</p>", {"title": f"new {k}"})
                finished = True
            except Crash:
                finished = False
        title, matches = pair(out)
        assert matches and title in ("old", f"new {k}"), k
        assert (out / "CNAME").read_text() == "user's file\n"
        if finished:
            assert title == f"new {k}" and calls[0] < k
            break
        report.write_pair(out, "<p>old</p>", {"title": "old"})
        k += 1
    assert k > 4        # the writer has steps to crash in


def test_publish_crashed_at_every_step_keeps_the_site_consistent(reports, tmp_path, monkeypatch):  # noqa: F811
    site = tmp_path / "site"
    publish([reports.builds[0], reports.builds[1]], site, keep=5)
    newer = [variant(reports.builds[1], tmp_path / "v1", title="tiny v2 again", inputs_digest="e" * 64),
             reports.builds[2], reports.compare]
    k = 1
    while True:
        with monkeypatch.context() as m:
            calls = crash_at(m, k)
            try:
                publish(newer, site, keep=2)
                finished = True
            except Crash:
                finished = False
        consistent(site)
        if finished:
            assert calls[0] < k
            break
        k += 1
    publish(newer, site, keep=2)        # and a publish after the crash puts everything right
    consistent(site)
    assert not [p for p in (site / "reports").iterdir() if p.name.startswith(".")]
    assert k > 5


# --------------------------------------------------------------------------- real kills

CHILD = """
import sys, time
from pathlib import Path
import reportgen
from reportgen.commands.publish import publish
what, out = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)
started = time.perf_counter()
if what == "build":
    reportgen.build(sys.argv[3], out_dir=out, only=["summary"], cache_dir=Path(sys.argv[4]))
else:
    publish(sys.argv[3:], out, keep=2)
print(time.perf_counter() - started, flush=True)
"""


def _child(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _work_seconds(*args: str) -> float:
    proc = _child(*args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return float(out.strip())


def _kill_during(seconds: float, *args: str) -> None:
    proc = _child(*args)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


@pytest.mark.slow
def test_sigkill_during_build_leaves_a_matching_pair(tmp_path):
    specs = {}
    for title in ("old", "new"):
        project = tmp_path / title
        project.mkdir()
        specs[title] = str(make_project(project, GOOD.replace("title: tiny", f"title: {title}")))
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _work_seconds("build", str(out), specs["old"], str(cache)) > 0
    seconds = _work_seconds("build", str(tmp_path / "timing"), specs["new"], str(cache))
    rng = random.Random(0)
    seen = set()
    for _ in range(8):
        _kill_during(rng.uniform(0, seconds * 1.2), "build", str(out), specs["new"], str(cache))
        title, matches = pair(out)
        assert matches, "report.json and index.html come from different builds"
        seen.add(title)
        if title == "new":
            shutil.rmtree(out)
            assert _work_seconds("build", str(out), specs["old"], str(cache)) > 0
    print("titles after the kills:", seen)


@pytest.mark.slow
def test_sigkill_during_publish_leaves_a_consistent_site(reports, tmp_path):  # noqa: F811
    site = tmp_path / "site"
    publish([reports.builds[0], reports.builds[1]], site)
    newer = [str(variant(reports.builds[1], tmp_path / "again", title="again", inputs_digest="d" * 64)),
             str(reports.builds[2]), str(reports.compare)]
    seconds = _work_seconds("publish", str(tmp_path / "timing"), *newer)
    rng = random.Random(1)
    for _ in range(10):
        _kill_during(rng.uniform(0, seconds * 1.2), "publish", str(site), *newer)
        consistent(site)
    publish([Path(p) for p in newer], site, keep=2)
    consistent(site)

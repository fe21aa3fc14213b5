"""`reportgen demo` end to end: trains, writes its project, builds a small report that
opens offline in a real browser; a second run reuses everything."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from reportgen.cli import main
from tests.browser import check_report, chromium_available, screenshot_path


@pytest.fixture(scope="module")
def demo(demo_dir):
    """`reportgen demo` on the session's demo folder: reuses the model, builds the report."""
    out = demo_dir
    started = time.perf_counter()
    assert main(["demo", "-o", str(out), "--quiet"]) == 0
    return out, time.perf_counter() - started


@pytest.mark.slow
def test_demo_writes_a_complete_project(demo):
    out, _ = demo
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    assert spec["model"]["factory"] == "reportgen.demo.net:ShapesNet"
    checkpoints = sorted((out / "checkpoints").glob("*.pt"))
    assert len(checkpoints) >= 5
    assert len(list((out / "probes").glob("*.png"))) >= 4
    assert len((out / "classes.txt").read_text().split()) >= 4
    assert (out / "boxes.json").exists() and (out / "metrics.csv").exists()


@pytest.mark.slow
def test_demo_report_is_small_and_accurate(demo):
    out, _ = demo
    index = out / "site" / "index.html"
    assert index.stat().st_size < 3 * 1024 * 1024
    data = json.loads((out / "site" / "report.json").read_text())
    final = data["model"]["checkpoints"][-1]["metrics"]
    assert final["val_acc"] >= 0.9, final
    assert data["model"]["checkpoints"][0]["metrics"].get("epoch") == 0  # initialization included
    assert not [f for f in data["findings"] if f["id"].startswith("section-failed")], data["findings"]


@pytest.mark.slow
def test_second_demo_run_reuses_the_model(demo, capsys):
    out, first = demo
    before = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pt")}
    started = time.perf_counter()
    assert main(["demo", "-o", str(out), "--quiet"]) == 0
    assert time.perf_counter() - started < first
    assert capsys.readouterr().out.splitlines()[-1] == str(out / "public" / "index.html")
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pt")} == before


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="needs chromium + chromedriver")
def test_demo_report_opens_offline(demo, tmp_path):
    out, _ = demo
    result = check_report(out / "site" / "index.html", screenshot_path("demo-report.png", tmp_path))
    assert result.requests == [] and result.console_errors == [], (result.requests, result.console_errors)


@pytest.mark.slow
def test_demo_also_writes_a_compare_of_its_mid_training_checkpoint(demo, capsys):
    out, _ = demo
    data = json.loads((out / "compare" / "report.json").read_text())
    assert data["kind"] == "compare" and "mid-training" in data["base"]["title"]
    assert data["comparison"]["same_architecture"] is True
    p = data["comparison"]["predictions"]
    assert p["n"] > 100 and p["negative_flips"] is not None and p["positive_flips"] >= p["negative_flips"]
    assert data["verdict"] and (out / "compare" / "index.html").stat().st_size < 3 * 1024 * 1024


@pytest.mark.slow
def test_demo_publishes_its_report_and_its_compare(demo):
    out, _ = demo
    site = out / "public"
    reports = json.loads((site / "manifest.json").read_text())["reports"]
    assert sorted(r["kind"] for r in reports) == ["build", "compare"]
    build = next(r for r in reports if r["kind"] == "build")
    compare = next(r for r in reports if r["kind"] == "compare")
    assert compare["compares"]["new"] == build["id"]           # the compare links its NEW build
    for r in reports:
        built = out / ("site" if r is build else "compare") / "index.html"
        assert (site / r["path"]).read_bytes() == built.read_bytes()
    assert (site / "index.html").stat().st_size < 200_000

"""The build pipeline end to end on a tiny project: outputs, determinism, cache, safety."""
from __future__ import annotations

import html as htmllib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import List

import numpy as np
import pytest

import reportgen
from reportgen.cli import main
from reportgen.sections import model as model_sections
from tests.project import GOOD, make_project

EXTERNAL = re.compile(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:|//|ftp:)"""
                      r"""|url\(\s*["']?\s*(?:https?:|//)|@import""", re.IGNORECASE)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return make_project(tmp_path, checkpoints=2)


def build(spec: Path, tmp_path: Path, **kw) -> "reportgen.commands.build.Report":
    kw.setdefault("cache_dir", tmp_path / "cache")
    return reportgen.build(spec, **kw)


def test_build_writes_report_and_json(spec, tmp_path):
    report = build(spec, tmp_path)
    assert report.path == spec.parent / "site" / "index.html"
    data = json.loads(report.json_path.read_text())
    for key in ("reportgen", "spec_digest", "model", "sections", "findings", "timings"):
        assert key in data
    assert data["reportgen"] == reportgen.__version__
    assert len(data["spec_digest"]) == 64
    assert data["model"]["audit_checkpoint"] == "epoch_2"
    assert [c["label"] for c in data["model"]["checkpoints"]] == ["epoch_1", "epoch_2"]
    assert data["model"]["checkpoints"][0]["metrics"]["val_acc"] == pytest.approx(0.6)
    assert {"summary", "filters", "activations"} <= set(data["sections"])
    assert data["sections"]["filters"]["layer"] == "conv1"
    assert data["sections"]["filters"]["layer_auto"] is True
    assert set(data["timings"]) == set(data["sections"])
    html = report.path.read_text()
    assert "<title>tiny</title>" in html


def test_results_are_plain_numpy(spec, tmp_path):
    report = build(spec, tmp_path)

    def walk(obj):
        import torch
        assert not torch.is_tensor(obj)
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
    walk(report.results)
    weights = report.results["filters"]["filters"]["weights"]
    assert isinstance(weights, np.ndarray) and weights.shape == (4, 3, 3, 3)


def test_rebuild_is_byte_identical_with_and_without_cache(spec, tmp_path):
    first = build(spec, tmp_path).path.read_bytes()
    cached = build(spec, tmp_path)
    assert cached.path.read_bytes() == first
    assert set(cached.data["cached"]) == set(cached.data["sections"])
    fresh = build(spec, tmp_path, use_cache=False, out_dir=tmp_path / "other")
    assert fresh.path.read_bytes() == first
    assert fresh.data["cached"] == []


def test_cache_is_invalidated_by_new_weights(spec, tmp_path):
    build(spec, tmp_path)
    import torch
    ck = spec.parent / "ckpt" / "epoch_2.pt"
    state = torch.load(ck, weights_only=True)
    state["model_state_dict"]["conv1.weight"] += 1.0
    torch.save(state, ck)
    again = build(spec, tmp_path)
    assert again.data["cached"] == []


def test_only_builds_named_sections(spec, tmp_path):
    report = build(spec, tmp_path, only=["filters"])
    assert list(report.data["sections"]) == ["filters"]


def test_disabled_section_is_absent(tmp_path):
    spec = make_project(tmp_path, GOOD + "sections:\n  activations: false\n")
    report = build(spec, tmp_path)
    assert "activations" not in report.data["sections"]
    assert 'id="activations"' not in report.path.read_text()


def test_other_files_in_out_dir_are_left_alone(spec, tmp_path):
    out = spec.parent / "site"
    out.mkdir()
    (out / "CNAME").write_text("example.org\n")
    build(spec, tmp_path)
    assert (out / "CNAME").read_text() == "example.org\n"
    assert sorted(p.name for p in out.iterdir()) == ["CNAME", "index.html", "report.json"]


HOSTILE = """\
title: "<script>alert('title')</script>"
description: |
  # Review <img src=x onerror="alert('img')">
  <script>alert('desc')</script> [click](javascript:alert('link')) [ext](https://evil.example/x)
  ![pixel](https://tracker.example/p.png) <iframe src="https://evil.example"></iframe> **kept**
model:
  factory: tinynet:TinyNet
  kwargs: {num_classes: 3}
  input_size: [3, 16, 16]
checkpoints: [ckpt/*.pt]
probes: {images: [probes/*.png]}
classes: ["<script>alert('cls')</script>", "</style><b>x", "\\" onmouseover=\\"alert('q')"]
"""


class PageParts(HTMLParser):
    """A page as a browser splits it: code it would run, and text it would show."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.code: List[str] = []   # <script> bodies, on* handlers, javascript: URLs
        self.text: List[str] = []
        self._in_script = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        for key, value in attrs:
            if key.startswith("on") or (value or "").strip().lower().startswith("javascript:"):
                self.code.append(value or "")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        (self.code if self._in_script else self.text).append(data)


def test_page_parts_sees_injected_code():
    parts = PageParts("<p>&lt;script&gt;alert(1)&lt;/script&gt;</p><script>alert(2)</script>"
                      "<img src=x onerror=\"alert(3)\"><a href=\" javascript:alert(4)\">x</a>")
    assert parts.code == ["alert(2)", "alert(3)", " javascript:alert(4)"]
    assert parts.text == ["<script>alert(1)</script>", "x"]


def test_hostile_spec_cannot_inject_script(tmp_path):
    spec = make_project(tmp_path, HOSTILE)
    html = build(spec, tmp_path).path.read_text()
    parts = PageParts(html)
    # the hostile title and class names reach the page as text, and never as code
    assert "<script>alert('title')</script>" in parts.text
    assert "<script>alert('cls')</script>" in parts.text
    assert not [c for c in parts.code if "alert(" in c]
    for bad in ("<script>alert", "onerror=", "javascript:", "<iframe", "onmouseover=\"alert",
                "</style><b>", "tracker.example", "evil.example/x\""):
        assert bad not in html, bad
    assert "<strong>kept</strong>" in html
    assert "&lt;script&gt;alert(&#39;cls&#39;)&lt;/script&gt;" in html
    assert not EXTERNAL.search(html), EXTERNAL.search(html)


def test_user_theme_css_is_inlined_and_defanged(tmp_path):
    css = tmp_path / "brand.css"
    css.write_text("body { background: url('data:image/png;base64,AAAA'); --accent: #c00; }\n"
                   "</style><script>alert(1)</script>\n")
    spec = make_project(tmp_path, GOOD + "output: {theme: brand.css}\n")
    html = build(spec, tmp_path).path.read_text()
    assert "--accent: #c00" in html
    assert "</style><script>alert(1)" not in html
    assert not EXTERNAL.search(html)


def test_a_theme_that_would_fetch_is_refused(tmp_path, capsys):
    """Refused, not quietly edited (the issue's word): exit 2 naming the theme file and line."""
    (tmp_path / "brand.css").write_text("body { --accent: #c00; }\n@import url(https://fonts.example/x.css);\n")
    spec = make_project(tmp_path, GOOD + "output: {theme: brand.css}\n")
    assert main(["build", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "output.theme" in err and "brand.css: line 2: @import" in err
    assert not (tmp_path / "site").exists()


def test_dark_theme(tmp_path):
    spec = make_project(tmp_path, GOOD + "output: {theme: dark}\n")
    html = build(spec, tmp_path).path.read_text()
    assert "color-scheme: dark" in html


def test_a_failing_section_is_reported_and_the_rest_renders(spec, tmp_path, monkeypatch):
    def boom(self, ctx, options):
        raise RuntimeError("kaboom in filters")
    monkeypatch.setattr(model_sections.FiltersSection, "analyze", boom)
    report = build(spec, tmp_path, use_cache=False)
    html = report.path.read_text()
    assert "kaboom in filters" in html and 'id="summary"' in html
    assert "error" in report.data["sections"]["filters"]
    ids = [f["id"] for f in report.data["findings"]]
    assert "section-failed-filters" in ids
    assert main(["build", str(spec), "--quiet", "--no-cache", "--fail-on", "error"]) == 3


def test_fail_on_warning_exit_code(tmp_path, capsys, monkeypatch):
    spec = make_project(tmp_path)
    # the tiny net's 3x3 filters are under the noise test's floor: a warning is injected
    from reportgen.sections.base import Finding
    monkeypatch.setattr(model_sections.FiltersSection, "findings", lambda self, result, ctx: [Finding(
        id="noisy-filters", severity="warning", section="filters", title="injected", evidence="test")])
    assert main(["build", str(spec), "--quiet", "--fail-on", "warning"]) == 3
    assert main(["build", str(spec), "--quiet", "--fail-on", "error"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("index.html")


def test_python_api_accepts_a_dict(tmp_path, monkeypatch):
    make_project(tmp_path)
    import yaml
    data = yaml.safe_load(GOOD)
    monkeypatch.chdir(tmp_path)  # a dict's paths are relative to the working directory
    report = reportgen.build(data, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert report.path == tmp_path / "out" / "index.html" and report.path.exists()
    assert report.data["model"]["audit_checkpoint"] == "epoch_1"
    # a notebook shows the page itself, sandboxed in an iframe's srcdoc
    frame = re.fullmatch(r'<iframe title="tiny" sandbox="allow-scripts" srcdoc="([^"<>]*)" style="[^"]*"></iframe>',
                         report._repr_html_())
    assert frame, report._repr_html_()[:200]
    assert htmllib.unescape(frame.group(1)) == report.path.read_text()


def test_hostile_dataset_names_are_escaped_everywhere(tmp_path):
    """Class folders and file names reach top-k captions, embeddings tooltips and legends."""
    from PIL import Image
    evil = "<img src=x onerror=alert(9)>"
    rng = np.random.default_rng(1)
    for cls in (evil, "plain"):
        folder = tmp_path / "data" / cls
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                folder / f"{i}<svg onload=alert({i})>.png")
    spec = make_project(tmp_path, GOOD.replace("[cat, dog, bird]", f'["{evil}", plain, "x"]')
                        + "dataset: {root: data, limit: 6}\n")
    report = build(spec, tmp_path)
    html = report.path.read_text()
    assert "<img src=x" not in html and "<svg onload" not in html
    assert report.data["sections"]["topk"].get("error") is None, report.data["sections"]["topk"]
    assert report.data["sections"]["embeddings"].get("error") is None, report.data["sections"]["embeddings"]
    assert not EXTERNAL.search(html)

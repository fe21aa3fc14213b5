"""`reportgen publish`: the site's layout, its manifest, incremental and atomic publishing,
--keep, bad input, and the index page in a real browser (from file:// and under a sub-path)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import threading
import urllib.request
from pathlib import Path
from typing import Dict

import pytest

from reportgen.cli import main
from reportgen.commands.publish import apply_keep, default_id, slug
from tests.browser import BrowserSession, chromium_available, screenshot_path
from tests.published import build_reports, variant


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return build_reports(tmp_path_factory.mktemp("published"))


def _publish(*args) -> int:
    return main(["publish", *map(str, args)])


def tree(site: Path) -> Dict[str, str]:
    """Every file under ``site``, by relative path, as a digest of its bytes."""
    return {p.relative_to(site).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(site.rglob("*")) if p.is_file()}


def _ids(site: Path):
    return [r["id"] for r in json.loads((site / "manifest.json").read_text())["reports"]]


def test_site_holds_each_report_a_manifest_and_an_index(reports, tmp_path, capsys):
    site = tmp_path / "site"
    assert _publish(*reports.builds, reports.compare, "--site", site) == 0
    assert capsys.readouterr().out.strip() == str(site / "index.html")
    manifest = json.loads((site / "manifest.json").read_text())
    entries = {r["id"]: r for r in manifest["reports"]}
    assert manifest["reportgen"] and len(entries) == 4
    for folder in reports.builds + [reports.compare]:
        data = json.loads((folder / "report.json").read_text())
        rid = default_id(data)
        entry = entries[rid]
        assert {"id", "title", "kind", "path", "spec_digest", "model", "findings"} <= set(entry)
        assert entry["path"] == f"reports/{rid}/index.html"
        assert (site / entry["path"]).read_bytes() == (folder / "index.html").read_bytes()
        assert (site / "reports" / rid / "report.json").read_bytes() == (folder / "report.json").read_bytes()
        assert set(entry["findings"]) == {"error", "warning", "info"}
        assert sum(entry["findings"].values()) == len(data["findings"])
    v1, v2, v3 = (default_id(json.loads((b / "report.json").read_text())) for b in reports.builds)
    assert v1.startswith("tiny-v1-") and len(v1) == len("tiny-v1-") + 8
    compare = next(r for r in manifest["reports"] if r["kind"] == "compare")
    assert compare["title"] == "tiny v1 vs tiny v3" and compare["compares"] == {"base": v1, "new": v3}
    assert entries[v3]["findings"] == {"error": 1, "warning": 1, "info": 1}
    assert entries[v3]["metrics"]["val_acc"] == pytest.approx(0.8)


def test_index_is_self_contained_with_relative_links_only(reports, tmp_path):
    site = tmp_path / "site"
    hostile = variant(reports.builds[0], tmp_path / "hostile", title="<script>alert(1)</script> ![x](http://e.vil/x.png)")
    assert _publish(*reports.builds, reports.compare, hostile, "--site", site) == 0
    page = (site / "index.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    urls = re.findall(r"""(?:href|src|action)\s*=\s*["']([^"']*)""", page, flags=re.I)
    assert urls and all(u.startswith("reports/") and u.endswith("/index.html") for u in urls), urls
    assert "url(" not in page.replace("url(data:", "") and "@import" not in page
    assert page.count("<tr data-kind=") == 5
    assert "<svg" in page                              # the charts, drawn inline


def test_incremental_publishing_rewrites_only_its_folder_manifest_and_index(reports, tmp_path):
    site = tmp_path / "site"
    (tmp_path / "site").mkdir()
    (site / "CNAME").write_text("models.example.org\n")          # a user's file: left alone
    assert _publish(*reports.builds[:2], "--site", site) == 0
    before = tree(site)
    assert _publish(reports.builds[2], "--site", site) == 0
    after = tree(site)
    rid = _ids(site)[-1]
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert changed == ["index.html", "manifest.json", f"reports/{rid}/index.html", f"reports/{rid}/report.json"]
    # the same reports again: nothing changes, not even the manifest's published stamps
    assert _publish(*reports.builds, "--site", site) == 0
    assert tree(site) == after


def test_republishing_an_id_replaces_it(reports, tmp_path):
    site = tmp_path / "site"
    assert _publish(reports.builds[0], "--site", site, "--id", "main") == 0
    assert _publish(reports.builds[1], "--site", site, "--id", "main") == 0
    manifest = json.loads((site / "manifest.json").read_text())
    assert [(r["id"], r["title"]) for r in manifest["reports"]] == [("main", "tiny v2")]
    assert (site / "reports/main/report.json").read_bytes() == (reports.builds[1] / "report.json").read_bytes()
    assert sorted(p.name for p in (site / "reports").iterdir()) == ["main"]   # no staging folder left


def test_keep_drops_the_oldest_builds_but_never_one_a_kept_compare_links_to(reports, tmp_path):
    site = tmp_path / "site"
    v1, v2, v3 = reports.builds
    extra = [variant(v3, tmp_path / f"v{i}", title=f"tiny v{i}", digest=f"{i:064x}") for i in (4, 5)]
    # the compare links v1 (BASE) and v3 (NEW); v2 is the only build it does not need
    assert _publish(v1, v2, v3, reports.compare, *extra, "--site", site) == 0
    assert _publish(extra[-1], "--site", site, "--id", "latest", "--keep", "2") == 0
    ids = _ids(site)
    titles = {r["id"]: r["title"] for r in json.loads((site / "manifest.json").read_text())["reports"]}
    assert sorted(titles[i] for i in ids) == ["tiny v1", "tiny v1 vs tiny v3", "tiny v3", "tiny v5", "tiny v5"]
    assert sorted(p.name for p in (site / "reports").iterdir()) == sorted(ids)


def test_keep_policy_on_its_own():
    builds = [{"id": f"b{i}", "kind": "build"} for i in range(5)]
    compares = [{"id": "c0", "kind": "compare", "compares": {"base": "b0", "new": None}},
                {"id": "c1", "kind": "compare", "compares": {"base": "b1", "new": "b4"}}]
    dropped = apply_keep(builds + compares, keep=1)
    assert [r["id"] for r in dropped] == ["b0", "b2", "b3", "c0"]
    assert apply_keep(builds, None) == []


def test_slug():
    assert slug("ShapesNet demo: what a small CNN learned!") == "shapesnet-demo-what-a-small-cnn-learned"
    assert slug("Ünïcodé ✓") == "unicode" and slug("***") == "report" and len(slug("x" * 200)) == 48


@pytest.mark.parametrize("case", ["no-report-json", "foreign-json", "slash-id", "id-with-two", "bad-manifest",
                                  "site-is-file"])
def test_bad_input_is_exit_2_naming_the_file_and_writes_nothing(reports, tmp_path, capsys, case):
    site = tmp_path / "site"
    folder = reports.builds[0]
    args = [folder, "--site", site]
    named = None
    if case == "no-report-json":
        empty = tmp_path / "empty"
        empty.mkdir()
        args, named = [empty, "--site", site], empty / "report.json"
    elif case == "foreign-json":
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "index.html").write_text("<p>hi</p>")
        (foreign / "report.json").write_text('{"name": "not ours"}')
        args, named = [foreign, "--site", site], foreign / "report.json"
    elif case == "slash-id":
        args += ["--id", "../escape"]
        named = "--id"
    elif case == "id-with-two":
        args = [folder, reports.builds[1], "--site", site, "--id", "x"]
        named = "--id"
    elif case == "bad-manifest":
        site.mkdir()
        (site / "manifest.json").write_text('{"something": "else"}')
        named = site / "manifest.json"
    elif case == "site-is-file":
        site.write_text("a file")
        named = site
    before = tree(site) if site.is_dir() else None
    assert _publish(*args) == 2
    err = capsys.readouterr().err
    assert str(named) in err and "Traceback" not in err, err
    if before is None:
        assert not site.is_dir()
    else:
        assert tree(site) == before


# --------------------------------------------------------------------------- in a browser

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path: the site at /repo/ is a project page."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_every_link_resolves_under_a_sub_path(reports, tmp_path, served):
    site = tmp_path / "repo"
    assert _publish(*reports.builds, reports.compare, "--site", site) == 0
    base = f"{served}/repo/"
    page = urllib.request.urlopen(base).read().decode()
    links = set(re.findall(r'href="([^"]+)"', page))
    assert len(links) == 4
    for link in links:
        assert urllib.request.urlopen(urllib.parse.urljoin(base, link)).status == 200


@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="needs chromium + chromedriver")
def test_index_in_chromium_from_file_and_under_a_sub_path(reports, tmp_path, served):
    site = tmp_path / "repo"
    assert _publish(*reports.builds, reports.compare, "--site", site) == 0
    with BrowserSession(loopback=True) as browser:
        for name, url in (("file", (site / "index.html").resolve().as_uri()), ("subpath", f"{served}/repo/")):
            result = browser.check_url(url, screenshot_path(f"site-{name}.png", tmp_path), height=900)
            assert result.requests == [] and result.console_errors == [], (name, result)
            assert result.title == "reportgen reports"
            d = browser.driver
            assert d.execute_script("return document.querySelectorAll('#reports tbody tr').length") == 4
            # filter, then sort: the script works
            d.execute_script("var f = document.getElementById('filter'); f.value = 'vs';"
                             "f.dispatchEvent(new Event('input'));")
            assert d.execute_script("return document.querySelectorAll('#reports tbody tr:not([hidden])').length") == 1
            d.execute_script("document.querySelector('th[data-key=findings]').click()")
            first = d.execute_script("return document.querySelector('#reports tbody tr').id")
            assert first.startswith("r-tiny-v1-"), first        # no findings sorts first, ascending
            hrefs = d.execute_script("return Array.from(document.querySelectorAll('#reports a')).map(a => a.href)")
            assert all(h.startswith(url.rsplit("/", 1)[0] + "/reports/") for h in hrefs), hrefs

"""`publish` against what a pull request can put in front of it (issue 15, SPEC.md "Trust").

Each defect found by trying it as an attacker would has a test here that failed
before the fix: a crafted digest or ID must not write or delete outside the
site, a symlink is never followed, a bad report among good ones publishes
nothing, a NaN cannot break the site for every later publish, two publishes at
once both land, and a foreign folder is not overwritten. The property tests at
the end generate report.json files, manifests and IDs: each publish either
succeeds with the site consistent or exits 2 with nothing changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reportgen.cli import main
from reportgen.commands.publish import default_id, publish
from reportgen.errors import InputError
from reportgen.report import read_manifest, read_report, validate_report
from tests.published import build_reports, variant

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return build_reports(tmp_path_factory.mktemp("trust"))


def tree(root: Path) -> Dict[str, str]:
    """Every file and link under ``root`` (links by target), as digests: what "nothing changed" means."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def consistent(site: Path) -> None:
    """Every manifest entry's folder exists with both files, and its report.json is valid."""
    manifest = read_manifest(site)
    assert manifest is not None
    for entry in manifest["reports"]:
        folder = site / "reports" / entry["id"]
        assert folder.is_dir() and not folder.is_symlink(), entry["id"]
        data = read_report(folder)
        page = (folder / "index.html").read_bytes()
        assert data.get("page_sha256") in (None, hashlib.sha256(page).hexdigest())


def _publish(*args: Any) -> int:
    return main(["publish", *map(str, args)])


# --------------------------------------------------------------------------- the defects

@pytest.mark.parametrize("key, value", [("spec_digest", "/../../x"), ("inputs_digest", "/../../x"),
                                        ("inputs_digest", "--> <img src=x>")])
def test_a_crafted_digest_cannot_write_outside_the_site(reports, tmp_path, capsys, key, value):
    crafted = variant(reports.builds[0], tmp_path / "crafted", **{key: value})
    site = tmp_path / "deep" / "er" / "site"
    before = tree(tmp_path)
    assert _publish(crafted, "--site", site) == 2
    assert f"key {key}" in capsys.readouterr().err
    assert tree(tmp_path) == before and not site.exists()


def test_a_manifest_id_cannot_make_keep_delete_outside_the_site(reports, tmp_path, capsys):
    site, victim = tmp_path / "site", tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    assert _publish(reports.builds[0], "--site", site) == 0
    manifest = json.loads((site / "manifest.json").read_text())
    manifest["reports"].insert(0, dict(manifest["reports"][0], id="../../victim",
                                       path="reports/../../victim/index.html"))
    (site / "manifest.json").write_text(json.dumps(manifest))
    before = tree(tmp_path)
    assert _publish(reports.builds[1], "--site", site, "--keep", "1") == 2
    assert "reports[0].id" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_a_symlinked_file_in_a_report_folder_is_never_published(reports, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("AWS_SECRET=hunter2")
    folder = variant(reports.builds[0], tmp_path / "linked")
    (folder / "index.html").unlink()
    (folder / "index.html").symlink_to(secret)
    assert _publish(folder, "--site", tmp_path / "site") == 2
    assert "symlink" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def test_symlinks_in_the_site_are_never_written_through(reports, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    site = tmp_path / "site"
    assert _publish(reports.builds[0], "--site", site) == 0
    rid = default_id(json.loads((reports.builds[1] / "report.json").read_text()))
    (site / "reports" / rid).symlink_to(outside, target_is_directory=True)
    assert _publish(reports.builds[1], "--site", site) == 0
    assert not (site / "reports" / rid).is_symlink() and list(outside.iterdir()) == []
    for name in ("reports", "index.html"):
        twin = tmp_path / f"twin-{name}"
        shutil.copytree(site, twin, symlinks=True)
        target = twin / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        target.symlink_to(outside)
        before = tree(tmp_path)
        assert _publish(reports.builds[2], "--site", twin) == 2
        assert "symlink" in capsys.readouterr().err and tree(tmp_path) == before
    link = tmp_path / "site-link"
    link.symlink_to(site, target_is_directory=True)
    assert _publish(reports.builds[2], "--site", link) == 2


def test_good_and_malformed_together_publish_nothing_and_the_good_one_lands_later(reports, tmp_path):
    site = tmp_path / "site"
    bad = variant(reports.builds[1], tmp_path / "bad")
    (bad / "report.json").write_text((bad / "report.json").read_text().replace('"findings": [', '"findings": [1, ', 1))
    assert _publish(reports.builds[0], bad, "--site", site) == 2
    assert not site.exists()
    assert _publish(reports.builds[0], "--site", site) == 0
    assert [r["id"] for r in read_manifest(site)["reports"]] == [default_id(read_report(reports.builds[0]))]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "9" * 400, "1e400"])
def test_a_non_finite_or_huge_number_is_exit_2_and_the_site_keeps_working(reports, tmp_path, capsys, number):
    site = tmp_path / "site"
    assert _publish(reports.builds[0], "--site", site) == 0
    bad = variant(reports.builds[1], tmp_path / "bad")
    text = (bad / "report.json").read_text()
    (bad / "report.json").write_text(text.replace('"parameters": ', f'"parameters": {number}, "was": ', 1))
    before = tree(site)
    assert _publish(bad, "--site", site) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert tree(site) == before
    assert _publish(reports.builds[2], "--site", site) == 0     # every later publish still works


def test_a_broken_manifest_is_exit_2_naming_its_key_not_a_crash(reports, tmp_path, capsys):
    site = tmp_path / "site"
    assert _publish(reports.builds[0], "--site", site) == 0
    text = (site / "manifest.json").read_text()
    (site / "manifest.json").write_text(text.replace('"resolved": 0', '"resolved": NaN', 1))
    assert _publish(reports.builds[1], "--site", site) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "reports[0].resolved" in err and "Traceback" not in err


def test_two_publishes_at_once_both_land(reports, tmp_path):
    site = tmp_path / "site"
    folders = [variant(reports.builds[0], tmp_path / f"r{i}", title=f"racer {i}") for i in range(6)]
    code = "import sys; from reportgen.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for round_ in range(3):
        pair = folders[2 * round_: 2 * round_ + 2]
        procs = [subprocess.Popen([sys.executable, "-c", code, "publish", str(f), "--site", str(site)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for f in pair]
        assert [p.wait(timeout=120) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    titles = sorted(r["title"] for r in read_manifest(site)["reports"])
    assert titles == [f"racer {i}" for i in range(6)]
    consistent(site)


def test_someone_elses_folder_is_refused_unless_forced(reports, tmp_path, capsys):
    site = tmp_path / "docs"
    site.mkdir()
    (site / "index.html").write_text("<h1>our project's docs</h1>")
    (site / "guide.html").write_text("guide")
    before = tree(site)
    assert _publish(reports.builds[0], "--site", site) == 2
    assert "--force" in capsys.readouterr().err and tree(site) == before
    assert _publish(reports.builds[0], "--site", site, "--force") == 0
    assert (site / "guide.html").read_text() == "guide"
    consistent(site)


def test_a_new_model_from_an_unchanged_spec_gets_its_own_entry(reports, tmp_path):
    site = tmp_path / "site"
    data = read_report(reports.builds[0])
    retrained = variant(reports.builds[0], tmp_path / "retrained", inputs_digest="f" * 64)
    assert read_report(retrained)["spec_digest"] == data["spec_digest"]
    assert _publish(reports.builds[0], "--site", site) == 0
    assert _publish(retrained, "--site", site) == 0
    assert len(read_manifest(site)["reports"]) == 2


def test_a_report_whose_manifest_entry_would_change_is_not_unchanged(reports, tmp_path):
    site = tmp_path / "site"
    assert _publish(reports.builds[0], "--site", site) == 0
    rid = read_manifest(site)["reports"][0]["id"]
    manifest = json.loads((site / "manifest.json").read_text())
    manifest["reports"][0]["title"] = "edited"
    (site / "manifest.json").write_text(json.dumps(manifest))
    done = publish([reports.builds[0]], site)
    assert done.written == [rid] and read_manifest(site)["reports"][0]["title"] != "edited"


def test_an_interrupted_build_pair_is_refused(reports, tmp_path, capsys):
    folder = variant(reports.builds[0], tmp_path / "mixed")
    (folder / "index.html").write_text((folder / "index.html").read_text() + "<!-- another build -->")
    assert _publish(folder, "--site", tmp_path / "site") == 2
    assert "not the page this report.json was written with" in capsys.readouterr().err


def test_summary_and_baseline_read_through_the_same_validator(reports, tmp_path, capsys):
    bad = variant(reports.builds[0], tmp_path / "bad", kind="<img src=x>")
    assert main(["summary", str(bad)]) == 2
    assert "key kind" in capsys.readouterr().err
    with pytest.raises(InputError, match="key kind"):
        from reportgen.commands.baseline import load_baseline
        load_baseline(bad)


# --------------------------------------------------------------------------- properties

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
KEYS = ["title", "kind", "spec_digest", "inputs_digest", "reportgen", "findings", "resolved", "model", "base",
        "new", "page_sha256", "sections", "verdict", "comparison"]
FINDING_KEYS = ["id", "severity", "title", "evidence", "state", "section", "layer"]
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


def _snapshot(root: Path, site: Path) -> Dict[str, str]:
    """Everything under ``root`` but the site."""
    inside = site.relative_to(root).as_posix() + "/"
    return {k: v for k, v in tree(root).items() if not k.startswith(inside)}


def _attempt(reports_root: Path, site: Path, run) -> None:
    """Run ``run()``: it succeeds with the site consistent and nothing outside it changed, or it is an
    InputError (exit 2) with nothing changed anywhere."""
    before_site, before_rest = tree(site) if site.exists() else None, _snapshot(reports_root, site)
    try:
        run()
    except InputError:
        assert (tree(site) if site.exists() else None) == before_site
    else:
        consistent(site)
    assert _snapshot(reports_root, site) == before_rest


def _mutated(src: Path, root: Path, mutate) -> Path:
    """A copy of report folder ``src`` whose report.json went through ``mutate(data)``."""
    folder = variant(src, root / "r")
    data = json.loads((folder / "report.json").read_text())
    mutate(data)
    (folder / "report.json").write_text(json.dumps(data))
    return folder


@PROPERTY
@given(key=st.sampled_from(KEYS), value=JSON)
def test_property_any_report_json_publishes_consistently_or_is_exit_2(reports, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = _mutated(reports.builds[1], root, lambda data: data.update({key: value}))
        site = root / "site"
        publish([reports.builds[0]], site)
        _attempt(root, site, lambda: publish([folder], site))


@PROPERTY
@given(key=st.sampled_from(FINDING_KEYS), value=JSON)
def test_property_any_finding_publishes_consistently_or_is_exit_2(reports, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = _mutated(reports.builds[2], root, lambda data: data["findings"][0].update({key: value}))
        _attempt(root, root / "site", lambda: publish([folder], root / "site"))


ENTRY = st.fixed_dictionaries({
    "id": st.one_of(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True), st.text(max_size=12),
                    st.sampled_from(["../../victim", "..", ".", "a/b", "/abs"])),
    "kind": st.sampled_from(["build", "compare", "other"]),
}, optional={"path": st.text(max_size=30), "findings": JSON, "metrics": JSON, "compares": JSON, "title": JSON,
             "spec_digest": JSON, "published": JSON})


@PROPERTY
@given(entries=st.lists(ENTRY, max_size=4), keep=st.one_of(st.none(), st.integers(1, 3)))
def test_property_any_manifest_publishes_consistently_or_is_exit_2(reports, entries, keep):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = root / "site"
        (root / "victim").mkdir()
        (root / "victim" / "index.html").write_text("not yours")
        site.mkdir()
        for e in entries:
            e.setdefault("path", f"reports/{e['id']}/index.html")
            folder = site / "reports" / str(e["id"])
            try:
                if folder.resolve().is_relative_to((site / "reports").resolve()):
                    folder.mkdir(parents=True, exist_ok=True)
                    for name in ("index.html", "report.json"):
                        shutil.copyfile(reports.builds[0] / name, folder / name)
            except (OSError, ValueError):
                pass
        (site / "manifest.json").write_text(json.dumps({"reportgen": "0", "reports": entries}))
        _attempt(root, site, lambda: publish([reports.builds[1]], site, keep=keep))


@PROPERTY
@given(rid=st.one_of(st.text(max_size=120), st.from_regex(r"[a-z0-9][a-z0-9._-]{0,110}", fullmatch=True)))
def test_property_any_id_publishes_inside_the_site_or_is_exit_2(reports, rid):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = root / "nest" / "site"
        _attempt(root, site, lambda: publish([reports.builds[0]], site, report_id=rid))
        if site.exists():
            assert (site / "reports" / rid / "index.html").is_file()


@PROPERTY
@given(value=JSON)
def test_property_the_validator_returns_or_raises_input_error(value):
    for data in (value, {"reportgen": "1", "findings": [], "kind": "compare", "base": value, "new": value},
                 {"reportgen": "1", "findings": [value]}):
        try:
            validate_report(data)
        except InputError:
            pass

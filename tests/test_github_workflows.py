"""The GitHub workflows and the composite action users copy: GitHub's schemas (as vendored by
check-jsonschema, offline), actionlint where a binary is on PATH, and the gh-pages publishing
steps run for real against a temporary git repository standing in for GitHub."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests.published import build_reports

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_configs" / "github").glob("*.yml"))
ACTION = REPO / "action.yml"
PUBLISH_STEPS = ("pages-checkout", "publish")


def _check_jsonschema(schema: str, files: List[Path]) -> subprocess.CompletedProcess:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is in the test extra")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def test_there_are_workflows_for_push_and_pull_request():
    names = {p.name for p in WORKFLOWS}
    assert {"publish-pages.yml", "publish-pages-artifact.yml", "pr-review.yml"} <= names
    triggers = {p.name: yaml.load(p.read_text(), Loader=yaml.BaseLoader)["on"] for p in WORKFLOWS}
    assert "push" in triggers["publish-pages.yml"] and "pull_request" in triggers["pr-review.yml"]


def test_workflows_match_githubs_schema():
    result = _check_jsonschema("vendor.github-workflows", WORKFLOWS)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr


def test_action_matches_githubs_schema():
    result = _check_jsonschema("vendor.github-actions", [ACTION])
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="no actionlint binary on PATH")
def test_actionlint():
    result = subprocess.run(["actionlint", *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _run_blocks(path: Path):
    data = yaml.safe_load(path.read_text())
    jobs = data["jobs"].values() if "jobs" in data else [data["runs"]]
    return [(s.get("name") or s.get("id"), s["run"]) for job in jobs for s in job["steps"] if "run" in s]


@pytest.mark.parametrize("path", WORKFLOWS + [ACTION], ids=lambda p: p.name)
def test_every_run_block_is_valid_bash(path):
    blocks = _run_blocks(path)
    assert blocks
    for name, script in blocks:
        script = re.sub(r"\$\{\{.*?\}\}", "EXPR", script)      # GitHub expressions: filled in before bash runs
        done = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, f"{path.name}: {name}: {done.stderr}"


# --------------------------------------------------------------------------- the publishing steps

def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _steps(workflow: Path):
    data = yaml.safe_load(workflow.read_text())
    job = data["jobs"]["publish"]
    steps = [s for s in job["steps"] if s.get("id") in PUBLISH_STEPS]
    assert [s["id"] for s in steps] == list(PUBLISH_STEPS)
    return data.get("env", {}), steps


def _run_publish_job(origin: Path, work: Path, report: Path, sha: str, bin_dir: Path) -> str:
    """What the publish job does on a fresh runner: clone (actions/checkout), build (here: copy
    a built report into build/report), then the workflow's own checkout and publish steps."""
    _git("clone", "-q", origin.as_uri(), str(work), cwd=work.parent)
    shutil.copytree(report, work / "build" / "report")
    workflow_env, steps = _steps(REPO / "example_configs" / "github" / "publish-pages.yml")
    out = []
    for step in steps:
        env = {**os.environ, **{k: str(v) for k, v in workflow_env.items()},
               **{k: str(v) for k, v in step.get("env", {}).items()},
               "GITHUB_SHA": sha, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(REPO), "GIT_TERMINAL_PROMPT": "0"}
        # GitHub runs `run:` with bash --noprofile --norc -eo pipefail
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300)
        out.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"step {step['id']} failed:\n{done.stdout}\n{done.stderr}"
    return "\n".join(out)


@pytest.fixture
def reportgen_on_path(tmp_path) -> Path:
    """A `reportgen` command on PATH that runs this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "reportgen"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reportgen "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _tree(origin: Path, ref: str) -> List[str]:
    return sorted(_git("ls-tree", "-r", "--name-only", ref, cwd=origin).split())


def test_gh_pages_publishing_steps_commit_only_what_changed(tmp_path, reportgen_on_path):
    reports = build_reports(tmp_path / "reports")
    origin = tmp_path / "origin.git"
    _git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    seed = tmp_path / "seed"
    _git("init", "-q", "-b", "main", str(seed), cwd=tmp_path)
    (seed / "README.md").write_text("a model\n")
    for args in (("add", "README.md"), ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"),
                 ("push", "-q", origin.as_uri(), "main")):
        _git(*args, cwd=seed)

    # first publish: creates the gh-pages branch
    _run_publish_job(origin, tmp_path / "run1", reports.builds[0], "a" * 40, reportgen_on_path)
    ids = [r["id"] for r in json.loads(_git("show", "gh-pages:manifest.json", cwd=origin))["reports"]]
    assert _tree(origin, "gh-pages") == [".nojekyll", "index.html", "manifest.json",
                                         f"reports/{ids[0]}/index.html", f"reports/{ids[0]}/report.json"]
    # second publish, another report: one small commit
    _run_publish_job(origin, tmp_path / "run2", reports.builds[1], "b" * 40, reportgen_on_path)
    ids = [r["id"] for r in json.loads(_git("show", "gh-pages:manifest.json", cwd=origin))["reports"]]
    changed = sorted(_git("diff", "--name-only", "gh-pages~1", "gh-pages", cwd=origin).split())
    print("changed by the second publish:", changed)
    assert changed == ["index.html", "manifest.json", f"reports/{ids[1]}/index.html", f"reports/{ids[1]}/report.json"]
    assert _git("log", "-1", "--format=%s", "gh-pages", cwd=origin).strip() == "reportgen: publish bbbbbbbb"
    # the same report again: nothing to commit
    log = _run_publish_job(origin, tmp_path / "run3", reports.builds[1], "c" * 40, reportgen_on_path)
    assert "The site did not change." in log
    assert _git("rev-list", "--count", "gh-pages", cwd=origin).strip() == "2"
    assert _git("rev-list", "--count", "main", cwd=origin).strip() == "1"      # main untouched

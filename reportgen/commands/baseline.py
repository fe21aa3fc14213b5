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

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from reportgen.report import SEVERITIES, STATES, read_report, severity_rank


def load_baseline(path: Union[str, Path]) -> Dict[str, Any]:
    """The previous report.json, validated; InputError (exit 2) naming the file and key otherwise."""
    return read_report(path, "baseline")


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
                                           -severity_rank(f["severity"]), f.get("section", ""), f["id"]))


# --fail-on's levels: a severity above info, or (new-) only the findings new since the baseline
FAIL_ON = [*SEVERITIES[1:], *(f"new-{s}" for s in SEVERITIES[1:])]


def gate_tripped(findings: Sequence[Dict[str, Any]], level: Optional[str]) -> List[Dict[str, Any]]:
    """The findings that trip ``--fail-on level`` (warning, error, new-warning, new-error)."""
    if not level:
        return []
    only_new = level.startswith("new-")
    threshold = severity_rank(level[4:] if only_new else level)
    return [f for f in findings if severity_rank(f["severity"]) >= threshold
            and (not only_new or f.get("state", "new") == "new")]

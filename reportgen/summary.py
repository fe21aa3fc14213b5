"""``reportgen summary REPORT``: a report.json as GitHub-flavoured Markdown, for a PR comment
or ``$GITHUB_STEP_SUMMARY``.

It opens with ``<!-- reportgen:ID -->`` so a workflow can find its own comment
and update it instead of adding another, then gives a one-line verdict, the
findings with their states, the key numbers and, for a compare, the largest
changes. GitHub refuses comments over 65,536 characters: the least important
rows go first (unchanged info findings before new errors) and the text says
how many were left out. No images: GitHub strips ``data:`` URIs and a
third-party upload leaks the model; ``--link`` points at the published report.
Every text from the report is escaped, so a title cannot inject Markdown,
HTML or an image.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from reportgen.baseline import SEVERITIES, order
from reportgen.publish import default_id, finding_counts, key_metrics, title_of

GITHUB_LIMIT = 65_536
CELL_LIMIT = 400                  # characters of one table cell (evidence can be long)
LARGEST_CHANGES = 10
STATE_ORDER = ("new", "updated", "resolved", "unchanged")
ICONS = {"error": "❌", "warning": "⚠️", None: "✅"}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|!~#])")
_URI_SCHEME = re.compile(r"(?i)\b(data|javascript):")


def md(text: Any, limit: int = CELL_LIMIT) -> str:
    """Plain text safe in a Markdown table cell: no markup, no HTML, no image, one line."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[:limit - 1] + "…"
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _URI_SCHEME.sub(r"\1&#58;", s)       # shown as "data:", never a link or an image source


def code(text: Any, limit: int = 120) -> str:
    """A name (a layer) as a code span in a table cell: shown verbatim, so only the span's own
    delimiter and the cell's pipe are neutralized."""
    s = " ".join(str(text).split())[:limit].replace("`", "'").replace("|", "\\|")
    return f"`{s}`"


def _num(value: Any) -> str:
    from reportgen.render.site import metric_text

    return metric_text("", value)


def ordered_findings(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Findings (with states) and resolved ones, most important first."""
    rows = [dict(f, state=f.get("state", "new")) for f in data["findings"]]
    rows += [dict(f, state="resolved") for f in data.get("resolved") or []]
    return order(rows, STATE_ORDER)


def _has_states(data: Dict[str, Any]) -> bool:
    return data.get("kind") == "compare" or bool(data.get("baseline"))


def verdict_line(data: Dict[str, Any]) -> str:
    findings = data["findings"]
    states = _has_states(data)
    judged = [f for f in findings if f.get("state", "new") == "new"] if states else findings
    worst = max((f["severity"] for f in judged), key=SEVERITIES.index, default=None)
    icon = ICONS.get(worst, ICONS[None])
    counts = finding_counts(judged)
    what = ", ".join(f"{n} {sev}" for sev, n in reversed(counts.items()) if n)
    noun = "new finding" if states else "finding"
    line = f"{len(judged)} {noun}(s): {what}" if judged else f"no {noun}s"
    if states:
        others = [(s, sum(1 for f in findings if f.get("state") == s)) for s in ("updated", "unchanged")]
        others.append(("resolved", len(data.get("resolved") or [])))
        line += "".join(f"; {n} {s}" for s, n in others if n)
    if data.get("kind") == "compare" and data.get("verdict"):
        line = f"{md(data['verdict'][0], 600)} {line[0].upper()}{line[1:]}."
    else:
        line = f"{line[0].upper()}{line[1:]}."
    return f"{icon} {line}"


def finding_rows(data: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(header lines, one row per finding)."""
    states = _has_states(data)
    head = (["| State | Severity | Finding | Evidence | Where |", "| --- | --- | --- | --- | --- |"] if states
            else ["| Severity | Finding | Evidence | Where |", "| --- | --- | --- | --- |"])
    rows = []
    for f in ordered_findings(data):
        where = md(f.get("section", "")) + (f" · {code(f['layer'])}" if f.get("layer") else "")
        cells = ([f"**{f['state']}**" if f["state"] == "new" else f["state"]] if states else [])
        cells += [f["severity"], md(f["title"]), md(f["evidence"]), where]
        rows.append("| " + " | ".join(cells) + " |")
    return head, rows


def number_rows(data: Dict[str, Any]) -> List[str]:
    metrics = key_metrics(data)
    if not metrics:
        return []
    return ["| Number | Value |", "| --- | --: |"] + [f"| {md(k)} | {_num(v)} |" for k, v in metrics.items()]


def change_tables(data: Dict[str, Any]) -> List[Tuple[List[str], List[str]]]:
    """A compare's largest changes as (header lines, rows) tables: the layers whose weights moved
    most (with their CKA), then the classes whose accuracy fell most."""
    if data.get("kind") != "compare":
        return []
    c = data.get("comparison") or {}

    def moved(item):
        v = item[1]
        return (-(v.get("weight_change") or 0), v.get("cka") if v.get("cka") is not None else 2)

    top = sorted((c.get("layers") or {}).items(), key=moved)[:LARGEST_CHANGES]
    per_class = (c.get("predictions") or {}).get("per_class") or {}
    drops = sorted(((k, v["new_accuracy"] - v["base_accuracy"]) for k, v in per_class.items()
                    if v.get("new_accuracy") is not None and v.get("base_accuracy") is not None),
                   key=lambda kv: kv[1])[:LARGEST_CHANGES]
    tables = [(["| Layer | Weight change | CKA (BASE vs NEW) |", "| --- | --: | --: |"],
               [f"| {code(name)} | {_pct(v.get('weight_change'))} | {_num(v.get('cka'))} |"
                for name, v in top]),
              (["| Class | Accuracy change |", "| --- | --: |"],
               [f"| {md(k, 120)} | {d:+.1%} |" for k, d in drops])]
    return [(h, rows) for h, rows in tables if rows]


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.1%}"


def summary_markdown(data: Dict[str, Any], report_id: Optional[str] = None, link: Optional[str] = None,
                     limit: int = GITHUB_LIMIT) -> str:
    """The Markdown for ``data`` (a report.json), at most ``limit`` characters."""
    findings = finding_rows(data)
    changes = change_tables(data)
    n_changes = sum(len(rows) for _, rows in changes)
    for keep_rows, keep_changes in _shrinking(len(findings[1]), n_changes):
        text = _compose(data, report_id, link, findings, keep_rows, changes, keep_changes)
        if len(text) <= limit:
            return text
    raise ValueError(f"a summary cannot fit in {limit} characters")   # pragma: no cover (cells are bounded)


def _shrinking(n_rows: int, n_changes: int):
    """(finding rows, change rows) to keep: all, then fewer change rows, then fewer findings
    (the least important last rows first)."""
    yield n_rows, n_changes
    for k in range(n_changes - 1, -1, -1):
        yield n_rows, k
    k = n_rows
    while k > 0:
        k -= max(1, k // 20)
        yield k, 0


def _table(title: str, head: List[str], rows: List[str]) -> List[str]:
    if not rows:
        return []
    return (["", f"**{title}**"] if title else []) + [""] + head + rows


def _compose(data, report_id, link, findings, keep_rows, changes, keep_changes) -> str:
    head, rows = findings
    out = [f"<!-- reportgen:{report_id or default_id(data)} -->",
           f"### reportgen {data.get('kind', 'build')}: {md(title_of(data), 300)}", "", verdict_line(data)]
    if link:
        out += ["", f"[Full report]({_url(link)})"]
    out += _table("Findings", head, rows[:keep_rows])
    numbers = number_rows(data)
    out += _table("Key numbers", numbers[:2], numbers[2:])
    budget = keep_changes
    for i, (change_head, change) in enumerate(changes):
        out += _table("Largest changes" if i == 0 else "", change_head, change[:budget])
        budget = max(0, budget - len(change))
    left = len(rows) - keep_rows + sum(len(c) for _, c in changes) - keep_changes
    if left:
        out += ["", f"_{left} row(s) left out to stay within GitHub's {GITHUB_LIMIT:,}-character comment limit; "
                    "the full report has them all._"]
    return "\n".join(out) + "\n"


def _url(link: str) -> str:
    return link.replace(" ", "%20").replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E")

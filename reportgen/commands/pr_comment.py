"""``reportgen summary REPORT``: a report.json as GitHub-flavoured Markdown, for a PR comment
or ``$GITHUB_STEP_SUMMARY``.

It opens with ``<!-- reportgen:ID -->`` so a workflow can find its own comment
and update it instead of adding another, then gives a one-line verdict, the
findings with their states, the key numbers and, for a compare, the largest
changes. GitHub refuses comments over 65,536 characters: every table is cut
from its end, the last table first (largest changes, then key numbers, then
findings: unchanged info findings go before new errors), and the text says how
many rows were left out. Every line and cell is bounded, so the marker, the
title and the verdict always fit. No images: GitHub strips ``data:`` URIs and a
third-party upload leaks the model; ``--link`` points at the published report.

The text is safe on GitHub (SPEC.md, "Trust"), whatever the report.json says:
every text from the report is escaped, so it cannot inject Markdown, HTML or an
image; URLs, ``www.`` names, e-mail addresses, ``@login``, ``#123`` and ``GH-123`` get an
invisible WORD JOINER so GitHub neither links them nor notifies anyone; ``kind``,
``state`` and ``severity`` are their own words or are shown escaped; the marker
holds only a checked ID, and no field can write ``-->``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence

from reportgen.commands.baseline import order
from reportgen.commands.publish import counts_text, default_id, key_metrics, title_of
from reportgen.report import KINDS, SEVERITIES, check_id, is_id, worst_finding

GITHUB_LIMIT = 65_536
MIN_LIMIT = 1_000                 # the marker and a cut title always fit
CELL_LIMIT = 400                  # characters of one table cell (evidence can be long)
NAME_LIMIT = 120                  # a layer or class name
TITLE_LIMIT = 300
VERDICT_LIMIT = 600
WORD_LIMIT = 40                   # a number, or a kind/state/severity that is not one of ours
LARGEST_CHANGES = 10
STATE_ORDER = ("new", "updated", "resolved", "unchanged")
ICONS = {"error": "❌", "warning": "⚠️", None: "✅"}
WORD_JOINER = "\u2060"            # invisible; no URL, domain or login character
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|!~#])")
_URI_SCHEME = re.compile(r"(?i)\b(data|javascript):")
# what GitHub turns into a link or a notification: cmark-gfm's autolinks (scheme://, www., e-mail
# addresses, mailto: and xmpp: ones), @login and @org/team mentions, #123 and GH-123 issue references
_LINK_BAIT = re.compile(r"(?i)@|:(?=//)|www(?=\.)|#(?=\d)|gh(?=-\d)")


def _str(value: Any) -> str:
    try:
        return str(value)
    except ValueError:                     # an int past Python's digit limit
        return "(too long to show)"


def plain(text: str) -> str:
    """``text`` as GitHub shows it but links and notifies nothing: a WORD JOINER after each ``@``,
    ``:`` of ``://``, ``www`` of ``www.``, ``#`` of ``#1`` and ``GH`` of ``GH-1``."""
    return _LINK_BAIT.sub(lambda m: m.group() + WORD_JOINER, text)


def md(text: Any, limit: int = CELL_LIMIT) -> str:
    """Plain text safe in a Markdown table cell: one line of at most ``limit`` characters
    (before escaping), no markup, no HTML, no image, no link, no mention."""
    s = " ".join(_str(text).split())
    if len(s) > limit:
        s = s[:limit - 1] + "…"
    s = plain(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _URI_SCHEME.sub(r"\1&#58;", s)       # shown as "data:", never a link or an image source


def code(text: Any, limit: int = NAME_LIMIT) -> str:
    """A name (a layer) as a code span in a table cell: shown verbatim, so only the span's own
    delimiter, the cell's pipe and ``-->`` are neutralized (and link bait, should the span break)."""
    s = plain(" ".join(_str(text).split())[:limit])
    s = s.replace("`", "'").replace("|", "\\|").replace("->", f"-{WORD_JOINER}>")
    return f"`{s}`"


def shown(value: Any, allowed: Sequence[str]) -> str:
    """A kind, state or severity: itself when it is one of ``allowed``, anything else escaped."""
    return value if isinstance(value, str) and value in allowed else md(value, WORD_LIMIT)


def check_marker_id(report_id: Any) -> str:
    """``--id``: a report ID as SPEC.md has it, so the marker stays one HTML comment whatever the ID."""
    return check_id(report_id if isinstance(report_id, str) else repr(report_id))


def default_marker_id(data: Dict[str, Any]) -> str:
    """The report's publish ID: made only of a slug and hex digits, whatever the report holds."""
    rid = default_id(data)
    return rid if is_id(rid) else "report"


def _finite(value: Any) -> Optional[float]:
    """A report number as a float; None for anything else (null, NaN, text, an int past float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _num(value: Any) -> str:
    """A number as the report pages write it; an int too large for that in powers of ten."""
    from reportgen.render.site import metric_text

    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 15:
        try:
            value = float(value)
        except OverflowError:
            e = int(math.log10(abs(value)))
            return f"{'-' if value < 0 else ''}{abs(value) / 10 ** e:.3g}e+{e}"
    return md(metric_text("", value), WORD_LIMIT)


def _pct(value: Any, sign: str = "") -> str:
    f = _finite(value)
    if f is None:
        return "–"
    return f"{f:{sign}.1%}" if abs(f) < 1e4 else f"{f * 100:{sign}.3g}%"


class Table(NamedTuple):
    caption: str                  # "" for one that continues the table above it
    head: List[str]
    rows: List[str]


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
    worst = (worst_finding(judged) or {}).get("severity")
    icon = ICONS.get(worst, ICONS[None])
    what = counts_text(judged)
    noun = "new finding" if states else "finding"
    line = f"{len(judged)} {noun}(s): {what}" if judged else f"no {noun}s"
    if states:
        others = [(s, sum(1 for f in findings if f.get("state") == s)) for s in ("updated", "unchanged")]
        others.append(("resolved", len(data.get("resolved") or [])))
        line += "".join(f"; {n} {s}" for s, n in others if n)
    verdict = data.get("verdict")
    if data.get("kind") == "compare" and verdict:
        first = verdict[0] if isinstance(verdict, list) else verdict
        line = f"{md(first, VERDICT_LIMIT)} {line[0].upper()}{line[1:]}."
    else:
        line = f"{line[0].upper()}{line[1:]}."
    return f"{icon} {line}"


def finding_table(data: Dict[str, Any]) -> Table:
    """One row per finding, most important first."""
    states = _has_states(data)
    head = (["| State | Severity | Finding | Evidence | Where |", "| --- | --- | --- | --- | --- |"] if states
            else ["| Severity | Finding | Evidence | Where |", "| --- | --- | --- | --- |"])
    rows = []
    for f in ordered_findings(data):
        where = md(f.get("section", "")) + (f" · {code(f['layer'])}" if f.get("layer") else "")
        cells = ([f"**{f['state']}**" if f["state"] == "new" else shown(f["state"], STATE_ORDER)]
                 if states else [])
        cells += [shown(f["severity"], SEVERITIES), md(f["title"]), md(f["evidence"]), where]
        rows.append("| " + " | ".join(cells) + " |")
    return Table("Findings", head, rows)


def number_table(data: Dict[str, Any]) -> Table:
    return Table("Key numbers", ["| Number | Value |", "| --- | --: |"],
                 [f"| {md(k)} | {_num(v)} |" for k, v in key_metrics(data).items()])


def change_tables(data: Dict[str, Any]) -> List[Table]:
    """A compare's largest changes: the layers whose weights moved most (with their CKA), then
    the classes whose accuracy fell most. Values that are not finite numbers show as "–"."""
    if data.get("kind") != "compare":
        return []
    c = data.get("comparison") or {}

    def moved(item):
        v = item[1]
        cka = _finite(v.get("cka"))
        return (-(_finite(v.get("weight_change")) or 0), 2 if cka is None else cka)

    layers = [(k, v) for k, v in (c.get("layers") or {}).items() if isinstance(v, dict)]
    top = sorted(layers, key=moved)[:LARGEST_CHANGES]
    per_class = (c.get("predictions") or {}).get("per_class") or {}
    accuracies = [(k, _finite(v.get("base_accuracy")), _finite(v.get("new_accuracy")))
                  for k, v in per_class.items() if isinstance(v, dict)]
    drops = sorted(((k, new - base) for k, base, new in accuracies if base is not None and new is not None),
                   key=lambda kv: kv[1])[:LARGEST_CHANGES]
    tables = [Table("", ["| Layer | Weight change | CKA (BASE vs NEW) |", "| --- | --: | --: |"],
                    [f"| {code(name)} | {_pct(v.get('weight_change'))} | {_num(_finite(v.get('cka')))} |"
                     for name, v in top]),
              Table("", ["| Class | Accuracy change |", "| --- | --: |"],
                    [f"| {md(k, NAME_LIMIT)} | {_pct(d, '+')} |" for k, d in drops])]
    tables = [t for t in tables if t.rows]
    return [t._replace(caption="Largest changes") if i == 0 else t for i, t in enumerate(tables)]


def summary_markdown(data: Dict[str, Any], report_id: Optional[str] = None, link: Optional[str] = None,
                     limit: int = GITHUB_LIMIT) -> str:
    """The Markdown for ``data`` (a report.json), at most ``limit`` characters (``limit`` at
    least MIN_LIMIT). A bad ``report_id`` is an InputError."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters, not {limit}")
    rid = default_marker_id(data) if report_id is None else check_marker_id(report_id)
    top = [f"<!-- reportgen:{rid} -->",
           f"### reportgen {shown(data.get('kind', 'build'), KINDS)}: {md(title_of(data), TITLE_LIMIT)}", ""]
    if link:      # before the verdict: a cut summary keeps the way to the full report
        top += [_link_line(link), ""]
    top.append(verdict_line(data))
    tables = [t for t in [finding_table(data), number_table(data), *change_tables(data)] if t.rows]
    for keep in _shrinking([len(t.rows) for t in tables]):
        lines = _compose(top, tables, keep)
        if sum(len(line) + 1 for line in lines) <= limit:
            return "\n".join(lines) + "\n"
    return _cut(lines, limit)


def _shrinking(sizes: List[int]) -> Iterator[List[int]]:
    """Rows to keep of each table: all, then fewer of the last table (its last rows first, about
    a twentieth at a time) down to none, then of the one before it, and so on to none at all."""
    keep = list(sizes)
    yield list(keep)
    for i in reversed(range(len(keep))):
        while keep[i]:
            keep[i] -= max(1, keep[i] // 20)
            yield list(keep)


def _compose(top: List[str], tables: List[Table], keep: List[int]) -> List[str]:
    out = list(top)
    for table, k in zip(tables, keep):
        if k:
            out += (["", f"**{table.caption}**"] if table.caption else []) + [""] + table.head + table.rows[:k]
    left = sum(len(t.rows) for t in tables) - sum(keep)
    if left:
        out += ["", f"_{left} row(s) left out to stay within GitHub's {GITHUB_LIMIT:,}-character comment limit; "
                    "the full report has them all._"]
    return out


def _cut(lines: List[str], limit: int) -> str:
    """The lines that fit in ``limit`` characters, the first that does not fit cut short: for a summary
    whose marker, title, verdict and link alone are too long. The marker always fits whole
    (MIN_LIMIT), and a cut line keeps its escapes harmless: a prefix of escaped text shows as text."""
    out, room = [], limit
    for line in lines:
        if len(line) + 1 > room and line.startswith(LINK_TEXT):
            continue                         # a link cut short would point elsewhere: none at all
        if len(line) + 1 > room:
            if room > 2:
                out.append(line[:room - 2] + "…")
            break
        out.append(line)
        room -= len(line) + 1
    return "\n".join(out) + "\n"


LINK_TEXT = "[Full report]("


def _link_line(link: str) -> str:
    return f"{LINK_TEXT}{_url(link)})"


def _url(link: str) -> str:
    return link.replace(" ", "%20").replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E")

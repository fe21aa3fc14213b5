"""report.json and manifest.json: the one writer and the one validating reader.

Reports travel: a CI job reads the previous one (``--baseline``), ``publish``
copies them into a site that others serve, ``summary`` turns them into a PR
comment. Any of those files may have been written by someone else, so every
command reads them through :func:`read_report` / :func:`read_manifest`, which
check what the rest of the code relies on before anything is written:

* types of the keys the commands read, and the allowed values of ``kind``,
  ``severity`` and ``state``;
* every number finite and of sane magnitude (a NaN or a 400-digit integer
  would otherwise break the site's page for every later publish);
* publish IDs as ``[a-z0-9][a-z0-9._-]*`` and digests as hex, so neither can
  walk out of a folder or out of an HTML comment;
* sizes: the file, each string, the nesting depth.

A bad file is an :class:`InputError` (exit 2) naming the file and the key.

The writing side lives here too, so the format has one home: a section's
:class:`Outcome` (what a build computed of it), :func:`build_report` and
:func:`compare_report` (the report.json document, from outcomes and metadata
the commands gather), and :func:`write_pair`, the writer: report.json and
index.html replace the old pair in one step (see its docstring).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from reportgen import __version__, atomic
from reportgen.atomic import atomic_write_bytes
from reportgen.errors import InputError

KINDS = ("build", "compare")
SEVERITIES = ("info", "warning", "error")      # the one order: error > warning > info
STATES = ("new", "updated", "unchanged")
ID_LENGTH = 100
_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
_HEX = re.compile(r"[0-9a-f]{8,128}")
MAX_FILE_BYTES = 128 * 2**20        # a 1000-class compare is a few MB; this only stops abuse
MAX_PAGE_BYTES = 512 * 2**20
MAX_STRING = 2**20
MAX_DEPTH = 64
MAX_INT = 2**63                     # larger integers are not counts of anything we write

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- findings' severity

def severity_rank(severity: str) -> int:
    """How bad ``severity`` is, in SEVERITIES' order (info 0, warning 1, error 2): every gate,
    sort and verdict ranks findings by it."""
    return SEVERITIES.index(severity)


def worst_finding(findings: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The first finding of the worst severity in ``findings``; None when there is none."""
    return max(findings, key=lambda f: severity_rank(f["severity"]), default=None)


# --------------------------------------------------------------------------- names and digests

def is_id(text: Any) -> bool:
    """A publish ID: safe as a folder name, in a URL and inside ``<!-- reportgen:ID -->``."""
    return (isinstance(text, str) and len(text) <= ID_LENGTH and _ID.fullmatch(text) is not None
            and text not in (".", ".."))


def check_id(text: str, where: Optional[PathLike] = None, key: str = "--id") -> str:
    if not is_id(text):
        raise InputError(f"{key} {text!r} is not a valid report ID: lower-case letters, digits, '.', '_' and "
                         f"'-' only, starting with a letter or digit, at most {ID_LENGTH} characters", where)
    return text


def is_digest(text: Any) -> bool:
    return isinstance(text, str) and _HEX.fullmatch(text) is not None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- a section's outcome

@dataclass
class Outcome:
    """One section of one build (computed, or read from the cache): what its readers need of it.

    A build's page, its report.json and a compare all read the same outcomes,
    so the fields are plain data (this module sits below the model, the
    sections and the pages); each is here because a reader needs it:

    * ``summary``: report.json's ``sections.NAME``, the numbers a CI gate, a
      compare's audit and ``summary`` read; ``{"skipped": reason}`` where the
      section did not apply, ``{"error": text}`` where it failed.
    * ``findings``: its findings as report.json writes them (``Finding.to_json``).
    * ``seconds``: its wall time here (a cache hit's is the lookup's), for
      report.json's ``timings``, the budget's actual time and the overshoot check.
    * ``cached``: it came from the cache, so its ``seconds`` measured nothing:
      report.json's ``cached`` and the budget leave it out of their judgement.
    * ``title``, ``partial``, ``template_dir``: the page's heading, the Jinja2
      partial that draws ``view`` and the plugin's own templates folder (None for
      a built-in), taken from the registered section class.
    * ``results``: the analysis result as plain data (``cache.to_plain``): what
      ``reportgen.build`` returns and what a compare reads across models (the
      attribution maps, the predictions, the shortcut maps); None where it
      did not apply or failed.
    * ``view``: what ``partial`` renders; None where there is nothing to draw.
    * ``error``: the failure, paths in public form, shown in place of the section.
    * ``skipped``, ``hint``: why it does not apply, and what would make it apply.
    * ``budget_note``: the caption sentence on what the budget plan chose for it
      (set by ``planning.annotate`` once every section ran).
    * ``budget``: report.json's ``sections.NAME.budget``, the plan's choices and
      the page share it had (also set by ``planning.annotate``).
    """

    summary: Dict[str, Any]
    findings: List[Dict[str, Any]]
    seconds: float
    cached: bool
    title: str
    partial: str
    template_dir: Optional[Path] = None
    results: Any = None
    view: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    skipped: Optional[str] = None
    hint: Optional[str] = None
    budget_note: Optional[str] = None
    budget: Optional[Dict[str, Any]] = None


def ran(outcomes: Mapping[str, Outcome], name: str) -> Optional[Outcome]:
    """Section ``name``'s outcome where it ran (computed or cached); None where it was not selected,
    did not apply or failed."""
    found = outcomes.get(name)
    summary = (found.summary if found is not None else None) or {}
    return None if found is None or "skipped" in summary or "error" in summary else found


def summary_of(outcomes: Mapping[str, Outcome], name: str) -> Dict[str, Any]:
    """Section ``name``'s summary where it ran; {} where it was not selected, did not apply or failed."""
    found = ran(outcomes, name)
    return (found.summary or {}) if found is not None else {}


def results_of(outcomes: Mapping[str, Outcome], name: str) -> Any:
    """Section ``name``'s results; None where it was not selected, did not apply or failed."""
    found = outcomes.get(name)
    return found.results if found is not None else None


# --------------------------------------------------------------------------- the document

INPUTS_NOTE = "Both models ran on NEW's probes and dataset; BASE's probes and dataset are ignored."


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/Infinity: they become null so strict parsers accept the file (arrays become lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    return obj


def baseline_summary(baseline: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """What a report says of the report it was compared with (no paths: reports get published)."""
    if baseline is None:
        return None
    return {"title": baseline.get("title"), "spec_digest": baseline.get("spec_digest"),
            "reportgen": baseline.get("reportgen"), "findings": len(baseline["findings"])}


def section_summaries(outcomes: Mapping[str, Outcome]) -> Dict[str, Any]:
    """report.json's ``sections``: each summary, with what the budget plan chose for it."""
    return {name: dict(o.summary, budget=o.budget) if o.budget else o.summary for name, o in outcomes.items()}


def build_report(*, spec_digest: str, title: str, model: Dict[str, Any], notes: List[str],
                 outcomes: Mapping[str, Outcome], findings: List[Dict[str, Any]],
                 resolved: Sequence[Dict[str, Any]], baseline: Optional[Dict[str, Any]],
                 budget: Optional[Dict[str, Any]], size: Dict[str, Any], inputs_digest: str) -> Dict[str, Any]:
    """A build's report.json (SPEC.md), less the ``page_sha256`` that :func:`write_pair` adds.

    ``model``: the model block (where it came from, its classes, checkpoints and
    preprocessing); ``notes``: the resolve step's notes; ``baseline``: the
    ``--baseline`` report, summarized; ``size``: the page's bytes per section.
    """
    data: Dict[str, Any] = {
        "reportgen": __version__,
        "kind": "build",
        "spec_digest": spec_digest,
        "title": title,
        "model": model,
        "notes": notes,
        "sections": section_summaries(outcomes),
        "findings": findings,
        "resolved": list(resolved),
        "baseline": baseline_summary(baseline),
        "timings": {name: round(o.seconds, 4) for name, o in outcomes.items()},
        "cached": sorted(name for name, o in outcomes.items() if o.cached),
    }
    if budget is not None:
        data["budget"] = budget
    data = json_safe(data)
    data["size"] = size
    data["inputs_digest"] = inputs_digest
    return data


def compare_report(*, base: Dict[str, Any], new: Dict[str, Any], comparison: Dict[str, Any], verdict: List[str],
                   base_outcomes: Mapping[str, Outcome], new_outcomes: Mapping[str, Outcome],
                   findings: List[Dict[str, Any]], resolved: List[Dict[str, Any]],
                   flips_by_class: Dict[str, int], timings: Dict[str, float]) -> Dict[str, Any]:
    """A compare's report.json (SPEC.md) before its page is drawn from it: the ``budget``, ``size``
    and inputs digests join it afterwards, ``page_sha256`` in :func:`write_pair`.

    ``base``, ``new``: each side's title, spec digest and model; ``sections``
    pairs each of NEW's section summaries with BASE's (None where BASE lacks it).
    """
    base_sections, new_sections = section_summaries(base_outcomes), section_summaries(new_outcomes)
    data = {
        "reportgen": __version__, "kind": "compare",
        "base": base, "new": new,
        "inputs_note": INPUTS_NOTE,
        "comparison": comparison, "verdict": verdict,
        "sections": {name: {"base": base_sections.get(name), "new": new_sections[name]} for name in new_sections},
        "findings": findings, "resolved": resolved,
        "flips_by_class": flips_by_class,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    return json_safe(data)


# --------------------------------------------------------------------------- writing

def dumps(data: Dict[str, Any]) -> str:
    """report.json's text: sorted keys, strict JSON (a NaN is a bug here, not a null)."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_pair(out_dir: Path, page: str, data: Dict[str, Any]) -> Tuple[Path, Path]:
    """Write ``index.html`` and ``report.json`` into ``out_dir`` as one step.

    A reader (a CI gate, a publish) must never see a new report.json beside an
    old page, so the pair is staged in a sibling folder together with hard links
    to every other file already in ``out_dir`` (a user's site stays as it was,
    byte for byte), and the two folders are exchanged by one atomic
    ``renameat2(RENAME_EXCHANGE)``. Where that call does not exist (not Linux, a
    file system without it, ``out_dir`` the working directory) the files are
    renamed one by one, report.json first, and :func:`read_report_dir` callers
    see the pair's ``page_sha256`` disagree instead of a silent mismatch.
    ``data`` gains that ``page_sha256``: the digest of the page it belongs to.
    """
    data["page_sha256"] = sha256_hex(page.encode("utf-8"))
    text = dumps(data)
    files = {"report.json": text.encode("utf-8"), "index.html": page.encode("utf-8")}
    out_dir = Path(out_dir)
    target = out_dir.resolve() if out_dir.is_symlink() else out_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        _create_folder(target, files)
    elif not _swap_folder(target, files):
        _write_one_by_one(target, files)
    return out_dir / "index.html", out_dir / "report.json"


def _stage(parent: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".stage", dir=parent))


def _create_folder(target: Path, files: Dict[str, bytes]) -> None:
    stage = _stage(target.parent, target.name)
    try:
        atomic.write_files(stage, files)
        os.chmod(stage, 0o755 & ~_umask())
        os.rename(stage, target)     # fails (and we fall back) if someone created it meanwhile
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        _write_one_by_one(target, files)


def _write_one_by_one(target: Path, files: Dict[str, bytes]) -> None:
    """The fallback without an atomic folder exchange: each file by rename, in ``files``' order."""
    for name, content in files.items():
        atomic_write_bytes(target / name, content)


def _swap_folder(target: Path, files: Dict[str, bytes]) -> bool:
    """Exchange ``target`` with a staged copy holding the new files; False where that cannot be done."""
    if not target.is_dir() or _holds_cwd(target) or not atomic.CAN_EXCHANGE:
        return False
    stage = _stage(target.parent, target.name)
    try:
        for entry in os.scandir(target):
            if entry.name in files:
                continue
            src, dst = Path(entry.path), stage / entry.name
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(src, dst)
        atomic.write_files(stage, files)
        shutil.copystat(target, stage)
        return atomic.exchange(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)   # after the exchange: the old folder


def _link_or_copy(src: Any, dst: Any) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _holds_cwd(folder: Path) -> bool:
    """Swapping the folder a shell (or this process) stands in would leave it in a deleted one."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return True
    folder = folder.resolve()
    return cwd == folder or folder in cwd.parents


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- reading

def read_json_file(path: Path, role: str, limit: int = MAX_FILE_BYTES) -> Any:
    return loads(read_regular(path, role, limit), role, path)


def read_regular(path: Path, role: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes: never through a symlink (checked on the opened file, so one swapped in
    after a check is refused too), never a device or a folder, never more than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(f"{role} not found", path) from None
    except OSError as e:
        raise InputError(f"{role} cannot be read ({e.strerror}; a symlink is never followed)", path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{role} is not a regular file", path)
        if st.st_size > limit:
            raise InputError(f"{role} is {st.st_size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB such a "
                             "file can be", path)
        return f.read(limit + 1)


def loads(raw: bytes, role: str, where: Optional[PathLike] = None) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{role} is not UTF-8 text, so not a reportgen file", where) from None
    try:
        return json.loads(text)        # NaN and huge integers parse; the checker names their key
    except json.JSONDecodeError as e:
        raise InputError(f"{role} is not valid JSON (line {e.lineno}: {e.msg})", where) from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"{role} is not valid report JSON ({str(e)[:200]})", where) from None


class _Checker:
    """Walks a parsed file, raising InputError at the first key that breaks a rule."""

    def __init__(self, role: str, where: Optional[PathLike]):
        self.role, self.where = role, where

    def fail(self, key: str, message: str) -> None:
        raise InputError(f"{self.role} key {key or '(top)'}: {message}", self.where)

    def values(self, value: Any, key: str = "", depth: int = 0) -> None:
        """Every number finite and bounded, every string bounded, nesting bounded."""
        if depth > MAX_DEPTH:
            self.fail(key, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int):
            if abs(value) >= MAX_INT:
                self.fail(key, "an integer too large to be a count")
        elif isinstance(value, float):
            if not math.isfinite(value) or abs(value) > 1e300:
                self.fail(key, f"{value!r} is not a finite number")
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                self.fail(key, f"a string of {len(value):,} characters")
        elif isinstance(value, dict):
            for k, v in value.items():
                self.values(v, f"{key}.{k}" if key else str(k), depth + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.values(v, f"{key}[{i}]", depth + 1)

    def typed(self, obj: Dict[str, Any], key: str, types: Any, path: str, required: bool = True) -> Any:
        if key not in obj:
            if required:
                self.fail(_join(path, key), "missing")
            return None
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
            self.fail(_join(path, key), f"{_type_name(value)} where {_names(types)} belongs")
        return value

    def choice(self, obj: Dict[str, Any], key: str, allowed: Sequence[str], path: str, required: bool = True) -> Any:
        value = self.typed(obj, key, str, path, required)
        if value is not None and value not in allowed:
            self.fail(_join(path, key), f"{_short(value)} is not one of {', '.join(allowed)}")
        return value

    def digest(self, obj: Dict[str, Any], key: str, path: str, required: bool = True, empty: bool = False) -> None:
        value = self.typed(obj, key, str, path, required)
        if value is None or (empty and value == ""):
            return
        if not is_digest(value):
            self.fail(_join(path, key), f"{_short(value)} is not a hex digest")

    def text(self, obj: Dict[str, Any], key: str, path: str, required: bool = True) -> None:
        self.typed(obj, key, str, path, required)

    def finding(self, f: Any, path: str, states: Sequence[str]) -> None:
        if not isinstance(f, dict):
            self.fail(path, f"{_type_name(f)} where a finding (an object) belongs")
        self.text(f, "id", path)
        if not f["id"] or any(ord(c) < 32 for c in f["id"]):
            self.fail(_join(path, "id"), "empty, or holds control characters")
        self.choice(f, "severity", SEVERITIES, path)
        self.text(f, "title", path)
        self.text(f, "evidence", path)
        self.typed(f, "section", str, path, required=False)
        self.typed(f, "layer", (str, type(None)), path, required=False)
        self.choice(f, "state", states, path, required=False)


def _tuple(types: Any) -> Tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _names(types: Any) -> str:
    return " or ".join("null" if t is type(None) else {"str": "a string", "dict": "an object", "list": "a list",
                                                       "int": "an integer", "float": "a number",
                                                       "bool": "true/false"}.get(t.__name__, t.__name__)
                       for t in _tuple(types))


def _type_name(value: Any) -> str:
    return _names(type(value))


def _short(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def validate_report(data: Any, role: str = "report.json", where: Optional[PathLike] = None) -> Dict[str, Any]:
    """``data`` checked to be a reportgen report.json (see the module's docstring); returned as is."""
    c = _Checker(role, where)
    if not isinstance(data, dict) or "reportgen" not in data or not isinstance(data.get("findings"), list):
        raise InputError(f"{role} is not a reportgen report.json (no 'reportgen' version and 'findings' list)",
                         where)
    c.values(data)
    c.text(data, "reportgen", "")
    kind = c.choice(data, "kind", KINDS, "", required=False) or "build"
    if kind == "build":
        c.text(data, "title", "", required=False)
        c.digest(data, "spec_digest", "", required=False)
        c.typed(data, "model", dict, "", required=False)
    else:
        for side in ("base", "new"):
            part = c.typed(data, side, dict, "")
            c.text(part, "title", side)
            c.digest(part, "spec_digest", side, required=False)
            c.digest(part, "inputs_digest", side, required=False)
            c.typed(part, "model", dict, side, required=False)
        c.typed(data, "comparison", dict, "", required=False)
        verdict = c.typed(data, "verdict", list, "", required=False) or []
        for i, sentence in enumerate(verdict):
            if not isinstance(sentence, str):
                c.fail(f"verdict[{i}]", f"{_type_name(sentence)} where a string belongs")
    c.digest(data, "inputs_digest", "", required=False)
    c.digest(data, "page_sha256", "", required=False)
    for i, f in enumerate(data["findings"]):
        c.finding(f, f"findings[{i}]", STATES)
    for i, f in enumerate(c.typed(data, "resolved", list, "", required=False) or []):
        c.finding(f, f"resolved[{i}]", STATES)
    for key in ("sections", "timings", "budget", "size"):
        c.typed(data, key, dict, "", required=False)
    c.typed(data, "baseline", (dict, type(None)), "", required=False)
    return data


def report_path(path: PathLike) -> Path:
    """A report.json, or a folder holding one."""
    p = Path(path)
    return p / "report.json" if p.is_dir() else p


def read_report(path: PathLike, role: str = "report") -> Dict[str, Any]:
    """A report.json (or the folder holding one), validated; InputError (exit 2) naming file and key."""
    p = report_path(path)
    if not os.path.lexists(p):
        raise InputError(f"{role} report not found (give a report.json or the folder that holds it)", p)
    return read_report_file(p, role)[1]


def read_report_file(path: Path, role: str) -> Tuple[bytes, Dict[str, Any]]:
    """(the file's bytes, its validated report): publish copies exactly the bytes it validated."""
    raw = read_regular(path, role)
    return raw, validate_report(loads(raw, role, path), role, path)


# --------------------------------------------------------------------------- the manifest

def validate_manifest(data: Any, where: Optional[PathLike] = None) -> Dict[str, Any]:
    """A site's manifest.json (SPEC.md, "Publishing"), checked as strictly as a report."""
    role = "the site's manifest.json"
    c = _Checker(role, where)
    if not isinstance(data, dict) or not isinstance(data.get("reports"), list):
        raise InputError(f"{role} is not a reportgen manifest (no 'reports' list); it is not a reportgen site, "
                         "or it was edited by hand", where)
    c.values(data)
    c.text(data, "reportgen", "", required=False)
    seen = set()
    for i, entry in enumerate(data["reports"]):
        path = f"reports[{i}]"
        if not isinstance(entry, dict):
            c.fail(path, f"{_type_name(entry)} where an entry (an object) belongs")
        rid = c.typed(entry, "id", str, path)
        if not is_id(rid):
            c.fail(f"{path}.id", f"{_short(rid)} is not a valid report ID")
        if rid in seen:
            c.fail(f"{path}.id", f"{rid!r} is listed twice")
        seen.add(rid)
        c.choice(entry, "kind", KINDS, path)
        if entry.get("path", f"reports/{rid}/index.html") != f"reports/{rid}/index.html":
            c.fail(f"{path}.path", f"{_short(entry['path'])} is not reports/{rid}/index.html")
        c.text(entry, "title", path)
        c.digest(entry, "spec_digest", path, required=False, empty=True)
        c.digest(entry, "inputs_digest", path, required=False, empty=True)
        counts = c.typed(entry, "findings", dict, path)
        for sev in SEVERITIES:
            n = c.typed(counts, sev, int, f"{path}.findings")
            if n < 0:
                c.fail(f"{path}.findings.{sev}", "a negative count")
        for name, v in (c.typed(entry, "metrics", dict, path, required=False) or {}).items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                c.fail(f"{path}.metrics.{name}", f"{_type_name(v)} where a number belongs")
        for side, target in (c.typed(entry, "compares", dict, path, required=False) or {}).items():
            if target is not None and not is_id(target):
                c.fail(f"{path}.compares.{side}", f"{_short(target)} is not a valid report ID")
        c.typed(entry, "model", dict, path)
        if entry["kind"] == "compare":
            for side in ("base", "new"):
                c.text(c.typed(entry, side, dict, path), "title", f"{path}.{side}")
        for key, types in (("verdict", str), ("published", str), ("resolved", int)):
            c.typed(entry, key, types, path, required=False)
    return data


def read_manifest(site: Path) -> Optional[Dict[str, Any]]:
    """The site's manifest, validated; None when the site has none."""
    path = site / "manifest.json"
    if not os.path.lexists(path):
        return None
    return validate_manifest(read_json_file(path, "the site's manifest.json"), path)


def manifest_text(manifest: Dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def validate_pass_header(header: Any, where: Optional[PathLike] = None) -> Dict[str, Any]:
    """A saved compare pass's header: what it was computed on, checked before it is trusted."""
    return _pass_header(header, where, "the pass file's header", "compare-pass", ("base_inputs", "new_inputs"))


def validate_audit_pass_header(header: Any, where: Optional[PathLike] = None) -> Dict[str, Any]:
    """A saved audit pass's header (``build --audit-pass``): what it was computed on."""
    return _pass_header(header, where, "the audit pass file's header", "audit-pass", ("inputs",), ("plan",))


def validate_topk_pass_header(header: Any, where: Optional[PathLike] = None) -> Dict[str, Any]:
    """A saved top-k pass's header (``build --topk``): what it was computed on."""
    return _pass_header(header, where, "the top-k pass file's header", "topk-pass", ("inputs",), ("plan",))


def _pass_header(header: Any, where: Optional[PathLike], what: str, kind: str, digests: Sequence[str],
                 texts: Sequence[str] = ()) -> Dict[str, Any]:
    c = _Checker(what, where)
    if not isinstance(header, dict):
        c.fail("", f"{_type_name(header)} where an object belongs")
    c.values(header)
    c.choice(header, "kind", (kind,), "")
    c.text(header, "version", "")
    for key in digests:
        c.digest(header, key, "")
    for key in texts:
        c.text(header, key, "")
    return header

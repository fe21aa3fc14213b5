"""``reportgen publish REPORT_DIR ... --site SITE_DIR``: reports gathered into a static site.

A site is a folder a user pushes to GitHub Pages (or opens from disk)::

    SITE/reports/<ID>/index.html    each report, copied byte for byte
    SITE/reports/<ID>/report.json
    SITE/manifest.json              what is published (SPEC.md, "Publishing")
    SITE/index.html                 a sortable, filterable list of them, self-contained

Publishing is incremental so a gh-pages commit stays small: it rewrites the
folders of the reports it publishes, ``manifest.json`` and ``index.html``, and
no other file (``--keep`` removes the folders it drops).

It is all-or-nothing (SPEC.md, "Trust"): every REPORT_DIR is read and validated
and the new manifest and index are rendered before the site is touched; the
site is locked while its manifest is read and rewritten (two publishes at once
both land); each report folder is staged and swapped in by rename; nothing is
read through, written through or deleted through a symlink, and nothing outside
SITE_DIR is written or deleted. A non-empty SITE_DIR without a manifest is
someone else's folder and is refused unless ``force``. At every instant each
manifest entry's folder exists: folders are written before the manifest that
lists them and removed after the manifest that drops them.

The manifest is deterministic (sorted keys, publication order): publishing the
same reports again leaves every file byte-identical, its ``published`` stamps
included (a report whose files and manifest entry did not change keeps its stamp).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from reportgen import __version__, atomic
from reportgen.errors import InputError
from reportgen.report import (
    MAX_PAGE_BYTES,
    SEVERITIES,
    check_id,
    is_digest,
    manifest_text,
    read_manifest,
    read_regular,
    read_report_file,
    sha256_hex,
)

REPORT_FILES = ("index.html", "report.json")
STAGE_PREFIX = ".stage."        # a folder being written, not yet swapped in
OLD_PREFIX = ".old."            # a replaced folder, kept only until its successor is in place
DROP_PREFIX = ".drop."          # a dropped folder on its way out
LOCK_WAIT_S = 600
PAGES_FILES = ("CNAME",)          # GitHub Pages' own settings: a folder of only these (and dotfiles) is empty
_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
SLUG_LENGTH = 48

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- what a report is

def title_of(data: Dict[str, Any]) -> str:
    """A build's title; a compare's "BASE vs NEW"."""
    if data.get("kind") == "compare":
        return f"{data['base']['title']} vs {data['new']['title']}"
    return str(data.get("title") or "untitled")


def digest_of_report(data: Dict[str, Any]) -> str:
    """The spec digest a report is known by: a compare's is NEW's (the model under review)."""
    side = data["new"] if data.get("kind") == "compare" else data
    digest = side.get("spec_digest")
    return digest if is_digest(digest) else ""


def id_digest(data: Dict[str, Any]) -> str:
    """What the default ID hashes: the audited inputs (a new model from an unchanged spec is a new
    entry); a report written before ``inputs_digest`` existed falls back to its spec digest."""
    digest = data.get("inputs_digest")
    return digest if is_digest(digest) else digest_of_report(data)


def slug(text: str) -> str:
    """``"ShapesNet demo: v2!"`` -> ``"shapesnet-demo-v2"`` (ASCII, at most SLUG_LENGTH characters)."""
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    s = _SLUG_CHARS.sub("-", ascii_text.lower()).strip("-")
    return s[:SLUG_LENGTH].rstrip("-") or "report"


def default_id(data: Dict[str, Any]) -> str:
    """A slug of the title plus the first 8 hex digits of the inputs digest (SPEC.md, "Trust")."""
    digest = id_digest(data)[:8]
    return f"{slug(title_of(data))}-{digest}" if digest else slug(title_of(data))


def finding_counts(findings: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    counts = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f["severity"]] += 1
    return counts


def counts_text(findings: Sequence[Dict[str, Any]]) -> str:
    """"1 error, 2 warning": the non-zero counts, worst first ("" when there are none)."""
    counts = finding_counts(findings)
    return ", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts[s])


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def key_metrics(data: Dict[str, Any]) -> Dict[str, float]:
    """The few numbers a list of reports shows: a build's audited checkpoint metrics and size;
    a compare's agreement, flips, lowest CKA and largest weight change."""
    out: Dict[str, float] = {}
    if data.get("kind") == "compare":
        c = data.get("comparison") or {}
        preds = c.get("predictions") or {}
        for key in ("agreement", "negative_flips", "positive_flips"):
            if _number(preds.get(key)):
                out[key] = preds[key]
        layers = (c.get("layers") or {}).values()
        ckas = [v["cka"] for v in layers if _number(v.get("cka"))]
        changes = [v["weight_change"] for v in layers if _number(v.get("weight_change"))]
        if ckas:
            out["min_cka"] = min(ckas)
        if changes:
            out["max_weight_change"] = max(changes)
        return out
    model = data.get("model") or {}
    audit = model.get("audit_checkpoint")
    for ckpt in model.get("checkpoints") or []:
        if ckpt.get("label") == audit:
            out.update({k: v for k, v in (ckpt.get("metrics") or {}).items() if _number(v) and k != "epoch"})
    if _number(model.get("parameters")):
        out["parameters"] = model["parameters"]
    return out


def _model_summary(model: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("source", "parameters", "input_size", "num_classes", "audit_checkpoint")
    return {k: model[k] for k in keys if k in model}


def manifest_entry(data: Dict[str, Any], report_id: str, published: str) -> Dict[str, Any]:
    kind = data.get("kind", "build")
    entry: Dict[str, Any] = {
        "id": report_id, "title": title_of(data), "kind": kind,
        "path": f"reports/{report_id}/index.html", "spec_digest": digest_of_report(data),
        "inputs_digest": id_digest(data),
        "model": _model_summary((data["new"] if kind == "compare" else data).get("model") or {}),
        "findings": finding_counts(data["findings"]), "resolved": len(data.get("resolved") or []),
        "metrics": key_metrics(data), "published": published, "reportgen": data.get("reportgen"),
    }
    if kind == "compare":
        entry["base"] = {"title": data["base"].get("title"), "spec_digest": data["base"].get("spec_digest")}
        entry["new"] = {"title": data["new"].get("title"), "spec_digest": data["new"].get("spec_digest")}
        entry["verdict"] = (data.get("verdict") or [""])[0]
    return entry


@dataclass(frozen=True)
class Source:
    """A report folder as read once: its validated report.json and the bytes to copy.

    The bytes are what was validated, so a file swapped after the check is never published.
    """

    folder: Path
    data: Dict[str, Any]
    files: Dict[str, bytes]


def read_report_dir(path: PathLike) -> Source:
    """A built report's folder: index.html beside a valid report.json, both regular files."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("not a report folder (publish takes the folders `reportgen build` or "
                         "`reportgen compare` wrote)", folder)
    raw, data = read_report_file(folder / "report.json", "report.json")
    page = read_regular(folder / "index.html", "the report's index.html", MAX_PAGE_BYTES)
    if data.get("page_sha256") and sha256_hex(page) != data["page_sha256"]:
        raise InputError("index.html is not the page this report.json was written with (an interrupted "
                         "build, or files copied from two builds): build it again", folder / "index.html")
    return Source(folder, data, {"index.html": page, "report.json": raw})


# --------------------------------------------------------------------------- the manifest

def empty_manifest() -> Dict[str, Any]:
    return {"reportgen": __version__, "reports": []}


def link_compares(reports: List[Dict[str, Any]]) -> None:
    """Each compare's ``compares``: the IDs of the published builds of its BASE and NEW specs
    (matched by spec digest, the latest published one), or null."""
    latest: Dict[str, str] = {}
    for r in reports:
        if r["kind"] == "build" and r.get("spec_digest"):
            latest[r["spec_digest"]] = r["id"]
    for r in reports:
        if r["kind"] == "compare":
            r["compares"] = {side: latest.get((r.get(side) or {}).get("spec_digest") or "")
                             for side in ("base", "new")}


def apply_keep(reports: List[Dict[str, Any]], keep: Optional[int]) -> List[Dict[str, Any]]:
    """The reports ``--keep N`` drops: all but the N newest builds and the N newest compares,
    never a build that a kept compare links to. ``reports`` is in publication order."""
    if keep is None:
        return []
    builds = [r for r in reports if r["kind"] == "build"]
    compares = [r for r in reports if r["kind"] == "compare"]
    kept_compares = compares[-keep:]
    linked = {i for c in kept_compares for i in (c.get("compares") or {}).values() if i}
    kept = {r["id"] for r in builds[-keep:]} | {r["id"] for r in kept_compares} | linked
    return [r for r in reports if r["id"] not in kept]


# --------------------------------------------------------------------------- writing

def published_now() -> str:
    """UTC now, to the second; SOURCE_DATE_EPOCH wins (reproducible sites)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc))
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Published:
    """What ``publish`` did: the site's index, the IDs written, dropped and left as they were."""

    index: Path
    manifest: Path
    written: List[str] = field(default_factory=list)
    unchanged: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)


@dataclass
class Plan:
    """Everything publish will write, computed before the site is touched."""

    manifest_json: str
    index_html: str
    folders: List[Tuple[str, Source]]
    done: Published


def publish(report_dirs: Sequence[PathLike], site: PathLike, report_id: Optional[str] = None,
            keep: Optional[int] = None, force: bool = False) -> Published:
    """Add ``report_dirs`` to the site in ``site`` (created if need be); see the module's docstring."""
    site = Path(site)
    _check_arguments(report_dirs, report_id, keep)
    sources = [read_report_dir(d) for d in report_dirs]
    ids = [default_id(s.data) if report_id is None else check_id(report_id, sources[0].folder) for s in sources]
    clash = [i for i in ids if ids.count(i) > 1]
    if clash:
        raise InputError(f"two REPORT_DIRs would be published as the same ID {clash[0]!r}; publish them one "
                         "at a time with --id")
    _check_site(site, force)
    site.mkdir(parents=True, exist_ok=True)
    with site_lock(site):
        _check_site(site, force)       # again, now that no other publish can change it
        plan = _plan(site, read_manifest(site) or empty_manifest(), sources, ids, keep)
        _apply(site, plan)
    return plan.done


def _check_arguments(report_dirs: Sequence[PathLike], report_id: Optional[str], keep: Optional[int]) -> None:
    if not report_dirs:
        raise InputError("publish needs at least one REPORT_DIR")
    if report_id is not None and len(report_dirs) > 1:
        raise InputError(f"--id names one report, but {len(report_dirs)} REPORT_DIRs were given")
    if keep is not None and keep < 1:
        raise InputError(f"--keep must be at least 1, not {keep}")


def _check_site(site: Path, force: bool) -> None:
    """A site is a real folder (never a symlink) that is empty, ours (a manifest) or adopted (--force)."""
    if site.is_symlink():
        raise InputError("--site is a symlink; publish never writes through one (give the real folder)", site)
    if not site.exists():
        return
    if not site.is_dir():
        raise InputError("--site is a file, not a folder", site)
    for name in ("reports", "manifest.json", "index.html"):
        if (site / name).is_symlink():
            raise InputError(f"the site's {name} is a symlink; publish never writes through one", site / name)
    if os.path.lexists(site / "manifest.json") or force:
        return
    if any(not (entry.name.startswith(".") or entry.name in PAGES_FILES) for entry in os.scandir(site)):
        raise InputError("--site is a folder with files but no manifest.json: it is not a reportgen site, and "
                         "publishing would overwrite its index.html; give an empty or new folder, or --force "
                         "to adopt this one", site)


@contextlib.contextmanager
def site_lock(site: Path) -> Iterator[None]:
    """One publish at a time per site: an exclusive lock on the site's folder itself (no lock file
    that a `git add -A` of the site would commit)."""
    try:
        import fcntl
    except ImportError:          # not POSIX: a lock folder beside the site instead
        with _folder_lock(site.parent / f".{site.name}.publish-lock"):
            yield
        return
    fd = os.open(site, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)             # releases the lock


@contextlib.contextmanager
def _folder_lock(path: Path) -> Iterator[None]:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise InputError("another publish holds the site's lock (remove it if none runs)", path) from None
            time.sleep(0.1)
    try:
        yield
    finally:
        os.rmdir(path)


def _plan(site: Path, manifest: Dict[str, Any], sources: Sequence[Source], ids: Sequence[str],
          keep: Optional[int]) -> Plan:
    """The new manifest and index, and the folders to write; renders everything, writes nothing."""
    from reportgen.render.site import render_site

    reports: List[Dict[str, Any]] = list(manifest["reports"])
    now = published_now()
    done = Published(index=site / "index.html", manifest=site / "manifest.json")
    folders = []
    for src, rid in zip(sources, ids):
        before = next((r for r in reports if r["id"] == rid), None)
        if before is not None and _unchanged(site, rid, src, before):
            done.unchanged.append(rid)
            continue
        folders.append((rid, src))
        reports = [r for r in reports if r["id"] != rid] + [manifest_entry(src.data, rid, now)]
        done.written.append(rid)
    link_compares(reports)
    dropped = apply_keep(reports, keep)
    reports = [r for r in reports if r not in dropped]
    link_compares(reports)
    done.dropped = [r["id"] for r in dropped]
    new = {"reportgen": __version__, "reports": reports}
    return Plan(manifest_text(new), render_site(new), folders, done)


def _unchanged(site: Path, rid: str, src: Source, before: Dict[str, Any]) -> bool:
    """Same files in place and the same manifest entry (publication stamp aside)."""
    dest = site / "reports" / rid
    if dest.is_symlink() or not dest.is_dir():
        return False
    for name, content in src.files.items():
        try:
            if read_regular(dest / name, name, len(content) + 1) != content:
                return False
        except InputError:
            return False
    return _entry_core(manifest_entry(src.data, rid, "")) == _entry_core(before)


def _entry_core(entry: Dict[str, Any]) -> Dict[str, Any]:
    """An entry less what publishing itself sets (the stamp, the links to other reports)."""
    return {k: v for k, v in entry.items() if k not in ("published", "compares")}


def _apply(site: Path, plan: Plan) -> None:
    """Write what ``plan`` holds: folders, then the manifest and index, then the drops."""
    reports = site / "reports"
    if reports.is_symlink():
        raise InputError("the site's reports folder is a symlink; publish never writes through one", reports)
    reports.mkdir(exist_ok=True)
    _sweep(reports)
    for rid, src in plan.folders:
        _replace_folder(reports, rid, src.files)
    _write_if_changed(site / "manifest.json", plan.manifest_json)
    _write_if_changed(site / "index.html", plan.index_html)
    for rid in plan.done.dropped:
        _remove_folder(reports, rid)


def _inside(reports: Path, rid: str) -> Path:
    """``reports/<rid>``, refused unless it is a direct child of the site's reports folder."""
    check_id(rid, reports, key="report ID")
    path = reports / rid
    if path.parent.resolve() != reports.resolve():
        raise InputError(f"report ID {rid!r} leads outside the site's reports folder", path)
    return path


def _replace_folder(reports: Path, rid: str, files: Dict[str, bytes]) -> None:
    """reports/<rid> := a folder of ``files``, staged beside it and swapped in by rename."""
    dest = _inside(reports, rid)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{rid}.", dir=reports))
    try:
        atomic.write_files(stage, files)
        os.chmod(stage, 0o755)
        if dest.is_symlink():
            dest.unlink()                        # the link itself, never what it points to
        if dest.is_dir() and atomic.exchange(stage, dest):
            return                               # stage now holds the old folder: removed below
        if dest.is_dir():                        # no atomic exchange here: move aside, then in
            os.rename(dest, Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{rid}.", dir=reports)) / rid)
        elif os.path.lexists(dest):
            dest.unlink()
        os.rename(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _sweep(reports, rid)


def _remove_folder(reports: Path, rid: str) -> None:
    path = _inside(reports, rid)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        trash = Path(tempfile.mkdtemp(prefix=DROP_PREFIX, dir=reports))
        os.rename(path, trash / rid)
        shutil.rmtree(trash, ignore_errors=True)


def _sweep(reports: Path, only: Optional[str] = None) -> None:
    """Leftovers of an interrupted publish: stages and drops go; an old folder whose successor never
    arrived goes back in place (so the manifest that lists it stays true)."""
    for entry in os.scandir(reports):
        name = entry.name
        if not entry.is_dir(follow_symlinks=False):
            continue
        if name.startswith(OLD_PREFIX):
            rid = name[len(OLD_PREFIX):].rsplit(".", 1)[0]
            if only is not None and rid != only:
                continue
            moved, dest = Path(entry.path) / rid, reports / rid
            if moved.is_dir() and not os.path.lexists(dest):
                os.rename(moved, dest)
            shutil.rmtree(entry.path, ignore_errors=True)
        elif only is None and (name.startswith(STAGE_PREFIX) or name.startswith(DROP_PREFIX)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _write_if_changed(path: Path, text: str) -> None:
    """Leave an identical file alone (its mtime too): a re-publish of the same things is a no-op."""
    content = text.encode("utf-8")
    if path.is_file() and not path.is_symlink() and path.read_bytes() == content:
        return
    atomic.atomic_write_bytes(path, content)     # a rename: replaces a symlink, never writes through it

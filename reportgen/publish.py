"""``reportgen publish REPORT_DIR ... --site SITE_DIR``: reports gathered into a static site.

A site is a folder a user pushes to GitHub Pages (or opens from disk)::

    SITE/reports/<ID>/index.html    each report, copied byte for byte
    SITE/reports/<ID>/report.json
    SITE/manifest.json              what is published (SPEC.md, "Publishing")
    SITE/index.html                 a sortable, filterable list of them, self-contained

Publishing is incremental so a gh-pages commit stays small: it rewrites the
folders of the reports it publishes, ``manifest.json`` and ``index.html``, and
no other file (``--keep`` removes the folders it drops). Everything is checked
before anything is written: a bad REPORT_DIR, a foreign manifest or a bad ID is
an InputError (exit 2) and the site is untouched. Each file is replaced by a
rename, the manifest and index last, so a reader never sees half a file.

The manifest is deterministic (sorted keys, publication order): publishing the
same reports again leaves every file byte-identical, its ``published`` stamps
included (a report whose files did not change keeps its stamp).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from reportgen import __version__
from reportgen.baseline import SEVERITIES, load_report
from reportgen.errors import InputError

REPORT_FILES = ("index.html", "report.json")
KINDS = ("build", "compare")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
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
    if data.get("kind") == "compare":
        return str(data["new"].get("spec_digest") or "")
    return str(data.get("spec_digest") or "")


def slug(text: str) -> str:
    """``"ShapesNet demo: v2!"`` -> ``"shapesnet-demo-v2"`` (ASCII, at most SLUG_LENGTH characters)."""
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    s = _SLUG_CHARS.sub("-", ascii_text.lower()).strip("-")
    return s[:SLUG_LENGTH].rstrip("-") or "report"


def default_id(data: Dict[str, Any]) -> str:
    """A slug of the title plus the first 8 hex digits of the spec digest (SPEC.md)."""
    digest = digest_of_report(data)[:8]
    return f"{slug(title_of(data))}-{digest}" if digest else slug(title_of(data))


def check_id(report_id: str, where: Optional[PathLike] = None) -> str:
    if not _ID.match(report_id) or report_id in (".", ".."):
        raise InputError(f"--id {report_id!r} is not a valid report ID: letters, digits, '.', '_' and '-' "
                         "only (no slashes), at most 100 characters, starting with a letter or digit", where)
    return report_id


def finding_counts(findings: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    counts = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f["severity"]] += 1
    return counts


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
        "model": _model_summary((data["new"] if kind == "compare" else data).get("model") or {}),
        "findings": finding_counts(data["findings"]), "resolved": len(data.get("resolved") or []),
        "metrics": key_metrics(data), "published": published, "reportgen": data.get("reportgen"),
    }
    if kind == "compare":
        entry["base"] = {"title": data["base"].get("title"), "spec_digest": data["base"].get("spec_digest")}
        entry["new"] = {"title": data["new"].get("title"), "spec_digest": data["new"].get("spec_digest")}
        entry["verdict"] = (data.get("verdict") or [""])[0]
    return entry


def read_report_dir(path: PathLike) -> Dict[str, Any]:
    """A built report's folder: index.html beside a reportgen report.json of a known kind."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("not a report folder (publish takes the folders `reportgen build` or "
                         "`reportgen compare` wrote)", folder)
    data = load_report(folder, "report")
    if not (folder / "index.html").is_file():
        raise InputError("report folder has report.json but no index.html", folder / "index.html")
    kind = data.get("kind", "build")
    if kind not in KINDS:
        raise InputError(f"report.json has kind {kind!r}, not one of {', '.join(KINDS)}", folder / "report.json")
    side_keys = ("base", "new") if kind == "compare" else ()
    if any(not isinstance(data.get(k), dict) or "title" not in data[k] for k in side_keys):
        raise InputError("compare report.json lacks its 'base' and 'new' titles", folder / "report.json")
    return data


# --------------------------------------------------------------------------- the manifest

def empty_manifest() -> Dict[str, Any]:
    return {"reportgen": __version__, "reports": []}


def load_manifest(site: Path) -> Dict[str, Any]:
    path = site / "manifest.json"
    if not path.exists():
        return empty_manifest()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"the site's manifest is not valid JSON ({e}); it is not a reportgen site, or it "
                         "was edited by hand", path) from None
    reports = data.get("reports") if isinstance(data, dict) else None
    if not isinstance(reports, list) or not all(isinstance(r, dict) and "id" in r and "kind" in r for r in reports):
        raise InputError("the site's manifest.json is not a reportgen manifest (no 'reports' list of "
                         "entries with 'id' and 'kind')", path)
    return data


def manifest_text(manifest: Dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


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


def _same_files(src: Path, dest: Path) -> bool:
    return all((dest / n).is_file() and (dest / n).read_bytes() == (src / n).read_bytes() for n in REPORT_FILES)


def _replace_folder(src: Path, dest: Path) -> None:
    """dest := a copy of src's report files, staged beside it and moved in by rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    old = stage.with_suffix(".old")
    try:
        for name in REPORT_FILES:
            shutil.copyfile(src / name, stage / name)
            os.chmod(stage / name, 0o644)
        os.chmod(stage, 0o755)
        if dest.exists():
            os.replace(dest, old)
        os.replace(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Published:
    """What ``publish`` did: the site's index, the IDs written, dropped and left as they were."""

    index: Path
    manifest: Path
    written: List[str] = field(default_factory=list)
    unchanged: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)


def publish(report_dirs: Sequence[PathLike], site: PathLike, report_id: Optional[str] = None,
            keep: Optional[int] = None) -> Published:
    """Add ``report_dirs`` to the site in ``site`` (created if need be); see the module's docstring."""
    from reportgen.render.site import render_site

    site = Path(site)
    if not report_dirs:
        raise InputError("publish needs at least one REPORT_DIR")
    if report_id is not None and len(report_dirs) > 1:
        raise InputError(f"--id names one report, but {len(report_dirs)} REPORT_DIRs were given")
    if keep is not None and keep < 1:
        raise InputError(f"--keep must be at least 1, not {keep}")
    if site.exists() and not site.is_dir():
        raise InputError("--site is a file, not a folder", site)
    sources = [(Path(d), read_report_dir(d)) for d in report_dirs]
    ids = [check_id(report_id, sources[0][0]) if report_id else default_id(data) for _, data in sources]
    clash = [i for i in ids if ids.count(i) > 1]
    if clash:
        raise InputError(f"two REPORT_DIRs would be published as the same ID {clash[0]!r}; publish them one "
                         "at a time with --id")
    manifest = load_manifest(site)
    reports: List[Dict[str, Any]] = list(manifest["reports"])
    now = published_now()
    done = Published(index=site / "index.html", manifest=site / "manifest.json")
    for (src, data), rid in zip(sources, ids):
        dest = site / "reports" / rid
        before = next((r for r in reports if r["id"] == rid), None)
        if before is not None and _same_files(src, dest):
            done.unchanged.append(rid)
            continue
        _replace_folder(src, dest)
        reports = [r for r in reports if r["id"] != rid] + [manifest_entry(data, rid, now)]
        done.written.append(rid)
    link_compares(reports)
    dropped = apply_keep(reports, keep)
    reports = [r for r in reports if r not in dropped]
    link_compares(reports)
    manifest = {"reportgen": __version__, "reports": reports}
    site.mkdir(parents=True, exist_ok=True)
    _write_if_changed(site / "manifest.json", manifest_text(manifest))
    _write_if_changed(site / "index.html", render_site(manifest))
    for r in dropped:
        shutil.rmtree(site / "reports" / r["id"], ignore_errors=True)
        done.dropped.append(r["id"])
    return done


def _write_if_changed(path: Path, text: str) -> None:
    """Leave an identical file alone (its mtime too): a re-publish of the same things is a no-op."""
    from reportgen.atomic import atomic_write

    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write(path, text)

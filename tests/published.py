"""Small real reports to publish: three tiny builds and a compare, built once per module.

Each is a ``reportgen build --only summary`` of the tiny project (tests/project.py),
about two seconds; ``variant`` copies one with another title, digest or findings, so
publishing can be tested on many reports without building them.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import reportgen
from tests.project import GOOD, make_project

FINDINGS = [
    {"id": "dead-units-conv1", "severity": "warning", "title": "2 of 4 conv1 filters never fire",
     "evidence": "max activation 0 on every probe", "section": "activations", "layer": "conv1"},
    {"id": "noisy-filters", "severity": "error", "title": "conv1 filters look like noise",
     "evidence": "spectral flatness 0.93", "section": "filters", "layer": "conv1"},
    {"id": "few-probes", "severity": "info", "title": "only 2 probes", "evidence": "2 images", "section": "summary"},
]


@dataclass
class Reports:
    builds: List[Path]       # report folders, oldest first: "tiny v1", "tiny v2", "tiny v3"
    compare: Path            # "tiny v1 vs tiny v3"
    root: Path


def build_reports(root: Path) -> Reports:
    cache = root / "cache"
    builds, specs = [], []
    for i in (1, 2, 3):
        project = root / f"v{i}"
        project.mkdir(parents=True)
        spec = make_project(project, GOOD.replace("title: tiny", f"title: tiny v{i}"), checkpoints=i)
        report = reportgen.build(spec, out_dir=project / "site", only=["summary"], cache_dir=cache)
        builds.append(report.path.parent)
        specs.append(spec)
    review = reportgen.compare(specs[0], specs[2], out_dir=root / "compare", only=["summary"], cache_dir=cache)
    # findings make the badges and the chart worth looking at; publishing reads only report.json
    edit(builds[1], findings=FINDINGS[:1])
    edit(builds[2], findings=FINDINGS)
    return Reports(builds, review.path.parent, root)


def edit(folder: Path, **changes: Any) -> Dict[str, Any]:
    path = folder / "report.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def variant(src: Path, dest: Path, title: Optional[str] = None, digest: Optional[str] = None,
            **changes: Any) -> Path:
    """A copy of report folder ``src`` with another title / spec digest / report.json keys."""
    shutil.copytree(src, dest)
    if title is not None:
        changes["title"] = title
    if digest is not None:
        changes["spec_digest"] = changes["inputs_digest"] = digest
    edit(dest, **changes)
    return dest

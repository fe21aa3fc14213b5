"""Issue 5 acceptance: held-out checkpoint series derived from the trained demo (healthy,
frozen, dead, noisy, diverging) each produce the right findings and no false ones.

The series are built by ``tests/findings_series.py`` from a copy of the demo
folder. Each build is limited (``only``) to the sections whose rules could
fire on that defect, plus the filters section everywhere (it fired falsely on
the healthy demo once); the healthy series runs every section with a rule.
Gradients run saliency only: the sanity rule is the same for every method and
the other methods cost half a minute.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Set

import pytest
import yaml

import reportgen
from tests.findings_series import make_variant

pytestmark = pytest.mark.slow

RULE_SECTIONS = ["filters", "activations", "evolution", "curves", "cam", "gradients", "topk"]
ONLY = {
    "healthy": RULE_SECTIONS,
    "frozen": ["filters", "activations", "evolution", "curves"],
    "dead": ["filters", "activations", "topk", "evolution"],
    "noisy": ["filters", "evolution"],
    "diverging": ["filters", "evolution", "curves"],
}
EXPECTED = {
    "healthy": set(),
    "frozen": {"frozen-layers"},
    "dead": {"dead-channels-features.relu3", "dataset-dead-channels-features.relu3"},
    "noisy": {"noisy-filters"},
    "diverging": {"weight-norm-explosion", "metric-regression"},
}


def _quick(spec: Path) -> None:
    """Saliency only in the gradients section (see the module docstring)."""
    data = yaml.safe_load(spec.read_text())
    data.setdefault("sections", {})["gradients"] = {"methods": ["saliency"]}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))


def _warnings(findings: List[dict]) -> Set[str]:
    return {f["id"] for f in findings if f["severity"] in ("warning", "error")}


@pytest.mark.parametrize("variant", list(ONLY))
def test_series_findings(demo_dir, tmp_path, variant):
    spec = make_variant(demo_dir, tmp_path / variant, variant)
    _quick(spec)
    report = reportgen.build(spec, only=ONLY[variant], quiet=True, cache_dir=tmp_path / "cache")
    assert _warnings(report.findings) == EXPECTED[variant], report.findings
    by_id = {f["id"]: f for f in report.findings}
    if variant == "frozen":
        assert by_id["frozen-layers"]["layer"] == "features.conv2"
        assert "1 of" in by_id["frozen-layers"]["title"]
    if variant == "dead":
        assert "32 of 64" in by_id["dead-channels-features.relu3"]["title"]
    if variant == "noisy":
        assert by_id["noisy-filters"]["layer"] == "features.conv1"
    if variant == "diverging":
        assert by_id["weight-norm-explosion"]["layer"].startswith("features.conv")

"""`pip install .` must ship every subpackage, the templates and the themes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed():
    listed = set(_config()["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "reportgen").rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject packages: {sorted(found - listed)}"


def test_templates_and_themes_are_shipped():
    cfg = _config()
    assert cfg["package-dir"]["reportgen.templates"] == "templates"
    assert cfg["package-dir"]["reportgen.themes"] == "themes"
    data = cfg["package-data"]
    assert "*.j2" in data["reportgen.templates"] and "*.j2" in data["reportgen.templates.sections"]
    assert "*.css" in data["reportgen.themes"]
    assert list((ROOT / "templates" / "sections").glob("*.j2"))
    for theme in ("base", "light", "dark"):
        assert (ROOT / "themes" / f"{theme}.css").exists()


def test_torch_is_never_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        if dep.startswith(("torch", "torchvision")):
            assert "==" not in dep, dep

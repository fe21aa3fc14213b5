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


def _minimum(requirement) -> str:
    """The version of a requirement's `>=` bound (the one bound each dependency declares)."""
    lows = [s.version for s in requirement.specifier if s.operator == ">="]
    assert len(lows) == 1, f"{requirement}: declare exactly one >= minimum"
    return lows[0]


def test_the_floor_file_pins_each_declared_minimum():
    """.ci/requirements-floor.txt is what CI runs as the floor: every runtime dependency is there at
    exactly its declared minimum, and every other pin is a test extra's minimum."""
    Requirement = pytest.importorskip("packaging.requirements").Requirement
    Version = pytest.importorskip("packaging.version").Version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for dep in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(dep)
        declared.setdefault(req.name.lower().replace("_", "-"), req)
    pins = {}
    for line in (ROOT / ".ci" / "requirements-floor.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: the floor pins exactly"
            pins[req.name.lower().replace("_", "-")] = spec.version
    runtime = {Requirement(d).name.lower().replace("_", "-") for d in project["dependencies"]}
    assert runtime <= set(pins), f"not pinned in the floor file: {sorted(runtime - set(pins))}"
    for name, pin in pins.items():
        assert name in declared, f"{name} is pinned in the floor file but pyproject does not declare it"
        assert Version(pin) == Version(_minimum(declared[name])), \
            f"{name}: the floor file pins {pin}, pyproject declares {declared[name]}"

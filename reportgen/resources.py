"""Where the templates and themes are, installed or in a source checkout.

An installed reportgen ships them as the packages reportgen.templates and
reportgen.themes (pyproject maps the top-level folders there). Running from a
checkout (``python -m pytest`` puts the repository first on sys.path) finds
the plain folders next to the package instead.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _folder(package: str, fallback: str) -> Path:
    try:
        found = Path(str(resources.files(package)))
        if found.is_dir():
            return found
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / fallback


def templates_dir() -> Path:
    return _folder("reportgen.templates", "templates")


def themes_dir() -> Path:
    return _folder("reportgen.themes", "themes")

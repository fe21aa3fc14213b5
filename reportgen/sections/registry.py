"""Every section, built in or installed: the registry that --only, the schema and the page read.

Built-in sections register on import (``reportgen.sections.builtin``).
Third-party packages add theirs through the entry-point group
``reportgen.sections``: each entry point names a Section subclass (or a module
whose import registers one); its options are validated like the built-in
ones, its ``template_dir`` is searched for its partial, its findings reach
report.json.
"""
from __future__ import annotations

import sys
from importlib import metadata
from typing import Dict, Type

from reportgen.options import Option
from reportgen.sections.base import _REGISTRY, FINDINGS_THRESHOLDS, Section, register_section

ENTRY_POINT_GROUP = "reportgen.sections"
_loaded_plugins = False


class PluginError(Exception):
    """An installed section plugin that cannot be loaded (named by its entry point)."""


def _entry_points():
    if sys.version_info >= (3, 10):
        return metadata.entry_points(group=ENTRY_POINT_GROUP)
    return metadata.entry_points().get(ENTRY_POINT_GROUP, [])  # pragma: no cover


def load_plugins(force: bool = False) -> None:
    """Import every installed section plugin once (``force``: look again, e.g. after an install)."""
    global _loaded_plugins
    if _loaded_plugins and not force:
        return
    _loaded_plugins = True
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must name itself, not crash somewhere later
            raise PluginError(f"section plugin {ep.name!r} ({ep.value}) failed to import: "
                              f"{type(e).__name__}: {e}") from e
        if isinstance(obj, type) and issubclass(obj, Section):
            if obj.name and obj.name != ep.name:
                raise PluginError(f"section plugin {ep.name!r} ({ep.value}) registers itself as {obj.name!r}")
            if _REGISTRY.get(ep.name) is not obj:
                register_section(ep.name)(obj)
        elif ep.name not in _REGISTRY:
            raise PluginError(f"section plugin {ep.name!r} ({ep.value}) is neither a Section subclass "
                              "nor a module that registers one under that name")


def registry() -> Dict[str, Type[Section]]:
    """Registered sections, in report order: the built-in ones, then installed plugins."""
    import reportgen.sections.builtin  # noqa: F401  (registers)
    load_plugins()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def findings_options() -> Dict[str, Option]:
    """Every findings threshold: the shared ones plus those the registered sections add."""
    out = dict(FINDINGS_THRESHOLDS)
    for name, cls in registry().items():
        for key, opt in cls.thresholds.items():
            if key in out and out[key].default != opt.default:
                raise PluginError(f"section {name!r} declares findings.{key} with default {opt.default!r}, "
                                  f"another declares {out[key].default!r}")
            out.setdefault(key, opt)
    return out

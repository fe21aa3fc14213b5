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
from reportgen.sections.base import _REGISTRY, PluginError, Section, declared_thresholds, register_section

ENTRY_POINT_GROUP = "reportgen.sections"
_loaded_plugins = False


def _entry_points():
    if sys.version_info >= (3, 10):
        return metadata.entry_points(group=ENTRY_POINT_GROUP)
    return metadata.entry_points().get(ENTRY_POINT_GROUP, [])  # pragma: no cover


def _named(ep) -> str:
    """How an error names a plugin: the entry point, its target and the package that installed it."""
    dist = getattr(ep, "dist", None)
    source = f", installed by {dist.name} {dist.version}" if dist is not None else ""
    return f"section plugin {ep.name!r} ({ep.value}{source})"


def load_plugins(force: bool = False) -> None:
    """Import every installed section plugin once (``force``: look again, e.g. after an install).

    A plugin that fails raises PluginError, and does so again on the next call:
    a build never goes on quietly without a section that is installed.
    """
    global _loaded_plugins
    if _loaded_plugins and not force:
        return
    _loaded_plugins = False   # True only once every plugin has loaded
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must name itself, not crash somewhere later
            raise PluginError(f"{_named(ep)} failed to import: {type(e).__name__}: {e}") from e
        if isinstance(obj, type) and issubclass(obj, Section):
            if obj.name and obj.name != ep.name:
                raise PluginError(f"{_named(ep)} registers itself as {obj.name!r}")
            if ep.name in _REGISTRY and _REGISTRY[ep.name] is not obj:
                raise PluginError(f"{_named(ep)}: a section {ep.name!r} is already registered "
                                  f"({_REGISTRY[ep.name].__module__})")
            register_section(ep.name)(obj)
        elif ep.name not in _REGISTRY:
            raise PluginError(f"{_named(ep)} is neither a Section subclass "
                              "nor a module that registers one under that name")
    _loaded_plugins = True


def registry() -> Dict[str, Type[Section]]:
    """Registered sections, in report order: the built-in ones, then installed plugins."""
    import reportgen.sections.builtin  # noqa: F401  (registers)
    load_plugins()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def findings_options() -> Dict[str, Option]:
    """Every findings threshold: the shared ones plus those the registered sections add."""
    return declared_thresholds(registry())

"""The example plugin section, installed for a test and forgotten afterwards.

Registration is process-global: the section registry, the "plugins loaded"
flag, sys.path and sys.modules. ``isolated_registry()`` snapshots them and puts
them back, so no other test (the README's option table check, say) sees a
section that a test installed.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from reportgen.sections import base
from reportgen.sections import registry as reg

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = ROOT / "example_configs" / "plugin_section"


def install_plugin(workdir: Path) -> Path:
    """``pip install --target`` the example plugin; returns the target folder (not yet on sys.path).

    pip builds in the source folder (build/, *.egg-info), so it installs from a copy.
    """
    source = workdir / "source"
    target = workdir / "site-packages"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-input", "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, capture_output=True)
    return target


@contextlib.contextmanager
def isolated_registry() -> Iterator[None]:
    """Whatever is registered, put on sys.path or imported from there inside is gone afterwards."""
    reg.registry()   # built-in sections first: their imports cannot be undone, so they stay registered
    saved_sections = dict(base._REGISTRY)
    saved_loaded = reg._loaded_plugins
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    try:
        yield
    finally:
        added = {os.path.join(form, "") for p in sys.path if p not in saved_path
                 for form in (os.path.abspath(p), str(Path(p).resolve()))}
        base._REGISTRY.clear()
        base._REGISTRY.update(saved_sections)
        reg._loaded_plugins = saved_loaded
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(tuple(added)):
                del sys.modules[name]
        importlib.invalidate_caches()


@contextlib.contextmanager
def plugin_on_path(target: Path) -> Iterator[None]:
    """The plugin installed in ``target`` loaded through its entry point, for the ``with`` block only."""
    with isolated_registry():
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
        reg.load_plugins(force=True)
        yield

"""The package's import graph: layered, and free of cycles.

Parsed from the source (``ast``), so imports inside functions count as much as
those at module level: a function-level import that closes a cycle is still a
cycle, only one that fails later. Importing ``a.b.c`` also imports ``a.b``
(its ``__init__``), so that edge is part of the graph too.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import reportgen

PACKAGE_DIR = Path(reportgen.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _imports(module: str, path: Path, known: Set[str]) -> Set[str]:
    """Every reportgen module ``module`` imports, directly, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: Set[str] = set()

    def add(name: str) -> None:
        # the deepest known module named by ``name``, plus every parent package on the way
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in known:
                found.add(candidate)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module or "")
                    if node.level else (node.module or ""))
            add(base)
            for alias in node.names:
                add(f"{base}.{alias.name}")
    found.discard(module)
    # a package's own __init__ importing its parent is not an edge worth following
    return {m for m in found if not module.startswith(m + ".")}


def import_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "reportgen.commands.build" in graph
    # the graph is not empty-handed: the pipeline imports the spec loader
    assert "reportgen.spec" in graph["reportgen.commands.build"]


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles in reportgen/:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# The rooms, lowest first. A module may import its own room and any room below it, never one
# above: the model knows nothing of analyses, an analysis nothing of pages, a page nothing of
# sections, and only the commands (and the entry points) put a build together.
LAYERS = [
    ("base", ("reportgen.errors", "reportgen.atomic", "reportgen.paths", "reportgen.progress",
              "reportgen.report", "reportgen.options", "reportgen.cache", "reportgen.resources")),
    ("model", ("reportgen.model",)),
    ("engine", ("reportgen.engine",)),
    ("analyses", ("reportgen.analyses",)),
    ("render", ("reportgen.render",)),
    ("sections", ("reportgen.sections",)),
    ("spec", ("reportgen.spec",)),
    ("commands", ("reportgen.commands", "reportgen.demo")),
    ("entry", ("reportgen", "reportgen.cli", "reportgen.__main__", "reportgen.distributed")),
]

# Upward imports that are allowed, each with its reason. Keep this list short.
ALLOWED_UPWARD = {
    # the option schema checks a layout name against the tensor layouts the model room knows
    ("reportgen.options", "reportgen.model.layout"),
    ("reportgen.options", "reportgen.model"),  # (its package, imported with it)
}


def _layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def test_every_module_has_a_layer():
    for module in import_graph():
        _layer_of(module)


def test_layers_import_only_downwards():
    graph = import_graph()
    bad = sorted(f"{m} ({LAYERS[_layer_of(m)][0]}) imports {d} ({LAYERS[_layer_of(d)][0]})"
                 for m, deps in graph.items() for d in deps
                 if _layer_of(d) > _layer_of(m) and (m, d) not in ALLOWED_UPWARD)
    assert not bad, "\n".join(bad)


def test_allowed_upward_imports_are_still_needed():
    graph = import_graph()
    stale = sorted(pair for pair in ALLOWED_UPWARD if pair[1] not in graph.get(pair[0], set()))
    assert not stale, f"no longer imported, drop from ALLOWED_UPWARD: {stale}"


def test_at_most_twelve_modules_at_the_top():
    loose = sorted(p.name for p in PACKAGE_DIR.glob("*.py"))
    assert len(loose) <= 12, loose


# What installing reportgen (the cnn-reportgen distribution) brings (pyproject's dependencies, by import name), the
# standard library, and the optional packages each used behind a documented fallback or extra.
DECLARED = {"torch", "torchvision", "jinja2", "markdown", "matplotlib", "numpy", "yaml", "PIL", "tqdm",
            "safetensors", "nh3", "grandalf"}
OPTIONAL = {"timm": "the timm extra", "sklearn": "t-SNE (falls back to PCA)",
            "threadpoolctl": "scikit-learn's own dependency, with it", "openTSNE": "t-SNE (falls back to PCA)",
            "tensorboard": "the tensorboard extra (metrics from event files)"}


def test_every_third_party_import_is_a_dependency_or_a_documented_option():
    """A plain install must run everything but the extras: scipy once crept into the
    compare's rank correlation, and `reportgen demo` failed outside the test venv."""
    import sys

    found: Dict[str, Set[str]] = {}
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(module)
    third_party = {top: mods for top, mods in found.items()
                   if top != "reportgen" and top not in sys.stdlib_module_names and top != "__future__"}
    undeclared = {top: sorted(mods) for top, mods in third_party.items() if top not in DECLARED | set(OPTIONAL)}
    assert not undeclared, undeclared


def test_paths_is_low_level():
    """Every layer names files through ``reportgen.paths``: it must import nothing of ours."""
    assert import_graph()["reportgen.paths"] == set()

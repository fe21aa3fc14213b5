"""YAML loading that remembers where every key came from.

PyYAML's plain loaders forget positions, and every error we report must name
the line. We compose the node tree ourselves and record, for each key path
(`sections.cam.methods[1]`), the 1-based line where it appears.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Tuple

import yaml

from reportgen.errors import SpecError
from reportgen.options import join_path

Lines = Dict[str, int]

ALIAS_REFUSED = "YAML aliases (*name) are not supported in specs"


class _AliasNode(yaml.ScalarNode):
    """Where an alias (``*name``) stood: kept as a leaf so the walk below can refuse it there.

    An alias makes the node tree a graph; nine levels of nine aliases each
    (a "billion laughs" of 300 bytes) would take our path-recording walk
    9**9 steps. Refusing aliases keeps the walk linear in the file's size.
    """

    def __init__(self, event: yaml.AliasEvent):
        super().__init__("!alias", event.anchor, event.start_mark, event.end_mark)


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer, except that an alias becomes an ``_AliasNode`` instead of
    the anchored node itself (so no node is reached twice)."""

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            return _AliasNode(self.get_event())
        return super().compose_node(parent, index)


def _refuse_alias(node: yaml.Node, path: str, file: str) -> None:
    if isinstance(node, _AliasNode):
        raise SpecError(f"{ALIAS_REFUSED}: *{node.value}", file, path or None, node.start_mark.line + 1)


def _construct(node: yaml.Node, path: str, lines: Lines, file: str) -> Any:
    _refuse_alias(node, path, file)
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: Dict[Any, Any] = {}
        for key_node, value_node in node.value:
            _refuse_alias(key_node, path, file)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("mapping keys must be plain scalars", file, path or None,
                                key_node.start_mark.line + 1)
            key = _scalar(key_node)
            sub = join_path(path, key)
            if key in out:
                raise SpecError(f"duplicate key {key!r}", file, sub, key_node.start_mark.line + 1)
            lines[sub] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, sub, lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, join_path(path, i), lines, file) for i, v in enumerate(node.value)]
    return _scalar(node)


# YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: 1e-3, 5E+2 (no dot).
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


def _scalar(node: yaml.ScalarNode) -> Any:
    """A scalar as PyYAML reads it, except that ``1e-3`` is the number users mean."""
    if node.tag == "tag:yaml.org,2002:str" and node.style is None and _FLOAT_12.match(node.value):
        return float(node.value)
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_yaml(path: Path) -> Tuple[Any, Lines, str]:
    """Parse ``path``; return (data, key-path -> line, raw text).

    Syntax errors become SpecError with the parser's line. Aliases are refused
    (``_AliasNode``), tags beyond the safe set by SafeLoader.
    """
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError("spec file not found", file) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file", file) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text ({e.reason})", file) from None
    return parse_yaml(text, file) + (text,)


def parse_yaml(text: str, file: str) -> Tuple[Any, Lines]:
    try:
        node = yaml.compose(text, Loader=_Composer)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise SpecError(f"invalid YAML: {e.problem or e.context}", file, None, line) from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}", file) from None
    if node is None:
        raise SpecError("the spec is empty", file)
    lines: Lines = {}
    try:
        data = _construct(node, "", lines, file)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        raise SpecError(f"invalid YAML: {e.problem}", file, None,
                        mark.line + 1 if mark else None) from None
    return data, lines

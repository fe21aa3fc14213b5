"""Class names for the model's outputs, from the spec's ``classes`` key.

Names only label things in the report, but a wrong-length list silently shifts
every label by one, so the count is checked against the model's outputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from reportgen.errors import InputError, suggest

__all__ = ["load_classes", "default_classes", "resolve_targets", "TargetError"]

PathLike = Union[str, "os.PathLike[str]"]


def default_classes(num_classes: int) -> List[str]:
    return [f"class_{i}" for i in range(num_classes)]


class TargetError(ValueError):
    """A class target that names no class; ``index``: its place in a list (None: the value itself)."""

    def __init__(self, message: str, index: Optional[int] = None):
        super().__init__(message)
        self.index = index


def class_index(value: Any, classes: Sequence[str]) -> int:
    """A class given by index or name, as its index; TargetError otherwise."""
    if isinstance(value, int):
        if not 0 <= value < len(classes):
            raise TargetError(f"class index {value} is out of range (0..{len(classes) - 1})")
        return value
    if value in classes:
        return list(classes).index(value)
    raise TargetError(f"unknown class {value!r}{suggest(value, classes)}")


def resolve_targets(targets: Any, n: int, classes: Sequence[str]) -> List[Optional[int]]:
    """The class each of ``n`` probes is explained for (None: the model's predicted class), from
    ``predicted``, a class name or index (every probe), or a list with one per probe (each a
    name, an index or ``predicted``): ``probes.targets`` and ``sections.occlusion.target``."""
    if targets == "predicted":
        return [None] * n
    if isinstance(targets, list):
        if len(targets) != n:
            raise TargetError(f"has {len(targets)} targets but {n} probe images matched")
        out: List[Optional[int]] = []
        for i, t in enumerate(targets):
            try:
                out.append(None if t == "predicted" else class_index(t, classes))
            except TargetError as e:
                raise TargetError(str(e), i) from None
        return out
    return [class_index(targets, classes)] * n


def load_classes(value: Union[None, PathLike, Sequence[Any]], base_dir: PathLike,
                 num_classes: Optional[int] = None) -> List[str]:
    """Class names from a list, a ``.txt``/``.json`` file (relative to ``base_dir``) or defaults.

    ``num_classes`` (the model's output width, when known) must equal the
    number of names; InputError with both numbers otherwise.
    """
    if value is None:
        if num_classes is None:
            raise InputError("cannot name the classes: no `classes` given and the number of "
                             "model outputs is unknown")
        return default_classes(num_classes)
    if isinstance(value, (str, os.PathLike)):
        path = _resolve(value, base_dir)
        names = _read_file(path)
        where: Optional[Union[str, Path]] = path
    elif isinstance(value, Sequence):
        names = [_name(v, i, None) for i, v in enumerate(value)]
        where = None
    else:
        raise InputError(f"`classes` must be a list or a path to a .txt/.json file, "
                         f"not {type(value).__name__}")
    if not names:
        raise InputError("the class list is empty", where)
    if num_classes is not None and len(names) != num_classes:
        raise InputError(f"{len(names)} class names given but the model has {num_classes} "
                         f"outputs", where)
    return names


def _resolve(value: PathLike, base_dir: PathLike) -> Path:
    p = Path(os.path.expanduser(str(value)))
    p = p if p.is_absolute() else Path(base_dir) / p
    if not p.is_file():
        raise InputError("class list file not found" if not p.exists() else
                         "class list path is not a file", p)
    return p


def _read_file(path: Path) -> List[str]:
    try:
        # utf-8-sig: files saved by Windows editors start with a BOM that would
        # otherwise become part of the first class name.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the class list: {e}", path) from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _from_json(text, path)
    if suffix in (".txt", ".names", ".labels", ""):
        return [line.strip() for line in text.splitlines() if line.strip()]
    raise InputError(f"unsupported class list format {suffix!r}: use .txt (one name per "
                     f"line) or .json (a list, or an index -> name mapping)", path)


def _from_json(text: str, path: Path) -> List[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                         path) from None
    if isinstance(data, list):
        return [_name(v, i, path) for i, v in enumerate(data)]
    if isinstance(data, Mapping):
        return _from_index_mapping(data, path)
    raise InputError("a JSON class list must be a list of names or an object "
                     "mapping index -> name", path)


def _from_index_mapping(data: Mapping[str, Any], path: Path) -> List[str]:
    """``{"0": "cat"}`` or ImageNet's ``{"0": ["n01440764", "tench"]}``, indices 0..N-1."""
    by_index = {}
    for key, v in data.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise InputError(f"class index {key!r} is not an integer (expected an object "
                             f"mapping \"0\", \"1\", ... to names)", path) from None
        by_index[index] = _name(v, index, path)
    expected = set(range(len(by_index)))
    if set(by_index) != expected:
        gaps = sorted(expected - set(by_index))[:10]
        raise InputError(f"class indices must run 0..{len(by_index) - 1} without gaps; "
                         f"missing {gaps}", path)
    return [by_index[i] for i in range(len(by_index))]


def _name(v: Any, index: int, path: Optional[Path]) -> str:
    """A display name; for ``[wnid, readable]`` pairs the readable (last) part."""
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (str, int, float)) for x in v):
        v = v[-1]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise InputError(f"class {index} must be a name (a string), not {v!r}", path)
    name = str(v).strip()
    if not name:
        raise InputError(f"class {index} has an empty name", path)
    return name

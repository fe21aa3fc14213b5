"""Loading and checking a spec: syntax and schema here, files and model in resolve.py."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from reportgen.errors import SpecError
from reportgen.options import OptionError, join_path
from reportgen.spec.schema import SPEC
from reportgen.spec.yamlload import Lines, load_yaml


@dataclass
class Spec:
    """A schema-checked spec plus what is needed to point at its lines."""

    data: Dict[str, Any]
    file: str
    base_dir: Path
    lines: Lines = field(default_factory=dict)
    digest: str = ""
    given_paths: frozenset = frozenset()   # key paths the user wrote (defaults filled in are not)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def line(self, key_path: str) -> Optional[int]:
        """Line of ``key_path``, or of its nearest ancestor present in the file."""
        return line_of(self.lines, key_path)

    def given(self, key_path: str) -> bool:
        """Whether the user wrote ``key_path`` (a YAML file or a dict alike)."""
        return key_path in self.given_paths

    def error(self, key_path: str, message: str) -> SpecError:
        return SpecError(message, self.file, key_path, self.line(key_path))

    def path(self, value: str) -> Path:
        """A spec path made absolute relative to the spec's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def line_of(lines: Lines, key_path: str) -> Optional[int]:
    """Line of ``key_path`` in the loader's line map, or of its nearest ancestor there."""
    path = key_path
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def _check(data: Any, file: str, lines: Lines) -> Dict[str, Any]:
    try:
        return SPEC.check(data, "")
    except OptionError as e:
        raise SpecError(e.message, file, e.path or None, line_of(lines, e.path)) from None


def load_spec(source: Union[str, Path, Dict[str, Any], Spec], base_dir: Optional[Path] = None) -> Spec:
    """A Spec from a YAML path, a dict (paths relative to ``base_dir`` or cwd), or a Spec."""
    if isinstance(source, Spec):
        return source
    if isinstance(source, dict):
        import json
        base = Path(base_dir or Path.cwd()).resolve()
        digest = hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()
        return Spec(_check(source, "<dict>", {}), "<dict>", base, {}, digest, frozenset(_key_paths(source)))
    path = Path(source)
    data, lines, text = load_yaml(path)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Spec(_check(data, str(path), lines), str(path), path.resolve().parent, lines, digest,
                frozenset(lines))


def _key_paths(value: Any, path: str = "") -> Iterator[str]:
    """Every key path in a plain dict spec, in the style of the YAML loader's line map."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _key_paths(sub, join_path(path, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _key_paths(sub, join_path(path, i))

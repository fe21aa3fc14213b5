"""Declarative option types: each option checks its own value.

Modelled on MkDocs' config_options, with one addition: every error carries
the key path, and the loader turns the path into a line number.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, Optional, Sequence

from reportgen.spec.yamlload import join_path


class OptionError(Exception):
    """A bad value at ``path``; the schema adds file and line."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.message = message
        self.path = path


_REQUIRED = object()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


class Option:
    """One key's schema: default, doc string, and a check that normalizes the value."""

    check_default = False  # nested mappings fill in their own defaults

    def __init__(self, default: Any = _REQUIRED, doc: str = ""):
        self.default = default
        self.doc = doc

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any, path: str) -> Any:
        return value


class Anything(Option):
    pass


class Str(Option):
    def __init__(self, default: Any = _REQUIRED, doc: str = "", nonempty: bool = True,
                 nullable: bool = False):
        super().__init__(default, doc)
        self.nonempty = nonempty
        self.nullable = nullable

    def check(self, value: Any, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, str):
            raise OptionError(f"expected a string, got {_type_name(value)}", path)
        if self.nonempty and not value.strip():
            raise OptionError("must not be empty", path)
        return value


class Int(Option):
    def __init__(self, default: Any = _REQUIRED, doc: str = "", min: Optional[int] = None,
                 max: Optional[int] = None, nullable: bool = False):
        super().__init__(default, doc)
        self.min, self.max, self.nullable = min, max, nullable

    def check(self, value: Any, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"expected an integer, got {_type_name(value)}", path)
        if self.min is not None and value < self.min:
            raise OptionError(f"must be >= {self.min}, got {value}", path)
        if self.max is not None and value > self.max:
            raise OptionError(f"must be <= {self.max}, got {value}", path)
        return value


class Float(Option):
    def __init__(self, default: Any = _REQUIRED, doc: str = "", min: Optional[float] = None,
                 max: Optional[float] = None):
        super().__init__(default, doc)
        self.min, self.max = min, max

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"expected a number, got {_type_name(value)}", path)
        if value != value:
            raise OptionError("must be a number, got NaN", path)
        if self.min is not None and value < self.min:
            raise OptionError(f"must be >= {self.min}, got {value}", path)
        if self.max is not None and value > self.max:
            raise OptionError(f"must be <= {self.max}, got {value}", path)
        return float(value)


class Bool(Option):
    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, bool):
            raise OptionError(f"expected true or false, got {_type_name(value)}", path)
        return value


class Choice(Option):
    def __init__(self, choices: Sequence[Any], default: Any = _REQUIRED, doc: str = ""):
        super().__init__(default, doc)
        self.choices = list(choices)

    def check(self, value: Any, path: str) -> Any:
        if value not in self.choices or isinstance(value, bool) != any(
                isinstance(c, bool) and c == value for c in self.choices):
            raise OptionError(f"must be one of {', '.join(map(repr, self.choices))}"
                              f"{suggest(value, self.choices)}, got {value!r}", path)
        return value


class ListOf(Option):
    """A list of items; a single item is accepted as a one-element list when ``coerce``."""

    def __init__(self, item: Option, default: Any = _REQUIRED, doc: str = "",
                 min_len: int = 0, max_len: Optional[int] = None, coerce: bool = False,
                 nullable: bool = False):
        super().__init__(default, doc)
        self.item, self.min_len, self.max_len = item, min_len, max_len
        self.coerce, self.nullable = coerce, nullable

    def check(self, value: Any, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, list):
            if self.coerce and not isinstance(value, dict):
                value = [value]
            else:
                raise OptionError(f"expected a list, got {_type_name(value)}", path)
        if len(value) < self.min_len:
            raise OptionError(f"needs at least {self.min_len} item(s), got {len(value)}", path)
        if self.max_len is not None and len(value) > self.max_len:
            raise OptionError(f"takes at most {self.max_len} item(s), got {len(value)}", path)
        return [self.item.check(v, join_path(path, i)) for i, v in enumerate(value)]


class OneOf(Option):
    """The first alternative that accepts the value wins; the error lists them all."""

    def __init__(self, *alternatives: Option, default: Any = _REQUIRED, doc: str = "",
                 expected: str = ""):
        super().__init__(default, doc)
        self.alternatives = alternatives
        self.expected = expected

    def check(self, value: Any, path: str) -> Any:
        errors: List[OptionError] = []
        for alt in self.alternatives:
            try:
                return alt.check(value, path)
            except OptionError as e:
                errors.append(e)
        deeper = [e for e in errors if e.path != path]
        if deeper:  # a nested value was wrong: that message is the useful one
            raise deeper[0]
        raise OptionError(f"expected {self.expected}, got {value!r}" if self.expected
                          else errors[-1].message, path)


class Mapping(Option):
    """A fixed set of keys, each with its own Option; unknown keys are errors."""

    check_default = True

    def __init__(self, fields: Dict[str, Option], default: Any = None, doc: str = "",
                 post: Optional[Callable[[Dict[str, Any], str], None]] = None,
                 required: bool = False):
        super().__init__(_REQUIRED if required else ({} if default is None else default), doc)
        self.fields = fields
        self.post = post

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise OptionError(f"expected a mapping, got {_type_name(value)}", path)
        for key in value:
            if key not in self.fields:
                raise OptionError(f"unknown key {key!r}{suggest(key, self.fields)}; valid keys: "
                                  f"{', '.join(self.fields)}", join_path(path, key))
        out: Dict[str, Any] = {}
        for key, opt in self.fields.items():
            sub = join_path(path, key)
            if key in value:
                out[key] = opt.check(value[key], sub)
            elif opt.required:
                raise OptionError("is required", sub)
            else:
                out[key] = opt.check(opt.default, sub) if opt.check_default else opt.default
        if self.post is not None:
            self.post(out, path)
        return out


class FreeMapping(Option):
    """Any mapping with string keys (e.g. model kwargs)."""

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise OptionError(f"expected a mapping, got {_type_name(value)}", path)
        for k in value:
            if not isinstance(k, str):
                raise OptionError(f"keys must be strings, got {k!r}", join_path(path, k))
        return dict(value)


def suggest(value: Any, choices) -> str:
    """A ' (did you mean 'x'?)' hint, or ''."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

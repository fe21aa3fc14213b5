"""Declarative option types: each option checks its own value.

Modelled on MkDocs' config_options, with one addition: every error carries
the key path, and the loader turns the path into a line number.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from reportgen.errors import suggest


class OptionError(Exception):
    """A bad value at ``path``; the schema adds file and line."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.message = message
        self.path = path


_REQUIRED = object()


def join_path(parent: str, key: Any) -> str:
    """Key path in the style of the errors: `a.b[2].c`."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


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
    """A fixed set of keys, each with its own Option; unknown keys are errors.

    ``aliases`` maps an old key to its new name: the old one is still read (as the new one).
    """

    check_default = True

    def __init__(self, fields: Dict[str, Option], default: Any = None, doc: str = "",
                 post: Optional[Callable[[Dict[str, Any], str], None]] = None,
                 required: bool = False, aliases: Optional[Dict[str, str]] = None):
        super().__init__(_REQUIRED if required else ({} if default is None else default), doc)
        self.fields = fields
        self.post = post
        self.aliases = dict(aliases or {})

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise OptionError(f"expected a mapping, got {_type_name(value)}", path)
        written: Dict[str, str] = {}  # new name -> the old one the user wrote, for error paths
        if any(old in value for old in self.aliases):
            value = dict(value)
            for old, new in self.aliases.items():
                if old in value:
                    if new in value:
                        raise OptionError(f"{old!r} is the old name of {new!r}: give one of them",
                                          join_path(path, old))
                    value[new] = value.pop(old)
                    written[new] = old
        for key in value:
            if key not in self.fields:
                raise OptionError(f"unknown key {key!r}{suggest(key, self.fields)}; valid keys: "
                                  f"{', '.join(self.fields)}", join_path(path, key))
        out: Dict[str, Any] = {}
        for key, opt in self.fields.items():
            sub = join_path(path, written.get(key, key))
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


# --------------------------------------------------------------------------- shared shapes

def class_targets(default: Any = "predicted", doc: str = "", nullable: bool = False) -> Option:
    """Which class maps explain, per probe: ``predicted``, a class name or index (every probe), or
    a list with one per probe; ``model.classes.resolve_targets`` reads it against the classes."""
    alternatives: List[Option] = [Choice(["predicted"]), Str(),
                                  ListOf(OneOf(Int(min=0), Str(), expected="a class index or name")), Int(min=0)]
    return OneOf(*([Choice([None])] if nullable else []), *alternatives, default=default, doc=doc,
                 expected=("null, " if nullable else "") + "'predicted', a class name or a list (one per image)")


AUTO = "auto"


class LayerName(Str):
    """A dotted ``named_modules()`` name. ``spatial``: its output must be an (N, C, H, W) map.

    The name itself is checked against the model in the resolver (the schema
    has no model); the flag is what tells the resolver which layers must also
    produce a spatial map, so a section states the constraint where it declares
    the option instead of in a list kept elsewhere.
    """

    def __init__(self, default: Any = _REQUIRED, doc: str = "", spatial: bool = False):
        super().__init__(default, doc)
        self.spatial = spatial


def auto_or(opt: Option, default: Any = AUTO, doc: str = "", expected: str = "") -> Option:
    """'auto' or ``opt``: every automatic choice is written into report.json."""
    return OneOf(Choice([AUTO]), opt, default=default, doc=doc,
                 expected=expected or f"'auto' or {describe(opt)}")


def layer(spatial: bool = False, doc: str = "") -> Option:
    return auto_or(LayerName(spatial=spatial), doc=doc)


def layers(spatial: bool = False, doc: str = "") -> Option:
    return auto_or(ListOf(LayerName(spatial=spatial), coerce=True, min_len=1), doc=doc)


LAYOUT_DOC = ("how the named layers hold their maps: auto (detected), nchw, nhwc (channels-last) or "
              "tokens (N, L, C; class/register tokens dropped); automatic layer choices are always detected")


def layout(doc: str = LAYOUT_DOC) -> Option:
    """The ``layout`` option of a section with named layers (see ``reportgen.model.layout``)."""
    from reportgen.model.layout import KINDS

    return Choice([AUTO, *KINDS], default=AUTO, doc=doc)


def int_or_pair(min_value: int = 1, default: Any = _REQUIRED, doc: str = "") -> Option:
    return OneOf(Int(min=min_value), ListOf(Int(min=min_value), min_len=2, max_len=2), default=default,
                 doc=doc, expected=f"an integer >= {min_value} or a list [h, w]")


def describe(opt: Option) -> str:
    if isinstance(opt, ListOf):
        return "a list of layer names" if isinstance(opt.item, LayerName) else "a list"
    if isinstance(opt, LayerName):
        return "a layer name"
    if isinstance(opt, Str):
        return "a string"
    return "a value"


def layer_option(opt: Option) -> Optional[LayerName]:
    """The LayerName inside ``opt`` (through 'auto or ...' and lists), or None."""
    if isinstance(opt, LayerName):
        return opt
    if isinstance(opt, ListOf):
        return layer_option(opt.item)
    if isinstance(opt, OneOf):
        for alt in opt.alternatives:
            found = layer_option(alt)
            if found is not None:
                return found
    return None


def default_text(opt: Option) -> str:
    """The default as a user writes it in YAML, for generated documentation."""
    if opt.required:
        return "required"
    value = opt.default
    if isinstance(opt, Mapping):
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)

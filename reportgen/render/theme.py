"""Themes: a built-in stylesheet by name, or the user's CSS file, made safe to inline.

User CSS is inlined into the report, and the report must never make a request
nor run code. A theme that could (@import, a url() that is not data: or #id,
image()/image-set(), old browsers' expression()/behavior/-moz-binding) is refused
with its file and line, not quietly edited: the user learns why their styling is
not there. Backslash escapes are refused too, since ``u\\72l(`` is ``url(`` to a
browser but not to a pattern; a theme writes the character itself (UTF-8).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from reportgen.errors import InputError

BUILTIN = ("light", "dark")

# (pattern, what it is): each would make the page fetch something or run script.
_REFUSED = (
    (re.compile(r"\\"), "a backslash escape (it can spell url( or @import past this check; "
                         "write the character itself)"),
    (re.compile(r"@import\b", re.IGNORECASE), "@import (a report is self-contained)"),
    (re.compile(r"(?<![\w-])url\((?!\s*['\"]?\s*(?:data:|#))", re.IGNORECASE),
     "url() of something other than data: or #id (a report never fetches)"),
    (re.compile(r"(?<![\w-])(?:-webkit-)?image(?:-set)?\(", re.IGNORECASE),
     "image() / image-set() (they fetch the URLs they name)"),
    (re.compile(r"(?<![\w-])expression\(", re.IGNORECASE), "expression() (script in old browsers)"),
    (re.compile(r"(?<![\w-])behavior\s*:", re.IGNORECASE), "behavior: (script in old browsers)"),
    (re.compile(r"-moz-binding", re.IGNORECASE), "-moz-binding (script in old browsers)"),
)
_STYLE_END = re.compile(r"</", re.IGNORECASE)


def builtin_css(name: str) -> str:
    from reportgen.resources import themes_dir

    return (themes_dir() / f"{name}.css").read_text(encoding="utf-8")


def sanitize_css(css: str, path: str, resolved: Optional[Path] = None) -> str:
    """``css`` ready to inline: InputError (naming the file, as the spec wrote ``path``, and the
    line) for anything in ``_REFUSED``; '</' escaped so no '</style>' can end the <style> block."""
    found = [(m.start(), what) for pattern, what in _REFUSED for m in [pattern.search(css)] if m]
    if found:
        start, what = min(found)      # the first one in the file
        raise InputError(f"line {css.count(chr(10), 0, start) + 1}: {what} is not allowed in a theme", path,
                         resolved)
    return _STYLE_END.sub("<\\\\/", css)


def load_theme(theme: str, base_dir: Path) -> str:
    """CSS text for ``theme``: the base stylesheet plus the chosen theme."""
    base = builtin_css("base")
    if theme in BUILTIN:
        return base + "\n" + builtin_css(theme)
    path = Path(theme).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise InputError(f"theme must be one of {', '.join(BUILTIN)} or a CSS file; "
                         f"file not found: {path}")
    try:
        user = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("the theme CSS file is not UTF-8 text", theme, path) from None
    return base + "\n" + builtin_css("light") + "\n/* user theme */\n" + sanitize_css(user, theme, path)

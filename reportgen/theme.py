"""Themes: a built-in stylesheet by name, or the user's CSS file, made safe to inline.

User CSS is inlined into the report, so anything in it that would fetch from
outside (@import, url(http...)) is removed: the report must never make a request.
"""
from __future__ import annotations

import re
from pathlib import Path

from reportgen.errors import InputError

BUILTIN = ("light", "dark")

_IMPORT = re.compile(r"@import\b[^;]*;?", re.IGNORECASE)
_URL = re.compile(r"url\(\s*(['\"]?)(?!data:|#)([^)'\"]*)\1\s*\)", re.IGNORECASE)
_STYLE_END = re.compile(r"</", re.IGNORECASE)


def builtin_css(name: str) -> str:
    from reportgen.resources import themes_dir

    return (themes_dir() / f"{name}.css").read_text(encoding="utf-8")


def sanitize_css(css: str) -> str:
    """Drop @import and non-data url(); make '</style>' impossible inside the <style> block."""
    css = _IMPORT.sub("/* (an import was removed: reports are self-contained) */", css)
    css = _URL.sub("none", css)
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
        raise InputError("the theme CSS file is not UTF-8 text", path) from None
    return base + "\n" + builtin_css("light") + "\n/* user theme */\n" + sanitize_css(user)

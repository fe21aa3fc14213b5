"""Paths: how a spec's paths and globs are found, and the one rule for paths a report shows.

A path or glob in a spec is relative to the spec's folder (``user_path``);
globs are recursive and list files in natural order (``glob_files``), the
order every input list (checkpoints, probes, datasets) keeps.

A report shows a path relative to the spec's folder, else only its file name.

Reports go public (GitHub Pages, review attachments). The absolute paths of the
machine that built them (user names, folder layout) must stay out of the page
and report.json, whether a path is printed on purpose (a checkpoint, the
TorchScript file, a compare's pass file) or rides along in an exception's text.

Low level on purpose: imports nothing from reportgen, so every layer can use it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath
from typing import List, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]
GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(s: Union[str, Path]) -> Tuple:
    """Sort key so ``epoch_2`` comes before ``epoch_10`` (plain sorting puts 10 first).

    Text pieces compare case-insensitively; the original string breaks ties so
    the order is total and stable across platforms.
    """
    text = str(s)
    parts = re.split(r"(\d+)", text)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return key + (text,)


def is_glob(pattern: PathLike) -> bool:
    return bool(GLOB_CHARS.search(str(pattern)))


def user_path(pattern: PathLike, base: PathLike) -> Path:
    """A path or glob as a spec writes it: ``~`` expanded, relative to ``base`` (the spec's folder)."""
    full = Path(os.path.expanduser(str(pattern)))
    return full if full.is_absolute() else Path(base) / full


def glob_files(full: Path) -> List[Path]:
    """The files a recursive glob matches, in natural order."""
    import glob

    return sorted((Path(h) for h in glob.glob(str(full), recursive=True) if os.path.isfile(h)), key=natural_key)


def public_path(path: PathLike, base_dir: PathLike) -> str:
    """``path`` as a published report may show it: relative to ``base_dir`` (the spec's
    folder), else only its file name. A relative ``path`` is taken from ``base_dir``."""
    text = str(path)
    if _is_windows_absolute(text):      # another OS's path: only its name means anything here
        return PureWindowsPath(text).name
    p = Path(os.path.expanduser(text))
    p = p if p.is_absolute() else Path(base_dir) / p
    try:
        return p.resolve().relative_to(Path(base_dir).resolve()).as_posix()
    except ValueError:
        return p.name


# An absolute path inside free text: '/...', '~/...' or '~user/...', 'C:\...' or 'C:/...', either in
# quotes (taken whole, spaces and all) or bare up to a space or punctuation that ends a path in
# messages (':' as in 'file.py:12', ',', quotes, brackets). A '/' right after a word, a dot, a
# colon or another slash is not a start: 'a/b' is relative, 'https://x/y' a URL, '1/2' a number.
_START = r"(?:~[\w.-]*/|[A-Za-z]:[/\\]|/)(?!/)"
_QUOTED = rf"""(?P<q>['"])(?P<quoted>{_START}[^'"\n]*?)(?P=q)"""
_BARE = rf"""(?<![\w.~/\\:])(?P<bare>{_START}[^\s'"`<>|:;,()\[\]{{}}]+)"""
_ABSOLUTE = re.compile(f"{_QUOTED}|{_BARE}")


def public_text(text: str, base_dir: PathLike) -> str:
    """``text`` (an exception's message, a note) with every absolute path in it replaced by
    its ``public_path``; the rest, relative paths included, is left as it was."""
    return _ABSOLUTE.sub(lambda m: _public_match(m, base_dir), text)


def _public_match(m: "re.Match[str]", base_dir: PathLike) -> str:
    if m.group("quoted") is not None:
        return f"{m.group('q')}{public_path(m.group('quoted'), base_dir)}{m.group('q')}"
    token = m.group("bare")
    stripped = token.rstrip(".")          # a sentence's full stop is not part of the name
    return public_path(stripped, base_dir) + token[len(stripped):]


def _is_windows_absolute(text: str) -> bool:
    return bool(re.match(r"[A-Za-z]:[/\\]", text))

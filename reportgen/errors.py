"""Errors that end a build with a message instead of a traceback.

Exit codes (SPEC.md): 2 for anything the user can fix in their spec or their
inputs, 1 for our bugs, 3 for a tripped ``--fail-on`` gate.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Optional, Union

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_FAIL_ON = 3

# How alike a misspelt name and a valid one must be (difflib's ratio) to be suggested
SUGGEST_CUTOFF = 0.6


def suggest(value: Any, choices: Iterable[Any], most: int = 1) -> str:
    """The " (did you mean 'x'?)" hint every error about an unknown name carries, or ''."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=most, cutoff=SUGGEST_CUTOFF)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


class ReportgenError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    exit_code = EXIT_BAD_INPUT


class SpecError(ReportgenError):
    """A bad value in the spec, located by file, YAML key path and line."""

    def __init__(self, message: str, file: Optional[Union[str, Path]] = None,
                 key: Optional[str] = None, line: Optional[int] = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class InputError(ReportgenError):
    """A bad input file (image, checkpoint, class list) named by its path.

    ``path`` is as the caller wrote it (a spec's relative path or glob);
    ``resolved``, when given, is the absolute path that was looked at.
    """

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None,
                 resolved: Optional[Union[str, Path]] = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.resolved = str(resolved) if resolved is not None else None
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(text + (f" (resolved: {self.resolved})" if self.resolved else ""))


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded safely or does not fit the model."""


class ImageError(InputError):
    """A file that is not a readable image."""


class NotApplicable(Exception):
    """A section that does not apply to this model or spec (e.g. hooks on TorchScript).

    Not an error: the report shows the reason (and the hint: what would make it
    apply) in place of the section, and report.json records the reason under
    ``skipped``. The one way to say "does not apply here": a section, or a
    method inside one, that raises anything else has failed.
    """

    def __init__(self, reason: str, hint: Optional[str] = None):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


class MethodNotApplicable(NotApplicable, ValueError):
    """One attribution method does not apply to this model (``cam`` without a GAP + linear head,
    guided backprop without ReLUs, hooks on TorchScript, a token layer with no reshape).

    The attribution sections turn it, and only it, into an info note for that method; any
    other exception a method raises is a bug and an error finding. It is also a ValueError,
    so ``reportgen.explain`` keeps its contract: what it refuses, it refuses with a
    ValueError that says why.
    """

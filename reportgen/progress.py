"""Progress on stderr: bars on a terminal, one plain line per step anywhere else.

A CI log is a file: tqdm's carriage-return frames would fill it with hundreds
of partial lines per build, so bars are drawn only when stderr is a terminal;
the step lines (``log``) are written either way, and ``--quiet`` silences both.
stdout stays clean for the report's path.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional


def bars_wanted(quiet: bool) -> bool:
    """Draw progress bars? Only for a person at a terminal."""
    return not quiet and sys.stderr.isatty()


class Progress:
    """tqdm bars on a terminal; step lines on stderr unless quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, iterable: Iterable, desc: str, total: Optional[int] = None) -> Iterable:
        if not bars_wanted(self.quiet):
            return iterable
        from tqdm.auto import tqdm
        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True, mininterval=0.5)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if bars_wanted(self.quiet):
            from tqdm.auto import tqdm
            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

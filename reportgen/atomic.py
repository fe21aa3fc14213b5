"""Writing a file by rename: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, text: str) -> None:
    atomic_write_with(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` fills a temp file beside ``path``, which then replaces ``path`` in one rename.

    A callback, not bytes, so an .npz streams into the file (numpy adds ".npz"
    to a name without it, never to a file object); on any failure the temp
    file goes and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

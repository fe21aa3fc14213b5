"""Writing a file by rename: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Optional


def atomic_write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, content: bytes, mode: int = 0o644) -> None:
    atomic_write_with(path, lambda f: f.write(content), mode)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
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
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_files(folder: Path, files: Dict[str, bytes]) -> None:
    """Files into a staged folder, each flushed to disk before the folder is renamed into place."""
    for name, content in files.items():
        with open(folder / name, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(folder / name, 0o644)


def _renameat2() -> Optional[Callable[[Path, Path], bool]]:
    """``renameat2(..., RENAME_EXCHANGE)`` from the C library, or None where there is none."""
    if os.name != "posix":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2     # the C library already loaded
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, exchange = -100, 2

    def swap(a: Path, b: Path) -> bool:
        if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), exchange) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EXDEV, errno.ENOTSUP, errno.EPERM):
            return False
        raise OSError(err, os.strerror(err), str(b))
    return swap


_exchange = _renameat2()
CAN_EXCHANGE = _exchange is not None


def exchange(a: Path, b: Path) -> bool:
    """Swap two folders (or files) in one atomic step; False where this system cannot."""
    return _exchange is not None and _exchange(a, b)

"""A content-keyed cache of computed sections, so an unchanged rebuild is fast.

Stored as JSON plus an .npz of arrays (``allow_pickle=False``): a cache folder
is data, never code, so a planted file cannot run anything on load.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import numpy as np


def default_dir() -> Path:
    env = os.environ.get("REPORTGEN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reportgen"


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def to_plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tensors -> numpy, tuples -> lists: what report.results holds."""
    try:
        import torch
        if torch.is_tensor(obj):
            return obj.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _split_arrays(obj: Any, arrays: Dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        return {k: _split_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_split_arrays(v, arrays) for v in obj]
    return obj


def _join_arrays(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return arrays[obj["__ndarray__"]]
        return {k: _join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


def save_plain(path: Path, obj: Any) -> None:
    """``obj`` (dataclasses, dicts, lists, numpy arrays) as one .npz: its arrays plus a JSON
    skeleton; no pickle, so ``load_plain`` reads it back with ``allow_pickle=False``. Written by
    rename (``atomic_write_with``): a reader never finds half a file."""
    from reportgen.atomic import atomic_write_with

    arrays: Dict[str, np.ndarray] = {}
    skeleton = _split_arrays(to_plain(obj), arrays)
    atomic_write_with(Path(path), lambda f: np.savez_compressed(f, __skeleton__=np.array(json.dumps(skeleton)),
                                                                **arrays))


def load_plain(path: Path) -> Any:
    """What ``save_plain`` wrote, as plain dicts, lists and arrays."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return _join_arrays(json.loads(str(arrays.pop("__skeleton__"))), arrays)


T = TypeVar("T")
# What a file that is not a saved pass can raise while read: a zip cut short or not a zip at all,
# an inflated member that fails its CRC, JSON that is not a skeleton, fields of the wrong kind.
NOT_A_PASS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError, EOFError,
              zipfile.BadZipFile, zlib.error)


def read_pass_file(path: Any, what: str, read: Callable[[], T]) -> T:
    """``read()`` a saved pass (compare, audit, top-k); a file that is not one is a ValueError
    saying "PATH is not WHAT (why)" in the file's terms (numpy's pickle advice is not ours to give)."""
    try:
        return read()
    except NOT_A_PASS as e:
        why = ((f"no {e.args[0]!r} in it" if e.args else "a key is missing") if isinstance(e, KeyError) else
               "not an .npz of plain arrays: pickled data is never loaded" if "pickle" in str(e) else str(e))
        raise ValueError(f"{path} is not {what} ({why})") from e


class SectionCache:
    """get/put of (plain results, rendered view, summary, findings) by key."""

    def __init__(self, root: Optional[Path] = None, enabled: bool = True):
        self.root = Path(root) if root else default_dir()
        self.enabled = enabled

    def get(self, key: str) -> Optional[Tuple[Any, Dict, Dict, list]]:
        if not self.enabled:
            return None
        folder = self.root / key
        try:
            meta = json.loads((folder / "entry.json").read_text())
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, KeyError):
            return None
        return _join_arrays(meta["results"], arrays), meta["view"], meta["summary"], meta["findings"]

    def put(self, key: str, results: Any, view: Dict, summary: Dict, findings: list) -> None:
        if not self.enabled:
            return
        arrays: Dict[str, np.ndarray] = {}
        try:
            entry = {"results": _split_arrays(results, arrays), "view": view,
                     "summary": summary, "findings": findings}
            text = json.dumps(entry)
        except (TypeError, ValueError):
            return  # results that do not serialize are simply not cached
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            (tmp / "entry.json").write_text(text)
            np.savez(tmp / "arrays.npz", **arrays)
            final = self.root / key
            if final.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return
            os.replace(tmp, final)
        except OSError:
            return  # a read-only or full cache disk must never fail a build

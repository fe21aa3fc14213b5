"""Finding, loading and applying checkpoints without trusting them.

A checkpoint is a file somebody else wrote, often a pickle. Pickles can run any
code, so everything goes through ``torch.load(weights_only=True)`` and a file
that needs more is refused, never "retried unsafely". The many ways training
scripts wrap their weights (raw ``state_dict``, ``{"state_dict": ...}``,
Lightning's ``model.`` prefix, DataParallel's ``module.``) are unwrapped here,
so the rest of reportgen sees one flat ``{name: tensor}`` dict. A file holding
several weight sets (timm's ``state_dict`` and ``state_dict_ema``) is read as
the caller selects, and says which others it holds.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from reportgen.errors import CheckpointError, InputError
from reportgen.paths import glob_files, is_glob, natural_key, user_path

__all__ = [
    "LoadedCheckpoint",
    "natural_key",
    "load_checkpoint",
    "apply_state_dict",
    "expand_checkpoints",
]

# Checked in this order: a dict holding both "model" and "state_dict" is
# rarer than one holding "state_dict" plus optimizer state.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# `weights=` for load_checkpoint: the first of CONTAINER_KEYS present, else a raw state dict.
AUTO_WEIGHTS = "auto"
# Top-level numbers that describe the file, not the training (timm's checkpoint format version).
NOT_METRICS = ("version",)
# Stripped only when every key carries them (a real sub-module may be called "model").
WRAPPER_PREFIXES = ("module.", "model.")
# Buffers that older/newer BatchNorm versions disagree about; harmless if absent.
TOLERATED_SUFFIXES = ("num_batches_tracked",)
MAX_LISTED = 10

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class LoadedCheckpoint:
    """Weights plus what the training script stored beside them.

    ``layout`` names where the weights were found ("raw", "state_dict", ...,
    "safetensors"), ``stripped`` the wrapper prefixes removed and ``others``
    the other top-level keys holding a set of weights (``state_dict_ema``), so
    report.json can say how a file was read and what else it offered.
    """

    state_dict: Dict[str, torch.Tensor]
    metrics: Dict[str, float]
    epoch: Optional[int]
    layout: str
    stripped: Tuple[str, ...] = field(default=())
    others: Tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- sorting

# --------------------------------------------------------------------------- loading

def load_checkpoint(path: PathLike, weights: str = AUTO_WEIGHTS) -> LoadedCheckpoint:
    """Read a checkpoint file into a flat, prefix-free state dict, safely.

    ``weights`` names the top-level key whose weights are read (timm's
    ``state_dict_ema``, say); ``auto`` takes the first of CONTAINER_KEYS, else
    the file as a raw state dict. A named key the file lacks is a CheckpointError.
    """
    p = Path(path)
    _check_is_file(p)
    if p.suffix.lower() == ".safetensors":
        if weights != AUTO_WEIGHTS:
            raise CheckpointError(f"a safetensors file holds one set of weights, not a {weights!r} "
                                  "entry; use checkpoint_weights: auto", p)
        return _load_safetensors(p)
    if _is_torchscript(p):
        raise CheckpointError(
            "this is a TorchScript archive (a whole compiled model), not a state dict. "
            "Use it as `model: {torchscript: ...}` in the spec instead of under `checkpoints`.", p)
    obj = _torch_load(p)
    sd, layout = _find_state_dict(obj, p) if weights == AUTO_WEIGHTS else _named_state_dict(obj, weights, p)
    sd, stripped = _strip_wrapper_prefixes(sd)
    metrics = extract_metrics(obj, raw=layout == "raw")
    others = () if layout == "raw" else tuple(k for k in weight_keys(obj) if k != layout)
    return LoadedCheckpoint(sd, metrics, _epoch(metrics), layout, stripped, others)


def _check_is_file(p: Path) -> None:
    if not p.exists():
        raise CheckpointError("checkpoint file not found", p)
    if not p.is_file():
        raise CheckpointError("checkpoint path is not a file (a directory?)", p)
    if p.stat().st_size == 0:
        raise CheckpointError("checkpoint file is empty (0 bytes): an interrupted save?", p)


def _is_torchscript(p: Path) -> bool:
    """TorchScript zips carry compiled code; torch.load would hand them to jit.load."""
    if not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _safe_globals() -> List[Any]:
    """Classes allowed besides tensors and containers: plain data holders, no code.

    ``argparse.Namespace`` is how timm's train.py stores its arguments (``args``)
    in every checkpoint; unpickling one only sets attributes, and what it holds
    is checked like the rest of the file.
    """
    return [argparse.Namespace] + _numpy_safe_globals()


def _numpy_safe_globals() -> List[Any]:
    """numpy scalars (e.g. ``best_acc = np.float64(0.93)``) are data, not code.

    Training scripts store metrics this way all the time; refusing them would
    refuse most real checkpoints. Only the scalar reconstructor and plain
    numeric dtypes are allowed, under both numpy 1 and numpy 2 module names.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: List[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType",
                     "Int32DType", "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType",
                     "UInt64DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def _torch_load(p: Path) -> Any:
    """torch.load restricted to tensors and plain containers, with readable errors."""
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # Noise for users: old pickle protocols load fine or fail with our message.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # zip checkpoints (torch.save's format) are memory-mapped: checking that a
            # series of large checkpoints fits the model then reads shapes, not weights
            mmap = zipfile.is_zipfile(p)
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip()
        if re.search(r"GLOBAL|allowlist", detail):
            raise CheckpointError(_unsafe_message(detail), p) from None
        raise CheckpointError(f"cannot read the checkpoint: the file is corrupt or not written "
                              f"by torch.save ({_first_line(detail)})", p) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"cannot read the checkpoint: the file is truncated, corrupt or not written by "
            f"torch.save ({type(e).__name__}: {_first_line(e)})", p) from None


def _unsafe_message(detail: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", detail)
    what = f" (it references `{found.group(1)}`)" if found else ""
    whole = (" It looks like a whole pickled model (`torch.save(model)`)."
             if found and found.group(1).startswith("torch.nn.") else "")
    return (
        f"this checkpoint needs arbitrary code to unpickle{what}: it stores Python objects, "
        f"not just tensors and numbers, and reportgen refuses to execute it.{whole} If you "
        "trust the file, re-save only the weights once, in your own Python: load it the way "
        "your training code does (`torch.load(path, weights_only=False)`), then "
        "`torch.save(model.state_dict(), 'weights.pt')` and point the spec at weights.pt.")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or repr(e)
    return text.splitlines()[0][:300]


def _load_safetensors(p: Path) -> LoadedCheckpoint:
    """safetensors holds only tensors by design; its string metadata may carry metrics."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        sd = load_file(str(p), device="cpu")
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read the safetensors file (truncated or corrupt?): "
                              f"{_first_line(e)}", p) from None
    if not sd:
        raise CheckpointError("the safetensors file holds no tensors", p)
    sd, stripped = _strip_wrapper_prefixes(dict(sd))
    metrics = _numeric_strings(meta)
    return LoadedCheckpoint(sd, metrics, _epoch(metrics), "safetensors", stripped)


def _numeric_strings(meta: Mapping[str, str]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k, v in sorted(meta.items()):
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


# --------------------------------------------------------------------------- unwrapping

def _tensor_items(d: Mapping) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _find_state_dict(obj: Any, p: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    """The ``{name: tensor}`` dict inside whatever wrapper the training script used."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"expected a state dict (a dict of tensors), found a {type(obj).__name__}", p)
    if not obj:
        raise CheckpointError("the checkpoint is an empty dict: no weights in it", p)
    for key in CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _tensor_items(inner):
            return _tensor_items(inner), key
    raw = _tensor_items(obj)
    if raw:
        return raw, "raw"
    found = weight_keys(obj)
    if found:
        raise CheckpointError(
            f"no weights under one of {', '.join(CONTAINER_KEYS)}; the file holds weights under "
            f"{', '.join(map(repr, found))}: select them with checkpoint_weights: {found[0]}", p)
    keys = ", ".join(repr(k) for k in list(obj)[:MAX_LISTED])
    raise CheckpointError(
        f"no tensors found: neither a raw state dict nor a dict with one of "
        f"{', '.join(CONTAINER_KEYS)} holding tensors (top-level keys: {keys})", p)


def weight_keys(obj: Any) -> List[str]:
    """Top-level keys of a checkpoint dict whose value is a set of weights, in file order."""
    if not isinstance(obj, Mapping):
        return []
    return [k for k, v in obj.items() if isinstance(k, str) and isinstance(v, Mapping) and _tensor_items(v)]


def _named_state_dict(obj: Any, key: str, p: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    """The weights under ``key`` exactly, or a CheckpointError saying where the weights are."""
    inner = obj.get(key) if isinstance(obj, Mapping) else None
    if isinstance(inner, Mapping) and _tensor_items(inner):
        return _tensor_items(inner), key
    found = weight_keys(obj)
    held = (f"its weights are under {', '.join(map(repr, found))}" if found else
            "it is a raw state dict" if isinstance(obj, Mapping) and _tensor_items(obj) else
            "it holds no weights")
    raise CheckpointError(f"no weights under {key!r} in this checkpoint: {held}", p)


def _strip_wrapper_prefixes(sd: Dict[str, torch.Tensor]
                            ) -> Tuple[Dict[str, torch.Tensor], Tuple[str, ...]]:
    """Remove ``module.``/``model.`` while every key carries one (handles both nested)."""
    stripped: List[str] = []
    while sd:
        prefix = next((pre for pre in WRAPPER_PREFIXES
                       if all(k.startswith(pre) and len(k) > len(pre) for k in sd)), None)
        if prefix is None:
            break
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        stripped.append(prefix)
    return sd, tuple(stripped)


# --------------------------------------------------------------------------- metrics

def _as_number(v: Any) -> Optional[float]:
    """A float for int/float/0-d tensor/numpy scalar; None for anything else (bools too)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor):
        if v.numel() == 1 and v.dim() <= 1 and not v.dtype.is_complex and v.dtype != torch.bool:
            return float(v.item())
        return None
    item = getattr(v, "item", None)  # numpy scalars
    if callable(item) and getattr(v, "shape", None) == ():
        try:
            value = item()
        except (TypeError, ValueError):
            return None
        return _as_number(value) if not isinstance(value, type(v)) else None
    return None


def extract_metrics(obj: Mapping, raw: bool = False) -> Dict[str, float]:
    """Scalars stored beside the weights: top-level numbers and a nested ``metrics`` dict.

    Deliberately shallow: optimizer and scheduler state hold many numbers that
    are not metrics (learning rates per group, step counters) and would only
    clutter the report. In a ``raw`` state dict, 0-d tensors are buffers
    (``num_batches_tracked``), not metrics, so only plain numbers count there.
    """
    out: Dict[str, float] = {}
    for k, v in obj.items():
        n = None if raw and isinstance(v, torch.Tensor) else _as_number(v)
        if isinstance(k, str) and n is not None and k not in NOT_METRICS:
            out[k] = n
    nested = obj.get("metrics")
    if isinstance(nested, Mapping):
        for k, v in nested.items():
            n = _as_number(v)
            if n is not None:
                out.setdefault(str(k), n)
    return out


def _epoch(metrics: Mapping[str, float]) -> Optional[int]:
    value = metrics.get("epoch")
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return int(value)


# --------------------------------------------------------------------------- applying

def apply_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     path: PathLike) -> None:
    """Load weights into ``model`` after checking every key and shape ourselves.

    ``load_state_dict`` stops at the first size mismatch with a long tensor
    dump; comparing first lets one message list everything that does not fit.
    """
    sd = check_fit(model, state_dict, path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights do not fit the model: {_first_line(e)}", path) from None


def check_fit(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
              path: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict aligned to ``model``'s keys; CheckpointError naming every misfit.

    Touches no weights, so validating a long series of checkpoints stays cheap.
    """
    expected = model.state_dict()
    sd = _align_to_model(dict(state_dict), expected)
    sd = _fill_tolerated(sd, expected)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [(k, tuple(sd[k].shape), tuple(expected[k].shape))
                  for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(missing, unexpected, mismatched), path)
    return sd


def _align_to_model(sd: Dict[str, torch.Tensor], expected: Mapping[str, Any]
                    ) -> Dict[str, torch.Tensor]:
    """Put back a wrapper prefix that the model itself uses.

    load_checkpoint strips ``model.``/``module.`` when every key has it, which
    is wrong for a model whose only child really is called ``model``.
    """
    if not sd or set(sd) & set(expected):
        return sd
    for prefix in WRAPPER_PREFIXES:
        if expected and all(k.startswith(prefix) for k in expected):
            candidate = {prefix + k: v for k, v in sd.items()}
            if set(candidate) & set(expected):
                return candidate
    return sd


def _fill_tolerated(sd: Dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
                    ) -> Dict[str, torch.Tensor]:
    """Accept checkpoints that lack (or add) BatchNorm's ``num_batches_tracked`` counter."""
    out = {k: v for k, v in sd.items()
           if k in expected or not k.endswith(TOLERATED_SUFFIXES)}
    for k, v in expected.items():
        if k not in out and k.endswith(TOLERATED_SUFFIXES):
            out[k] = v
    return out


def _listing(title: str, items: Sequence[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {len(items)} {title}:\n" + "\n".join(f"    {s}" for s in shown) + more


def _mismatch_message(missing: Sequence[str], unexpected: Sequence[str],
                      mismatched: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]) -> str:
    parts = ["the checkpoint does not fit the model:"]
    if missing:
        parts.append(_listing("missing key(s) (in the model, not in the checkpoint)", missing))
    if unexpected:
        parts.append(_listing("unexpected key(s) (in the checkpoint, not in the model)",
                              unexpected))
    if mismatched:
        lines = [f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in mismatched]
        parts.append(_listing("shape mismatch(es)", lines))
    parts.append("  Check model.torchvision/factory and model.kwargs (e.g. num_classes) "
                 "match the network that was trained.")
    return "\n".join(parts)


# --------------------------------------------------------------------------- expanding

def expand_checkpoints(entries: Union[str, Mapping, Iterable[Union[str, Mapping]]],
                       base_dir: PathLike) -> List[Tuple[str, Path]]:
    """The spec's ``checkpoints`` list as ``(label, path)`` pairs, oldest first.

    Entry order is kept (the spec says oldest -> newest); a glob's matches are
    naturally sorted in place. A file listed twice (say, labelled explicitly,
    then matched again by a glob) keeps its first position and label.
    """
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    base = Path(base_dir)
    pairs: List[Tuple[Optional[str], Path]] = []
    seen = set()
    for entry in entries:
        for label, path in _expand_entry(entry, base):
            ident = _identity(path)
            if ident not in seen:
                seen.add(ident)
                pairs.append((label, path))
    return _fill_labels(pairs, base)


def _expand_entry(entry: Union[str, Mapping], base: Path) -> List[Tuple[Optional[str], Path]]:
    if isinstance(entry, Mapping):
        unknown = sorted(set(entry) - {"path", "label"})
        if unknown or "path" not in entry:
            raise InputError(f"a checkpoint entry needs `path` (and optionally `label`); "
                             f"got keys {sorted(entry)}")
        matches = _match(str(entry["path"]), base)
        if len(matches) > 1:
            raise InputError(f"`path` with a `label` must name one file, but it matches "
                             f"{len(matches)}", entry["path"])
        label = entry.get("label")
        return [(None if label is None else str(label), matches[0])]
    if isinstance(entry, (str, os.PathLike)):
        return [(None, m) for m in _match(str(entry), base)]
    raise InputError(f"a checkpoint entry must be a path, a glob or a {{path, label}} mapping, "
                     f"not {type(entry).__name__}")


def _match(pattern: str, base: Path) -> List[Path]:
    """Files for a path or glob relative to ``base``; InputError naming it when none."""
    full = user_path(pattern, base)
    resolved = os.path.abspath(full)
    if is_glob(pattern):
        hits = glob_files(full)
        if not hits:
            raise InputError("no checkpoint file matches this glob", pattern, resolved)
        return hits
    if not full.exists():
        raise InputError("checkpoint file not found", pattern, resolved)
    if not full.is_file():
        raise InputError("checkpoint path is not a file", pattern, resolved)
    return [full]


def _identity(p: Path) -> str:
    try:
        return str(p.resolve())
    except OSError:  # pragma: no cover - resolve rarely fails
        return os.path.abspath(p)


def _fill_labels(pairs: Sequence[Tuple[Optional[str], Path]], base: Path
                 ) -> List[Tuple[str, Path]]:
    """Default labels are file stems; stems shared by several files get their folder too.

    ``runs/a/last.pt`` and ``runs/b/last.pt`` would otherwise both be "last",
    and ``audit_checkpoint`` could not tell them apart.
    """
    stems = [p.stem for _, p in pairs]
    out: List[Tuple[str, Path]] = []
    for (label, p), stem in zip(pairs, stems):
        if label is None:
            label = stem if stems.count(stem) == 1 else _relative_label(p, base)
        out.append((label, p))
    return out


def _relative_label(p: Path, base: Path) -> str:
    try:
        rel = p.resolve().relative_to(base.resolve())
    except ValueError:
        rel = p
    return rel.with_suffix("").as_posix()

"""Training curves as plain series: from checkpoints and from a metrics file.

Training scripts log their numbers in one of three places: beside the weights
(``{"epoch": 3, "val_acc": 0.91, ...}`` in the checkpoint), a CSV/JSONL log
(Lightning's CSVLogger, Keras' CSVLogger, a hand-rolled ``print(json.dumps())``)
or TensorBoard event files. All three become the same shape here,
``{name: Series(steps, values)}``, so the renderer draws one kind of thing.

Reading is strict about structure and lenient about gaps: a row with a missing
cell is normal (train and validation rows interleave in Lightning logs), but a
cell that is text where numbers were, or a line that is not JSON, is an
InputError naming the file and the line, because a silently dropped row would
draw a wrong curve.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from reportgen.errors import InputError

# Columns/keys that are the x axis, in order of preference; never plotted as a series.
STEP_KEYS = ("step", "global_step", "iteration", "iter", "epoch", "trainer/global_step")
CSV_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TB_INSTALL = "pip install tensorboard"

# Name patterns that decide how a series is grouped and what "worse" means.
LOSS_RE = re.compile(r"loss|err|perplex|ppl|nll|mse|mae|rmse|cost", re.IGNORECASE)
ACC_RE = re.compile(r"acc|top[-_]?[15]|auc|f1|precision|recall|(?<![a-z])map(?![a-z])|iou|dice",
                    re.IGNORECASE)
HELDOUT_RE = re.compile(r"val|valid|test|eval|dev", re.IGNORECASE)


@dataclass
class Series:
    """One curve: x positions (steps or epochs) and values, both float64, x ascending."""

    steps: np.ndarray
    values: np.ndarray


@dataclass
class MetricsTable:
    """All curves from one source, with what the x axis is and where they came from."""

    series: Dict[str, Series]
    x_label: str                      # "step", "epoch", "checkpoint", "row", ...
    source: str                       # "checkpoints", "csv", "jsonl", "tensorboard"
    path: Optional[str] = None
    ignored: List[str] = field(default_factory=list)   # text columns skipped, for the caption


def kind(name: str) -> str:
    """'loss' (lower is better), 'accuracy' (higher is better) or 'other', by name.

    Losses are checked first: ``top1_err`` is an error rate, not an accuracy.
    """
    if LOSS_RE.search(name):
        return "loss"
    if ACC_RE.search(name):
        return "accuracy"
    return "other"


def is_heldout(name: str) -> bool:
    """Validation/test metrics; per-step training values are too noisy to judge a regression on."""
    return bool(HELDOUT_RE.search(name))


# --------------------------------------------------------------------------- checkpoints

def stored_curves(metrics: Sequence[Mapping[str, float]]) -> Optional[MetricsTable]:
    """The training curves stored in a checkpoint series: None for fewer than two checkpoints
    or none with a metric (one point is no curve)."""
    if len(metrics) < 2:
        return None
    table = from_checkpoints(metrics)
    return table if table.series else None


def from_checkpoints(metrics: Sequence[Mapping[str, float]]) -> MetricsTable:
    """Series over the checkpoint list; x is the stored epoch when every checkpoint has one.

    A metric stored in only some checkpoints is plotted where present.
    """
    epochs = [m.get("epoch") for m in metrics]
    use_epoch = bool(metrics) and all(_finite(e) for e in epochs) and _increasing(epochs)
    xs = [float(e) for e in epochs] if use_epoch else [float(i + 1) for i in range(len(metrics))]
    names = sorted({k for m in metrics for k in m if k not in STEP_KEYS})
    series: Dict[str, Series] = {}
    for name in names:
        pts = [(x, float(m[name])) for x, m in zip(xs, metrics)
               if name in m and _finite(m[name])]
        if pts:
            series[name] = _series(pts)
    return MetricsTable(series=series, x_label="epoch" if use_epoch else "checkpoint",
                        source="checkpoints")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _increasing(values: Sequence[Any]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def _series(points: Iterable[Tuple[float, float]]) -> Series:
    """Sorted by x (stable, so a repeated step keeps file order)."""
    pts = sorted(points, key=lambda p: p[0])
    return Series(steps=np.array([p[0] for p in pts], dtype=np.float64),
                  values=np.array([p[1] for p in pts], dtype=np.float64))


# --------------------------------------------------------------------------- files

def read_metrics(path: Path) -> MetricsTable:
    """Dispatch on what ``path`` is: CSV/TSV, JSON lines, or TensorBoard events (file or folder)."""
    p = Path(path)
    if not p.exists():
        raise InputError("metrics file not found", p)
    if p.is_dir() or "tfevents" in p.name:
        return read_tensorboard(p)
    suffix = p.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return read_csv(p)
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(p)
    raise InputError(f"unknown metrics format {suffix or '(no suffix)'!r}: expected a .csv/.tsv, "
                     f".jsonl/.ndjson file, or a TensorBoard event file (events.out.tfevents.*) "
                     "or a folder of them", p)


def _text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"not a UTF-8 text file (byte {e.start}); is it a binary file?", p) from None
    except OSError as e:
        raise InputError(f"cannot read the metrics file: {e.strerror or e}", p) from None


def _number(cell: str) -> Optional[float]:
    """A float for a numeric cell, None for an empty one; ValueError for text."""
    cell = cell.strip()
    if cell == "":
        return None
    return float(cell)


def read_csv(p: Path) -> MetricsTable:
    """CSV with a header row; the x axis is the first step-like column, else the row number.

    Empty cells are gaps. A column that is text in every row (a run name, a
    phase) is ignored and listed; text in an otherwise numeric column is an
    error at its line, since that means a broken or mixed-up file.
    """
    text = _text(p)
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    rows_with_line = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows_with_line:
        raise InputError("the metrics CSV is empty: expected a header row, then one row per step", p)
    header_line, header = rows_with_line[0]
    header = [h.strip() for h in header]
    if len(set(header)) != len(header) or any(h == "" for h in header):
        raise InputError(f"line {header_line}: the header row needs unique, non-empty column "
                         f"names; got {header}", p)
    body = rows_with_line[1:]
    if not body:
        raise InputError(f"the metrics CSV has a header (line {header_line}) but no data rows", p)
    for line, row in body:
        if len(row) != len(header):
            raise InputError(f"line {line}: {len(row)} fields, but the header has {len(header)}", p)
    text_cols = [h for j, h in enumerate(header) if not any(_is_number(r[j]) for _, r in body)]
    numeric = [j for j, h in enumerate(header) if h not in text_cols]
    records = []
    for line, row in body:
        record = {}
        for j in numeric:
            try:
                value = _number(row[j])
            except ValueError:
                raise InputError(f"line {line}: column {header[j]!r} holds {row[j].strip()!r}, "
                                 "not a number", p) from None
            if value is not None:
                record[header[j]] = value
        records.append((line, record))
    return _table(records, p, "csv", ignored=text_cols)


def _is_number(cell: str) -> bool:
    try:
        return _number(cell) is not None
    except ValueError:
        return False


def read_jsonl(p: Path) -> MetricsTable:
    """One JSON object per line; nested objects are flattened as ``outer/inner``.

    Text and boolean values are metadata (``"phase": "val"``), not curves, and
    are skipped; a line that is not a JSON object is an error at that line.
    """
    records = []
    for i, raw in enumerate(_text(p).splitlines()):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"line {i + 1}: not valid JSON ({e.msg} at column {e.colno}); "
                             "expected one JSON object per line", p) from None
        if not isinstance(obj, dict):
            raise InputError(f"line {i + 1}: expected a JSON object per line, got a "
                             f"{type(obj).__name__}", p)
        records.append((i + 1, _flatten(obj)))
    if not records:
        raise InputError("the metrics file is empty: expected one JSON object per line", p)
    return _table(records, p, "jsonl")


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def _table(records: Sequence[Tuple[int, Dict[str, float]]], p: Path, source: str,
           ignored: Sequence[str] = ()) -> MetricsTable:
    """Rows of ``{name: value}`` into series keyed by the chosen step column."""
    present = {k for _, r in records for k in r}
    step_key = next((k for k in STEP_KEYS if k in present), None)
    points: Dict[str, List[Tuple[float, float]]] = {}
    last_step = 0.0
    for n, (line, record) in enumerate(records):
        if step_key is None:
            x = float(n + 1)
        elif step_key in record:
            x = record[step_key]
            if not math.isfinite(x):
                raise InputError(f"line {line}: step column {step_key!r} is {x}", p)
            last_step = x
        else:
            x = last_step  # a row without a step belongs with the previous one
        for k, v in record.items():
            if k in STEP_KEYS or not math.isfinite(v):
                continue
            points.setdefault(k, []).append((x, v))
    series = {k: _series(pts) for k, pts in sorted(points.items())}
    if not series:
        raise InputError(f"no numeric metric found (columns/keys: {', '.join(sorted(present)) or 'none'}"
                         f"; the step columns {', '.join(STEP_KEYS)} are the x axis, not curves)", p)
    return MetricsTable(series=series, x_label=step_key or "row", source=source, path=str(p),
                        ignored=list(ignored))


# --------------------------------------------------------------------------- tensorboard

def _event_accumulator():
    """TensorBoard's own reader: the format is protobuf records with CRCs, not ours to parse."""
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        raise InputError(f"reading TensorBoard event files needs the `tensorboard` package: "
                         f"{TB_INSTALL} (or point `metrics:` at a CSV or JSONL log)") from None
    return event_accumulator


def event_folders(p: Path) -> List[Path]:
    """Folders holding event files: ``p`` itself, or every run folder below it, sorted."""
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and "tfevents" in f.name)
    return sorted({f.parent for f in files})


def read_tensorboard(p: Path) -> MetricsTable:
    """Scalars (and TF2 scalar tensors) from an event file or a folder of runs.

    With several run folders (``runs/train``, ``runs/val``) each series is
    named ``run/tag`` so the same tag from two runs stays apart.
    """
    ea_mod = _event_accumulator()
    folders = event_folders(p)
    if not folders:
        raise InputError("no TensorBoard event files (events.out.tfevents.*) in this folder", p)
    series: Dict[str, Series] = {}
    for folder in folders:
        prefix = ""
        if len(folders) > 1:
            rel = folder.relative_to(p).as_posix() if p.is_dir() else folder.name
            prefix = "" if rel == "." else rel + "/"
        for tag, pts in _tensorboard_scalars(ea_mod, folder).items():
            if pts:
                series[prefix + tag] = _series(pts)
    if not series:
        raise InputError("the TensorBoard events hold no scalar summaries", p)
    return MetricsTable(series=dict(sorted(series.items())), x_label="step", source="tensorboard",
                        path=str(p))


def _tensorboard_scalars(ea_mod: Any, path: Path) -> Dict[str, List[Tuple[float, float]]]:
    acc = ea_mod.EventAccumulator(str(path), size_guidance={ea_mod.SCALARS: 0, ea_mod.TENSORS: 0})
    try:
        acc.Reload()
    except Exception as e:  # DataLossError, protobuf DecodeError, ...: a damaged file
        raise InputError(f"cannot read the TensorBoard events: {type(e).__name__}: {e}", path) from None
    tags = acc.Tags()
    out: Dict[str, List[Tuple[float, float]]] = {}
    for tag in tags.get("scalars", []):
        out[tag] = [(float(ev.step), float(ev.value)) for ev in acc.Scalars(tag)
                    if math.isfinite(ev.value)]
    for tag in tags.get("tensors", []):
        pts = _scalar_tensors(acc.Tensors(tag))
        if pts and tag not in out:
            out[tag] = pts
    return out


def _scalar_tensors(events: Sequence[Any]) -> List[Tuple[float, float]]:
    """TF2 ``tf.summary.scalar`` writes 0-d tensors; anything bigger is not a curve."""
    from tensorboard.util import tensor_util

    pts = []
    for ev in events:
        arr = tensor_util.make_ndarray(ev.tensor_proto)
        if arr.shape == () and np.issubdtype(arr.dtype, np.number) and math.isfinite(float(arr)):
            pts.append((float(ev.step), float(arr)))
        elif arr.shape != ():
            return []
    return pts


# --------------------------------------------------------------------------- judging

def regression(values: np.ndarray, name: str) -> Optional[Dict[str, float]]:
    """How much the last value is worse than the best, for loss- or accuracy-like names.

    Returns ``{"last", "best", "drop"}`` with ``drop`` in points (accuracy;
    fractions are scaled to percent) or as a relative increase (loss), else
    None for other metrics or fewer than two values.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    k = kind(name)
    if v.size < 2 or k == "other":
        return None
    last = float(v[-1])
    if k == "accuracy":
        best = float(v.max())
        scale = 100.0 if np.abs(v).max() <= 1.0 else 1.0   # 0.93 -> 93 points
        return {"last": last, "best": best, "drop": (best - last) * scale}
    best = float(v.min())
    denom = abs(best) if best != 0 else 1.0
    return {"last": last, "best": best, "drop": (last - best) / denom}

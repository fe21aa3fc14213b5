"""The audit sections' dataset pass sharded across processes with ``torch.distributed``.

What the errors, calibration and robustness sections read from the dataset is
additive, so it shards like the top-k pass (``topk_distributed.shard``: rank r
streams items r, r + W, ...):

* the clean pass (``predictions.prediction_pass``): confusion counts and the
  calibration counter's sums (bins, NLL, Brier, the temperature grid) add up;
  each labelled image's top-1 confidence and correctness are put back in
  listing order (so the ECE bootstrap resamples the same rows as one process);
  the confident mistakes are merged by the same order (confidence desc, index asc);
* the robustness pass (``robustness.robustness_pass``) over rank r's share of
  the same spread of images: per-cell counts add up; each corruption's example
  is the flipped image of lowest index, as in one process.

Counts come out equal to one process, float sums equal up to summation order.
Rank 0 gets an :class:`AuditPass`; :func:`save_audit_pass` writes it as a flat
.npz (no pickle, written by rename) and :func:`load_audit_pass` reads one back,
checking every array's dtype and shape: the file may come from anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reportgen.analyses import calibration as cal
from reportgen.analyses import predictions as pr
from reportgen.analyses import robustness as rb
from reportgen.analyses.confusion import ConfusionResult
from reportgen.analyses.topk_distributed import shard
from reportgen.cache import read_pass_file

KIND = "audit-pass"


@dataclass(frozen=True)
class AuditPass:
    predictions: Optional[pr.PredictionPass]     # None: no labelled image
    robustness: Optional[rb.RobustnessResult]    # None: no corruption asked for


def _gather(obj: Any) -> List[Any]:
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)      # small numpy arrays and counters: works on gloo and nccl
    return out


def merge_predictions(parts: Sequence[pr.PredictionPass], labels: np.ndarray, keep: int) -> pr.PredictionPass:
    """Rank r's pass was over items r, r + W, ... (W = len(parts)); the pass of the whole listing."""
    world = len(parts)
    first = parts[0]
    counts = sum(p.confusion.confusion for p in parts)
    counter = cal.CalibrationCounter(first.calibration.bins)
    counter.beta = first.calibration.beta.cpu()
    for name in ("sums", "scalars", "grid_nll", "grid_sums"):
        setattr(counter, name, sum(getattr(p.calibration, name).cpu() for p in parts))
    labelled = np.nonzero(np.asarray(labels) >= 0)[0]
    confidence = np.zeros(labelled.size, dtype=np.float64)
    correct = np.zeros(labelled.size, dtype=np.float64)
    for r, p in enumerate(parts):
        mine = labelled % world == r     # rank r's labelled rows, in listing order as it streamed them
        confidence[mine], correct[mine] = p.confidence, p.correct
    keeper = pr.MistakeKeeper(keep)
    for p in parts:
        m = p.mistakes
        keeper.update(np.stack([m.indices, m.true, m.predicted, m.confidence, m.p_true]).astype(np.float64))
    return pr.PredictionPass(ConfusionResult(first.confusion.classes, counts.astype(np.int64)), counter,
                             confidence.astype(first.confidence.dtype), correct.astype(first.correct.dtype),
                             keeper.result(), sum(p.n_images for p in parts))


def merge_robustness(parts: Sequence[rb.RobustnessResult]) -> rb.RobustnessResult:
    first = parts[0]
    examples: Dict[str, Dict[str, Any]] = {}
    for p in parts:
        for e in p.examples:
            if e["corruption"] not in examples or e["index"] < examples[e["corruption"]]["index"]:
                examples[e["corruption"]] = e
    return rb.RobustnessResult(first.corruptions, first.severities, sum(p.images for p in parts),
                               sum(p.labelled for p in parts), sum(p.clean_correct for p in parts),
                               sum(p.correct for p in parts), sum(p.flips for p in parts),
                               [examples[c] for c in first.corruptions if c in examples])


def distributed_audit_pass(model: nn.Module, dataset: Any, labels: Sequence[int], classes: Sequence[str],
                           corruptions: Sequence[str], severities: Sequence[int], n_images: int,
                           batch_size: int = 64, workers: int = 0, device: Any = "cpu", output_key: Any = None,
                           keep: int = 32, seed: int = 0, example_severity: Optional[int] = None
                           ) -> Optional[AuditPass]:
    """The clean and robustness passes over this process group: the merged result on rank 0, None elsewhere."""
    rank, world = dist.get_rank(), dist.get_world_size()
    labels = np.asarray(labels, dtype=np.int64)
    predictions = None
    if (labels >= 0).any():
        local = pr.prediction_pass(model, shard(dataset, rank, world), labels, classes, batch_size, workers,
                                   device, output_key, keep=keep)
        c = local.calibration     # gathered from the CPU: a CUDA tensor would unpickle onto the sender's device
        for name in ("beta", "sums", "scalars", "grid_nll", "grid_sums"):
            setattr(c, name, getattr(c, name).cpu())
        parts = _gather(local)
        predictions = merge_predictions(parts, labels, keep) if rank == 0 else None
    robustness = None
    if corruptions:
        chosen = rb.spread(len(dataset), int(n_images))
        local_r = rb.robustness_pass(model, dataset, labels, corruptions, severities, None, batch_size, workers,
                                     device, output_key, seed, example_severity, indices=chosen[rank::world])
        parts_r = _gather(local_r)
        robustness = merge_robustness(parts_r) if rank == 0 else None
    return AuditPass(predictions, robustness) if rank == 0 else None


# --------------------------------------------------------------------------- the file

def save_audit_pass(path: Path, result: AuditPass, header: Dict[str, str]) -> None:
    """A flat .npz of plain arrays (no pickle), written by rename (``reportgen.atomic``)."""
    from reportgen.atomic import atomic_write_with

    arrays: Dict[str, np.ndarray] = {"header": np.array(json.dumps(header, sort_keys=True))}
    p = result.predictions
    if p is not None:
        c, m = p.calibration, p.mistakes
        arrays.update({
            "p/classes": np.array(json.dumps(list(p.confusion.classes))),
            "p/confusion": p.confusion.confusion.astype(np.int64),
            "p/beta": c.beta.cpu().numpy(), "p/sums": c.sums.cpu().numpy(),
            "p/scalars": c.scalars.cpu().numpy(), "p/grid_nll": c.grid_nll.cpu().numpy(),
            "p/grid_sums": c.grid_sums.cpu().numpy(),
            "p/confidence": np.asarray(p.confidence, dtype=np.float64),
            "p/correct": np.asarray(p.correct, dtype=np.float64),
            "p/mistakes": np.stack([m.indices, m.true, m.predicted, m.confidence, m.p_true]).astype(np.float64),
            "p/n_images": np.array(p.n_images, dtype=np.int64)})
    r = result.robustness
    if r is not None:
        meta = {"corruptions": list(r.corruptions), "severities": list(r.severities), "images": r.images,
                "labelled": r.labelled, "clean_correct": r.clean_correct,
                "examples": [{k: v for k, v in e.items() if k != "picture"} for e in r.examples]}
        arrays.update({"r/meta": np.array(json.dumps(meta)), "r/correct": r.correct.astype(np.int64),
                       "r/flips": r.flips.astype(np.int64)})
        for i, e in enumerate(r.examples):
            arrays[f"r/picture{i}"] = np.asarray(e["picture"], dtype=np.uint8)
    atomic_write_with(Path(path), lambda f: np.savez_compressed(f, **arrays))


def _array(a: Dict[str, np.ndarray], key: str, kind: str, shape: Tuple[Optional[int], ...]) -> np.ndarray:
    v = a[key]
    if v.dtype.kind != kind or v.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, v.shape)):
        raise ValueError(f"{key!r} has dtype {v.dtype} and shape {v.shape}")
    if kind == "f" and not np.isfinite(v).all():
        raise ValueError(f"{key!r} holds a non-finite number")
    return v


def _json(a: Dict[str, np.ndarray], key: str) -> Any:
    v = a[key]
    if v.dtype.kind != "U" or v.ndim:
        raise ValueError(f"{key!r} is not a JSON string")
    return json.loads(str(v))


def load_audit_pass(path: Path) -> Tuple[AuditPass, Dict[str, Any]]:
    """(pass, header) from :func:`save_audit_pass`'s file; ValueError naming what is wrong otherwise."""
    def read() -> Tuple[AuditPass, Dict[str, Any]]:
        with np.load(path, allow_pickle=False) as npz:
            a = {k: npz[k] for k in npz.files}
        header = _json(a, "header")
        if not isinstance(header, dict):
            raise ValueError("'header' is not an object")
        predictions = _load_predictions(a) if "p/confusion" in a else None
        robustness = _load_robustness(a) if "r/meta" in a else None
        return AuditPass(predictions, robustness), header
    return read_pass_file(path, "an audit pass written by reportgen.distributed audit", read)


def _load_predictions(a: Dict[str, np.ndarray]) -> pr.PredictionPass:
    classes = _json(a, "p/classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError("'p/classes' is not a list of names")
    k = len(classes)
    counts = _array(a, "p/confusion", "i", (k, k))
    beta = _array(a, "p/beta", "f", (None,))
    sums = _array(a, "p/sums", "f", (3, None))
    bins, g = sums.shape[1], beta.shape[0]
    counter = cal.CalibrationCounter(bins)
    counter.beta = torch.from_numpy(beta.copy())
    counter.sums = torch.from_numpy(sums.copy())
    counter.scalars = torch.from_numpy(_array(a, "p/scalars", "f", (3,)).copy())
    counter.grid_nll = torch.from_numpy(_array(a, "p/grid_nll", "f", (2, g)).copy())
    counter.grid_sums = torch.from_numpy(_array(a, "p/grid_sums", "f", (g, 3, bins)).copy())
    n = int(counts.sum())
    confidence = _array(a, "p/confidence", "f", (n,))
    correct = _array(a, "p/correct", "f", (n,))
    m = _array(a, "p/mistakes", "f", (5, None))
    mistakes = pr.Mistakes(m[0].astype(np.int64), m[1].astype(np.int64), m[2].astype(np.int64),
                           m[3].astype(np.float32), m[4].astype(np.float32))
    if m.shape[1] and (m[1:3].min() < 0 or m[1:3].max() >= k or m[0].min() < 0):
        raise ValueError("'p/mistakes' names a class or image out of range")
    return pr.PredictionPass(ConfusionResult(tuple(classes), counts.astype(np.int64)), counter, confidence,
                             correct, mistakes, int(_array(a, "p/n_images", "i", ())))


def _load_robustness(a: Dict[str, np.ndarray]) -> rb.RobustnessResult:
    meta = _json(a, "r/meta")
    corruptions, severities = [str(c) for c in meta["corruptions"]], [int(s) for s in meta["severities"]]
    shape = (len(corruptions), len(severities))
    examples = []
    for i, e in enumerate(meta["examples"]):
        e = {k: (str(v) if k == "corruption" else int(v)) for k, v in e.items()}
        examples.append({**e, "picture": _array(a, f"r/picture{i}", "u", (None, None, 3))})
    return rb.RobustnessResult(tuple(corruptions), tuple(severities), int(meta["images"]), int(meta["labelled"]),
                               int(meta["clean_correct"]), _array(a, "r/correct", "i", shape),
                               _array(a, "r/flips", "i", shape), examples)

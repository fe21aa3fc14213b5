"""The dataset pass of ``reportgen compare``: both models, one forward each per batch.

The same batches feed the CKA sums (``cka.CKAPass``: hooked layers of both
models) and the prediction comparison (``agreement.AgreementCounter``: the
models' class scores), so every image is read and run once.

Sharded over ``torch.distributed``: rank r takes dataset items r, r + W, ...
(``topk_distributed.shard``); afterwards every rank re-expresses its CKA
sums around one common shift (the first non-empty rank's, exact algebra, see
``cka``), all-reduces them and the agreement counts (SUM), and all-gathers the
flipped images' indices. Every rank ends with the one-process result: counts
and flips exactly, CKA up to float64 rounding (the sums are added in another
order). gloo on CPU, nccl on CUDA (the sums live on the base model's device).
"""
from __future__ import annotations

import contextlib
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reportgen.analyses import cka as ck
from reportgen.analyses import topk as tk
from reportgen.analyses.agreement import AgreementCounter, AgreementResult
from reportgen.analyses.topk_distributed import gather_states, shard
from reportgen.analyses.units import UnitsPass, UnitsPlan, units_pass
from reportgen.analyses.weight_diff import WeightChange
from reportgen.cache import load_plain, read_pass_file
from reportgen.model.loading import model_device
from reportgen.model.outputs import OutputKey, select_output


@dataclass(frozen=True)
class ComparePassResult:
    cka: ck.CKAResult
    predictions: AgreementResult
    units: Optional[UnitsPass] = None     # with a ``units`` plan (same architecture)


def _local_pass(base: nn.Module, new: nn.Module, dataset: torch.utils.data.Dataset,
                base_layers: Sequence[str], new_layers: Optional[Sequence[str]], mode: str,
                class_names: Sequence[str], labels: Optional[Sequence[int]],
                output_keys: Tuple[OutputKey, OutputKey], units: Optional[UnitsPlan],
                options: Dict[str, Any]
                ) -> Tuple[ck.CKAPass, AgreementCounter, Optional[Tuple[tk.TopKTracker, tk.TopKTracker]]]:
    device = torch.device(options.get("device", "cpu"))
    counter = AgreementCounter(class_names, model_device(base, device))
    known = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64))
    trackers = None if units is None else (
        tk.TopKTracker(base, units.layers, units.k, model_device(base, device), units.base_layouts),
        tk.TopKTracker(new, units.layers, units.k, model_device(new, device), units.new_layouts))

    def on_batch(out_b: Any, out_n: Any, index: torch.Tensor) -> None:
        lab = None if known is None else known[index.long().cpu()]
        counter.update(select_output(out_b, output_keys[0]), select_output(out_n, output_keys[1]),
                       index, lab)
        for t in trackers or ():
            t.absorb(index)

    with contextlib.ExitStack() as stack:
        for t in trackers or ():
            stack.enter_context(t)
        run = ck.stream_cka(base, new, dataset, base_layers, new_layers, mode, on_batch=on_batch, **options)
    return run, counter, trackers


def compare_pass(base: nn.Module, new: nn.Module, dataset: torch.utils.data.Dataset,
                 base_layers: Sequence[str], class_names: Sequence[str],
                 new_layers: Optional[Sequence[str]] = None, mode: str = "pairs",
                 labels: Optional[Sequence[int]] = None,
                 output_keys: Tuple[OutputKey, OutputKey] = (None, None),
                 estimator: str = "debiased", distributed: bool = False,
                 units: Optional[UnitsPlan] = None, **options) -> ComparePassResult:
    """CKA and prediction comparison of ``base`` and ``new`` over ``dataset`` in one pass.

    ``dataset`` yields (tensor, global index) (``topk.ImageDataset``, probes
    included by the caller); ``labels[i]`` is image i's true class or
    ``agreement.UNKNOWN`` (None: no labels); ``class_names`` name the models'
    K outputs. ``mode`` "pairs" compares ``base_layers[i]`` with
    ``new_layers[i]`` (default: the same names), "matrix" every pair.
    ``options``: grid, max_features, batch_size, workers, device,
    max_state_bytes, progress (as ``cka.stream_cka``).

    ``units`` (pairs mode only): also every channel's running top-k of
    these layers in both models, on the same forwards, and the per-channel
    correlation terms (``analyses.units``).

    ``distributed``: this process streams its shard of the initialised
    process group and every rank returns the merged result (progress on
    rank 0 only); ``labels`` and indices stay global.
    """
    if units is not None and mode != "pairs":
        raise ValueError("units compare a channel with the same channel: pairs mode only")
    if distributed:
        rank, world = dist.get_rank(), dist.get_world_size()
        dataset = shard(dataset, rank, world)
        options = options if rank == 0 else dict(options, progress=None)
    run, counter, trackers = _local_pass(base, new, dataset, base_layers, new_layers, mode, class_names,
                                         labels, output_keys, units, options)
    states = None if trackers is None else [t.result() for t in trackers]
    if distributed:
        all_reduce_cka(run)
        all_reduce_agreement(counter)
        if states is not None:
            states = [gather_states(s, units.k) for s in states]
    found = None
    if units is not None and run.acc.n:
        found = units_pass(run.acc, run.base_layers, run.reductions()[0], units, *states)
    return ComparePassResult(run.result(estimator), counter.result(), found)


# --------------------------------------------------------------------------- distributed

def all_reduce_cka(run: ck.CKAPass) -> None:
    """Turn this rank's CKA state into the sum over every rank's, in place, on every rank."""
    acc = run.acc
    meta = {"n": acc.n, "widths": acc.widths() if acc.allocated else None,
            "shifts": ([s.shift.cpu().numpy() for s in acc.xs], [s.shift.cpu().numpy() for s in acc.ys])
            if acc.n else None,
            "reductions": run.reductions()}
    gathered: List[Optional[Dict[str, Any]]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, meta)
    ref = next((m for m in gathered if m is not None and m["n"] > 0), None)
    if ref is None:
        return
    if not acc.allocated:
        acc.allocate(*ref["widths"])
    for f, reds in zip(run.features, ref["reductions"]):
        f.plans.update({r.layer: r for r in reds if r.layer not in f.plans})
    acc.rebase(*ref["shifts"])
    for t in acc.tensors():
        dist.all_reduce(t)
    acc.set_count(sum(m["n"] for m in gathered if m is not None))


def all_reduce_agreement(counter: AgreementCounter) -> None:
    """Counts summed and flips gathered over every rank, in place, on every rank."""
    dist.all_reduce(counter.counts)
    flips: List[Optional[Dict[str, np.ndarray]]] = [None] * dist.get_world_size()
    dist.all_gather_object(flips, counter.flips())
    counter.replace_flips([f for f in flips if f is not None])


# --------------------------------------------------------------------------- a pass in a file

def save_pass(path, result: ComparePassResult, header: Dict[str, Any]) -> None:
    """Write a pass (e.g. rank 0's merged one) to ``path`` (.npz, no pickle) with a JSON ``header``
    saying what it was computed on (checked by whoever reads it back)."""
    from reportgen.cache import save_plain

    save_plain(path, {"header": header, "result": result})


def load_pass(path) -> Tuple[ComparePassResult, Dict[str, Any]]:
    """(pass, header) from ``save_pass``'s file; ValueError when it is not one.

    The file may come from anywhere (a shared disk, another job), so nothing in
    it is trusted: it is read without pickle, every field must have its declared
    type and the arrays their shapes, or the whole file is refused here, before
    a wrong value can fail the compare later as if it were our bug.
    """
    def read() -> Tuple[ComparePassResult, Dict[str, Any]]:
        data = load_plain(path)
        header = data["header"]
        _check_type(header, Dict[str, str], "header")
        result = _pass_from_plain(data["result"])
        _check_type(result, ComparePassResult, "result")
        _check_shapes(result)
        return result, header
    return read_pass_file(path, "a compare pass written by reportgen.distributed compare", read)


def _pass_from_plain(r: Dict[str, Any]) -> ComparePassResult:
    """The dataclasses back from ``to_plain``'s dicts (lists become the tuples they were)."""
    from reportgen.analyses.agreement import Flips
    from reportgen.model.layout import Layout

    c = r["cka"]
    cka = ck.CKAResult(**{**c, "base_layers": tuple(c["base_layers"]), "new_layers": tuple(c["new_layers"]),
                          "base_reduction": _reductions(c["base_reduction"]),
                          "new_reduction": _reductions(c["new_reduction"])})
    p = r["predictions"]
    preds = AgreementResult(**{**p, "class_names": tuple(p["class_names"]),
                               **{k: Flips(**p[k]) for k in ("negative", "positive", "changed")}})
    if r.get("units") is None:
        return ComparePassResult(cka, preds, None)
    u = r["units"]

    def state(s: Dict[str, Any]) -> tk.StreamState:
        return tk.StreamState(s["layers"], {n: tuple(v) for n, v in s["shapes"].items()}, s["n_images"],
                              {n: Layout(**{**v, "grid": tuple(v["grid"])}) for n, v in s["layouts"].items()})

    units = UnitsPass(tuple(u["layers"]), u["covariance"], u["base_variance"], u["new_variance"],
                      state(u["base"]), state(u["new"]), u["k"])
    return ComparePassResult(cka, preds, units)


def _check_type(value: Any, hint: Any, where: str) -> None:
    """TypeError unless ``value`` is what the type ``hint`` declares, all the way down
    (dataclass fields, tuples, dicts, Optional; arrays must hold numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if origin is Union:
        if not any(_is_type(value, a, where) for a in args):
            raise TypeError(f"{where}: not {hint}")
    elif dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise TypeError(f"{where}: not a {hint.__name__}")
        hints = typing.get_type_hints(hint)
        for f in dataclasses.fields(hint):
            _check_type(getattr(value, f.name), hints[f.name], f"{where}.{f.name}")
    elif origin is tuple:
        _check_tuple(value, args, where)
    elif origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: not a mapping")
        for k, v in value.items():
            _check_type(k, args[0], f"{where} key")
            _check_type(v, args[1], f"{where}[{k!r}]")
    elif not _is_leaf(value, hint):
        raise TypeError(f"{where}: not {getattr(hint, '__name__', hint)}")


def _is_type(value: Any, hint: Any, where: str) -> bool:
    try:
        _check_type(value, hint, where)
    except TypeError:
        return False
    return True


def _check_tuple(value: Any, args: Tuple[Any, ...], where: str) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{where}: not a list")
    items = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
    if len(items) != len(value):
        raise TypeError(f"{where}: {len(value)} items, not {len(items)}")
    for i, (v, a) in enumerate(zip(value, items)):
        _check_type(v, a, f"{where}[{i}]")


def _is_leaf(value: Any, hint: Any) -> bool:
    """int is not bool, float accepts an int (JSON writes 2.0 as 2), arrays hold numbers."""
    if hint is np.ndarray:
        return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _check_shapes(result: ComparePassResult) -> None:
    """ValueError unless the arrays fit the names they go with (what the page indexes by)."""
    c, p = result.cka, result.predictions
    if c.mode not in ("pairs", "matrix") or c.estimator not in ("debiased", "biased"):
        raise ValueError(f"cka: unknown mode {c.mode!r} or estimator {c.estimator!r}")
    grid = (len(c.base_layers), len(c.new_layers))
    if c.biased.shape != grid or c.debiased.shape != grid or grid != (len(c.base_reduction), len(c.new_reduction)):
        raise ValueError(f"cka: values of shape {c.biased.shape} for {grid[0]} x {grid[1]} layers")
    k = (len(p.class_names),)
    if any(a.shape != k for a in (p.class_count, p.base_correct, p.new_correct)):
        raise ValueError(f"predictions: per-class counts that are not one per class ({k[0]})")
    for kind in ("negative", "positive", "changed"):
        flips = getattr(p, kind)
        if len({a.shape for a in dataclasses.astuple(flips)} | {(len(flips),)}) != 1:
            raise ValueError(f"predictions.{kind}: columns of different lengths")
    if min(c.n, p.n, p.agree, p.n_labelled) < 0 or p.agree > p.n:
        raise ValueError("negative or impossible counts")
    if result.units is not None:
        _check_units(result.units)


def _check_units(u: UnitsPass) -> None:
    for name in u.layers:
        for side in (u.covariance, u.base_variance, u.new_variance, u.base.layers, u.new.layers, u.base.shapes,
                     u.new.shapes):
            if name not in side:
                raise KeyError(f"units: no {name!r} in every table")


def _reductions(rows: Sequence[Dict[str, Any]]) -> Tuple[ck.Reduction, ...]:
    return tuple(ck.Reduction(r["layer"], tuple(r["shape"]), None if r["grid"] is None else tuple(r["grid"]),
                              r["features"]) for r in rows)


# --------------------------------------------------------------------------- report.json

def comparison_layers(cka: Optional[ck.CKAResult], weights: Optional[WeightChange],
                      order: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Optional[float]]]:
    """report.json's ``comparison.layers``: {layer: {"cka", "weight_change"}}, None where not measured.

    CKA is the headline estimator of layers compared with the same-named
    layer (every pair in "pairs" mode, equal names in a matrix); weight change
    comes with a same-architecture comparison. Layers follow ``order`` (e.g.
    the model's module names) where given, else CKA layers first.
    """
    values: Dict[str, Optional[float]] = {}
    if cka is not None:
        for i, b in enumerate(cka.base_layers):
            for j, n in enumerate(cka.new_layers):
                if b == n and (cka.mode == "matrix" or i == j):
                    v = cka.cka[i, j]
                    values[b] = float(v) if np.isfinite(v) else None
    changes = weights.layer_values() if weights is not None else {}
    names = list(dict.fromkeys(list(values) + list(changes)))
    if order is not None:
        rank = {n: i for i, n in enumerate(order)}
        names.sort(key=lambda n: rank.get(n, len(rank)))
    return {n: {"cka": values.get(n), "weight_change": changes.get(n)} for n in names}


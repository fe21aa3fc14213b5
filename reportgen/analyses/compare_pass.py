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

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reportgen.analyses import cka as ck
from reportgen.analyses.agreement import AgreementCounter, AgreementResult
from reportgen.analyses.topk_distributed import shard
from reportgen.analyses.weight_diff import WeightChange
from reportgen.models import model_device
from reportgen.outputs import OutputKey, select_output


@dataclass(frozen=True)
class ComparePassResult:
    cka: ck.CKAResult
    predictions: AgreementResult


def _local_pass(base: nn.Module, new: nn.Module, dataset: torch.utils.data.Dataset,
                base_layers: Sequence[str], new_layers: Optional[Sequence[str]], mode: str,
                class_names: Sequence[str], labels: Optional[Sequence[int]],
                output_keys: Tuple[OutputKey, OutputKey], options: Dict[str, Any]
                ) -> Tuple[ck.CKAPass, AgreementCounter]:
    device = torch.device(options.get("device", "cpu"))
    counter = AgreementCounter(class_names, model_device(base, device))
    known = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def on_batch(out_b: Any, out_n: Any, index: torch.Tensor) -> None:
        lab = None if known is None else known[index.long().cpu()]
        counter.update(select_output(out_b, output_keys[0]), select_output(out_n, output_keys[1]),
                       index, lab)

    run = ck.stream_cka(base, new, dataset, base_layers, new_layers, mode, on_batch=on_batch, **options)
    return run, counter


def compare_pass(base: nn.Module, new: nn.Module, dataset: torch.utils.data.Dataset,
                 base_layers: Sequence[str], class_names: Sequence[str],
                 new_layers: Optional[Sequence[str]] = None, mode: str = "pairs",
                 labels: Optional[Sequence[int]] = None,
                 output_keys: Tuple[OutputKey, OutputKey] = (None, None),
                 estimator: str = "debiased", distributed: bool = False, **options) -> ComparePassResult:
    """CKA and prediction comparison of ``base`` and ``new`` over ``dataset`` in one pass.

    ``dataset`` yields (tensor, global index) (``topk.ImageDataset``, probes
    included by the caller); ``labels[i]`` is image i's true class or
    ``agreement.UNKNOWN`` (None: no labels); ``class_names`` name the models'
    K outputs. ``mode`` "pairs" compares ``base_layers[i]`` with
    ``new_layers[i]`` (default: the same names), "matrix" every pair.
    ``options``: grid, max_features, batch_size, workers, device,
    max_state_bytes, progress (as ``cka.stream_cka``).

    ``distributed``: this process streams its shard of the initialised
    process group and every rank returns the merged result (progress on
    rank 0 only); ``labels`` and indices stay global.
    """
    if distributed:
        rank, world = dist.get_rank(), dist.get_world_size()
        dataset = shard(dataset, rank, world)
        options = options if rank == 0 else dict(options, progress=None)
    run, counter = _local_pass(base, new, dataset, base_layers, new_layers, mode, class_names, labels,
                               output_keys, options)
    if distributed:
        all_reduce_cka(run)
        all_reduce_agreement(counter)
    return ComparePassResult(run.result(estimator), counter.result())


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


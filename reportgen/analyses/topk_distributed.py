"""The top-k pass sharded across processes with ``torch.distributed``.

Rank r streams dataset items r, r + W, r + 2W, ... (W = world size) and keeps
its own running top-k (``topk.stream_topk``); the (C, k) states are then
all-gathered and merged with the same total order (value desc, image index
asc), which makes the result identical to one process over the whole dataset:
every image lives in exactly one shard, so each channel's global top-k is
inside the union of the local ones. Only rank 0 does the light second step
(choosing channels, reading back and cropping the winners).

Backends: gloo on CPU, nccl when CUDA is available (each rank on
``cuda:LOCAL_RANK``). The command-line entry that resolves a spec and
launches this is ``reportgen.distributed`` (analyses know nothing of specs):

    torchrun --standalone --nproc_per_node 2 -m reportgen.distributed topk \\
        --spec spec.yaml --out topk.npz [--layers a b] [--channels 16] [--k 9]
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reportgen.analyses import topk as tk


def shard(dataset: torch.utils.data.Dataset, rank: int, world_size: int) -> torch.utils.data.Subset:
    """Items rank, rank + W, ...: interleaved, so shards stay balanced and class-mixed."""
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))


def gather_states(state: tk.StreamState, k: int) -> tk.StreamState:
    """All-gather every rank's (C, k) state and merge exactly; every rank gets the same result.

    ``all_gather_object`` pickles small numpy arrays, so the same code works on
    gloo and nccl (where it stages through the current CUDA device).
    """
    states: List[Optional[tk.StreamState]] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return tk.merge_states([s for s in states if s is not None], k)


def distributed_topk_patches(model: nn.Module, dataset: tk.ImageDataset, layers: Sequence[str],
                             channels: Union[int, Sequence[int]] = 16, k: int = 9,
                             batch_size: int = 64, workers: int = 0,
                             device: Union[str, torch.device] = "cpu",
                             input_size: Optional[Sequence[int]] = None, projection: str = "none",
                             progress=None, layouts=None) -> Optional[tk.TopKResult]:
    """``topk.topk_patches`` over this process group: the result on rank 0, None elsewhere."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local = tk.stream_topk(model, shard(dataset, rank, world), layers, k, batch_size, workers,
                           device, progress if rank == 0 else None, layouts)
    merged = gather_states(local, k)
    if rank != 0:
        return None
    return tk.finish_topk(model, dataset, merged, layers, channels, k, device,
                          input_size or dataset.input_size, projection, batch_size)


def result_arrays(result: tk.TopKResult) -> Dict[str, np.ndarray]:
    """Flatten a result into npz-able arrays, keyed ``<layer>/<field>``, plus a JSON header."""
    out: Dict[str, np.ndarray] = {}
    header = {"n_images": result.n_images, "k": result.k, "projection": result.projection,
              "channel_rule": result.channel_rule, "layers": []}
    for la in result.layers:
        header["layers"].append({"layer": la.layer, "shape": la.shape, "rf": la.rf, "rf_note": la.rf_note,
                                  "sources": la.sources})
        for f in ("channels", "score", "channel_max", "values", "images", "ys", "xs", "boxes", "patches"):
            out[f"{la.layer}/{f}"] = getattr(la, f)
        if la.projections is not None:
            out[f"{la.layer}/projections"] = la.projections
    out["header"] = np.array(json.dumps(header))
    return out

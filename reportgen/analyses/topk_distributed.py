"""The top-k pass sharded across processes with ``torch.distributed``.

Rank r streams dataset items r, r + W, r + 2W, ... (W = world size) and keeps
its own running top-k (``topk.stream_topk``); the (C, k) states are then
all-gathered and merged with the same total order (value desc, image index
asc), which makes the result identical to one process over the whole dataset:
every image lives in exactly one shard, so each channel's global top-k is
inside the union of the local ones. Only rank 0 does the light second step
(choosing channels, reading back and cropping the winners).

Backends: gloo on CPU, nccl when CUDA is available (each rank on
``cuda:LOCAL_RANK``). Launch:

    torchrun --nproc_per_node 2 -m reportgen.analyses.topk_distributed \\
        --spec spec.yaml --out topk.npz [--layers a b] [--channels 16] [--k 9]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
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
                             progress=None) -> Optional[tk.TopKResult]:
    """``topk.topk_patches`` over this process group: the result on rank 0, None elsewhere."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local = tk.stream_topk(model, shard(dataset, rank, world), layers, k, batch_size, workers,
                           device, progress if rank == 0 else None)
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
        header["layers"].append({"layer": la.layer, "shape": la.shape, "rf": la.rf, "sources": la.sources})
        for f in ("channels", "score", "channel_max", "values", "images", "ys", "xs", "boxes", "patches"):
            out[f"{la.layer}/{f}"] = getattr(la, f)
        if la.projections is not None:
            out[f"{la.layer}/projections"] = la.projections
    out["header"] = np.array(json.dumps(header))
    return out


def _device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m reportgen.analyses.topk_distributed",
                                 description="Top-k dataset patches, sharded over torchrun processes.")
    ap.add_argument("--spec", required=True, help="the report spec (model, checkpoints, dataset)")
    ap.add_argument("--out", required=True, help="where rank 0 writes the result (.npz)")
    ap.add_argument("--layers", nargs="*", default=None, help="default: the spec's sections.topk.layers")
    ap.add_argument("--channels", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--projection", choices=["none", "guided", "deconv"], default=None)
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """torchrun entry: each rank resolves the spec, streams its shard; rank 0 writes the npz."""
    from reportgen.errors import ReportgenError
    from reportgen.sections.base import BuildContext
    from reportgen.sections.topk import choose_layers, dataset_for
    from reportgen.spec import load_spec
    from reportgen.spec.resolve import resolve

    args = _parse(argv)
    device = _device()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        try:
            res = resolve(load_spec(args.spec), device.type)
        except ReportgenError as e:
            print(f"reportgen: {e}", file=sys.stderr)
            return 2
        if not res.dataset:
            print(f"reportgen: {args.spec}: the spec has no dataset: add a `dataset:` to it", file=sys.stderr)
            return 2
        options = res.spec["sections"].get("topk") or {}
        ctx = BuildContext(model=res.model, device=device, input_size=res.input_size, probes=res.probes,
                           classes=res.classes, checkpoints=res.checkpoints, spec=res.spec,
                           dataset=res.dataset)
        layers = args.layers or choose_layers(ctx, options.get("layers", "auto"))
        data = res.spec["dataset"]
        result = distributed_topk_patches(
            res.model.to(device), dataset_for(ctx), layers, args.channels or options.get("channels", 16),
            args.k or options.get("k", 9), data["batch_size"], data["workers"], device, res.input_size,
            args.projection or options.get("projection", "none"))
        if result is not None:
            np.savez_compressed(args.out, **result_arrays(result))
            print(f"rank 0 of {dist.get_world_size()}: wrote {args.out}", file=sys.stderr)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

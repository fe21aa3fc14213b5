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
    reportgen build spec.yaml --topk topk.npz

It saves the merged stream state (:func:`save_topk_pass`, a plain .npz with a
header of what it was computed on); ``build --topk`` reads it back
(:func:`load_topk_pass`, every array checked) and does the light second step
itself.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reportgen.analyses import topk as tk
from reportgen.cache import load_plain, read_pass_file, save_plain


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


def distributed_stream_topk(model: nn.Module, dataset: torch.utils.data.Dataset, layers: Sequence[str], k: int,
                            batch_size: int = 64, workers: int = 0, device: Union[str, torch.device] = "cpu",
                            progress=None, layouts=None) -> tk.StreamState:
    """``topk.stream_topk`` over this process group: every rank gets the merged state."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local = tk.stream_topk(model, shard(dataset, rank, world), layers, k, batch_size, workers,
                           device, progress if rank == 0 else None, layouts)
    return gather_states(local, k)


def distributed_topk_patches(model: nn.Module, dataset: tk.ImageDataset, layers: Sequence[str],
                             channels: Union[int, Sequence[int]] = 16, k: int = 9,
                             batch_size: int = 64, workers: int = 0,
                             device: Union[str, torch.device] = "cpu",
                             input_size: Optional[Sequence[int]] = None, projection: str = "none",
                             progress=None, layouts=None) -> Optional[tk.TopKResult]:
    """``topk.topk_patches`` over this process group: the result on rank 0, None elsewhere."""
    merged = distributed_stream_topk(model, dataset, layers, k, batch_size, workers, device, progress, layouts)
    if dist.get_rank() != 0:
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


# --------------------------------------------------------------------------- the file

def save_topk_pass(path, state: tk.StreamState, header: Dict[str, str]) -> None:
    """The merged stream state (every channel's top-k per layer, map shapes, images seen) as a
    plain .npz, written by rename, with ``header`` saying what it was computed on."""
    save_plain(path, {"header": header, "n_images": state.n_images,
                      "shapes": {n: list(s) for n, s in state.shapes.items()}, "layers": state.layers})


def load_topk_pass(path) -> Tuple[tk.StreamState, Dict[str, Any]]:
    """(state, header) from :func:`save_topk_pass`'s file; ValueError naming what is wrong otherwise.
    The file may come from anywhere: every array must have its dtype, shape and range."""
    def read() -> Tuple[tk.StreamState, Dict[str, Any]]:
        data = load_plain(path)
        header, n = data["header"], data["n_images"]
        if not isinstance(header, dict) or not all(isinstance(v, str) for v in header.values()):
            raise ValueError("'header' is not an object of strings")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("'n_images' is not a count")
        shapes: Dict[str, Tuple[int, int, int]] = {}
        for name, shape in data["shapes"].items():
            if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
                raise ValueError(f"the shape of layer {name!r} is not (C, h, w)")
            shapes[name] = (shape[0], shape[1], shape[2])
        layers = {name: _checked_layer(name, data["layers"][name], shapes[name], n) for name in shapes}
        return tk.StreamState(layers, shapes, n), header
    return read_pass_file(path, "a top-k pass written by reportgen.distributed topk", read)


def _checked_layer(name: str, st: Dict[str, Any], shape: Tuple[int, int, int], n: int) -> Dict[str, np.ndarray]:
    kinds = {"values": "f", "images": "i", "positions": "i"}
    out = {f: st[f] for f in kinds}
    for f, kind in kinds.items():
        a = out[f]
        if not isinstance(a, np.ndarray) or a.dtype.kind != kind or a.ndim != 2 or a.shape != out["values"].shape \
                or a.shape[0] != shape[0]:
            raise ValueError(f"{name}/{f} is not a ({shape[0]}, k) array of kind {kind!r}")
    images, positions = out["images"], out["positions"]
    if not ((images == tk.NO_IMAGE) | ((images >= 0) & (images < n))).all():
        raise ValueError(f"{name}/images names an image out of range")
    if positions.size and (positions.min() < 0 or positions.max() >= shape[1] * shape[2]):
        raise ValueError(f"{name}/positions names a unit outside the map")
    return out

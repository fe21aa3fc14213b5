"""Top-k dataset patches: the image regions that excite a channel most.

Zeiler & Fergus (2014) and Girshick et al. (2014) read a unit by its
strongest responses over a whole dataset, each cut down to the unit's
receptive field. This module does that in one streaming pass:

* **One pass, several layers.** A DataLoader feeds batches; forward hooks
  (inside ``reportgen.model.hooks.hooks``) catch every requested layer in the same
  forward and reduce its map at once.
* **One candidate per image and channel.** Each image offers its spatial
  maximum per channel (the first maximum in raster order), so a channel's
  top-k are k *distinct* images, as in Zeiler & Fergus.
* **A running top-k on the device.** Per layer the state is three (C, k)
  tensors (value, image index, position); each batch is merged into it, so
  memory depends on C and k, never on the dataset size.
* **Deterministic order.** Entries are ranked by value (descending), then
  global image index (ascending); an image holds one entry per channel, so
  that order is total, shard merges are exact and batch size never changes
  which images win (``merge_topk``).
* **Crops afterwards.** Only the k images per chosen channel are read again,
  and the unit's whole receptive field is cut out of the preprocessed image
  (``crop_patch``), padded where it leaves the image so every patch of a layer
  has one size.

Which channels are shown (``channels`` is a count) is decided after the pass,
when every channel's top-k is known: the channels with the largest mean top-k
activation, i.e. the units that respond most strongly on k different images
(ties by channel index). Dead channels (top activation <= 0) come last.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from reportgen.model.hooks import ActivationRecorder, eval_mode, hook_layers
from reportgen.model.layers import layer_layouts
from reportgen.model.layout import Layout

CHANNEL_RULE = "largest mean top-k activation (ties: lower channel index)"
MAX_PATCH = 128          # stored patch side cap: deeper RFs (hundreds of px) are downscaled
NO_IMAGE = torch.iinfo(torch.int64).max   # sentinel index of an empty top-k slot

Item = Tuple[Union[str, Path], Optional[str]]
Progress = Callable[..., Iterable]


# --------------------------------------------------------------------------- dataset

class ImageDataset(torch.utils.data.Dataset):
    """The spec's dataset as model inputs: (tensor, global index) per item.

    Loading goes through ``reportgen.model.images`` (the same decode and preprocess
    as the probes), so a patch shows exactly what the model saw. Returning the
    global index with the tensor lets a shard (``torch.utils.data.Subset``) or
    any sampler keep image identities, which the tie-breaking relies on.
    """

    def __init__(self, items: Sequence[Item], input_size: Sequence[int],
                 resize: Optional[int] = None, center_crop=None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 interpolation: str = "bilinear"):
        self.items = [(Path(p), c) for p, c in items]
        self.interpolation = interpolation
        self.input_size = tuple(int(v) for v in input_size)
        self.resize, self.center_crop = resize, center_crop
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Tuple[torch.Tensor, np.ndarray]:
        """(model input (C, H, W), display crop (H, W, 3) uint8) of item ``index``."""
        from reportgen.model.images import load_image, preprocess

        img = load_image(self.items[index][0])
        return preprocess(img, self.input_size, self.resize, self.center_crop, self.mean, self.std,
                          self.interpolation)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.load(index)[0], index

    def name(self, index: int) -> str:
        """A short label: ``class/file`` or the file name."""
        path, cls = self.items[index]
        return f"{cls}/{path.name}" if cls else path.name

    def fill_colour(self) -> np.ndarray:
        """The colour zero padding shows the model: the normalization mean, as RGB uint8."""
        c = self.input_size[0]
        mean = self.mean if self.mean is not None else (0.485, 0.456, 0.406)
        rgb = np.array(mean * 3 if c == 1 else mean, dtype=np.float64)[:3]
        return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- running top-k

def merge_topk(values: torch.Tensor, images: torch.Tensor, positions: torch.Tensor,
               k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best of (C, M) candidates per row, by value desc then image index asc.

    Two stable sorts give the lexicographic order on any device: sort by image
    index first, then (stably) by value. ``torch.topk`` alone is not used
    because it orders ties arbitrarily, which would make results depend on
    batch size and shard layout. NaN counts as -inf (never a top response).
    """
    values = torch.nan_to_num(values, nan=-math.inf)
    order = torch.sort(images, dim=1, stable=True).indices
    values, images, positions = (t.gather(1, order) for t in (values, images, positions))
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return tuple(t.gather(1, order) for t in (values, images, positions))  # type: ignore[return-value]


class RunningTopK:
    """Per-channel top-k of one layer, updated batch by batch; size (C, k), never (N, ...)."""

    def __init__(self, channels: int, k: int, device: torch.device):
        self.k = int(k)
        self.values = torch.full((channels, self.k), -math.inf, device=device)
        self.images = torch.full((channels, self.k), NO_IMAGE, dtype=torch.long, device=device)
        self.positions = torch.zeros((channels, self.k), dtype=torch.long, device=device)

    def update(self, acts: torch.Tensor, index: torch.Tensor) -> None:
        """Merge a batch: ``acts`` (B, C, H, W), ``index`` (B,) global image indices."""
        best, pos = acts.detach().float().flatten(2).max(dim=2)   # first max in raster order
        self.update_maxima(best, pos, index)

    def update_maxima(self, best: torch.Tensor, pos: torch.Tensor, index: torch.Tensor) -> None:
        """Merge a batch already reduced to (B, C) spatial maxima and flat positions."""
        b, c = best.shape
        idx = index.to(device=self.images.device, dtype=torch.long)[None].expand(c, b)
        self.merge(best.t(), idx, pos.t())

    def merge(self, values: torch.Tensor, images: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge (C, M) candidates, e.g. another shard's state."""
        dev = self.values.device
        self.values, self.images, self.positions = merge_topk(
            torch.cat([self.values, values.to(dev)], 1), torch.cat([self.images, images.to(dev)], 1),
            torch.cat([self.positions, positions.to(dev)], 1), self.k)

    def numpy(self) -> Dict[str, np.ndarray]:
        return {"values": self.values.cpu().numpy().astype(np.float32),
                "images": self.images.cpu().numpy(), "positions": self.positions.cpu().numpy()}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.images, self.positions))


@dataclass
class StreamState:
    """What the pass leaves per layer: the top-k of *every* channel, plus map sizes."""

    layers: Dict[str, Dict[str, np.ndarray]]   # layer -> {"values", "images", "positions"} (C, k)
    shapes: Dict[str, Tuple[int, int, int]]    # layer -> (C, h, w), as read through its layout
    n_images: int                               # images this state has seen
    layouts: Dict[str, Layout] = field(default_factory=dict)   # layer -> how its output was read


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, workers: int,
                device: torch.device) -> torch.utils.data.DataLoader:
    """A deterministic (unshuffled) loader; pinned memory only when it helps (CUDA)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False)


class TopKTracker:
    """Hooks on several layers plus their running top-k; ``step`` feeds one batch.

    Use as a context manager: the model is in eval mode and hooked inside,
    restored and unhooked after, even on an error. Each layer's map is reduced
    to (B, C) maxima inside its forward hook, so no feature map outlives the
    forward step that made it, and an in-place op later in the model cannot
    change what was recorded. Maps are read through each layer's Layout
    (``layouts``; without them, detected on the first image of the first step).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], k: int,
                 device: Union[str, torch.device] = "cpu",
                 layouts: Optional[Dict[str, Layout]] = None, keep_errors: bool = False):
        self.model, self.layers, self.k = model, list(layers), int(k)
        self.device = torch.device(device)
        self.layouts = layouts
        # keep_errors: a layer that cannot be read stops this tracker (``error``), not the forward
        # pass it rides on, which other readers of the same pass share (``dataset_pass``)
        self.keep_errors = keep_errors
        self.error: Optional[Exception] = None
        self.states: Dict[str, RunningTopK] = {}
        self.shapes: Dict[str, Tuple[int, int, int]] = {}
        self.seen = 0
        self._batch: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "TopKTracker":
        self._stack.enter_context(eval_mode(self.model))
        hook_layers(self._stack, self.model, self.layers, self._reducer)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @torch.no_grad()
    def step(self, x: torch.Tensor, index: torch.Tensor) -> None:
        """One forward over ``x`` (B, C, H, W); ``index`` (B,) are the images' global indices."""
        x = x.to(self.device, non_blocking=True)
        if self.layouts is None:       # the reducers wait for these (they skip this pass)
            self.layouts = layer_layouts(self.model, x[:1], self.layers)
        self._batch.clear()
        self.model(x)
        self.absorb(index)

    def absorb(self, index: torch.Tensor) -> None:
        """Merge what the hooks caught in the last forward, run by someone else (``index``: its
        (B,) global image indices). Needs ``layouts`` given up front."""
        if self.error is not None:
            return
        missing = [name for name in self.layers if name not in self._batch]
        if missing:
            err = ValueError(f"layer {missing[0]!r} was not called during the forward pass")
            if not self.keep_errors:
                raise err
            self.error = err
            return
        for name in self.layers:
            best, pos = self._batch[name]
            if name not in self.states:
                self.states[name] = RunningTopK(best.shape[1], self.k, self.device)
            self.states[name].update_maxima(best, pos, index)
        self.seen += int(index.shape[0])
        self._batch.clear()

    def result(self) -> StreamState:
        return StreamState({n: s.numpy() for n, s in self.states.items()}, dict(self.shapes), self.seen,
                           dict(self.layouts or {}))

    def _reducer(self, name: str) -> Callable:
        """Forward hook: (B, C) spatial maxima and first raster positions of the layer's map.

        A module called several times keeps its last call, as ``ActivationRecorder`` does.
        """
        def fn(_module, _inputs, output):
            if self.layouts is None or self.error is not None:
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            try:
                out = _check_map(name, out, self.layouts.get(name))
            except ValueError as err:
                if not self.keep_errors:
                    raise
                self.error = err
                return
            self.shapes[name] = tuple(int(v) for v in out.shape[1:])
            self._batch[name] = out.detach().float().flatten(2).max(dim=2)
        return fn


def stream_topk(model: nn.Module, dataset: torch.utils.data.Dataset, layers: Sequence[str], k: int,
                batch_size: int = 64, workers: int = 0, device: Union[str, torch.device] = "cpu",
                progress: Optional[Progress] = None,
                layouts: Optional[Dict[str, Layout]] = None) -> StreamState:
    """The streaming pass: every channel's top-k of every layer, over ``dataset`` once.

    ``dataset`` yields (tensor, global index); pass a ``Subset`` for a shard.
    The states live on ``device``; only (C, k) per layer comes back to the CPU.
    ``layouts`` (layer -> Layout) say how to read each output; None detects them.
    """
    device = torch.device(device)
    loader = make_loader(dataset, batch_size, workers, device)
    if progress is not None:
        loader = progress(loader, desc="top-k pass", total=len(loader))
    with TopKTracker(model, layers, k, device, layouts) as tracker:
        for x, index in loader:
            tracker.step(x, index)
    return tracker.result()


def _check_map(name: str, out: Any, layout: Optional[Layout] = None) -> torch.Tensor:
    """``out`` as (N, C, H, W), read through ``layout`` when there is one."""
    if torch.is_tensor(out) and layout is not None:
        out = layout.to_nchw(out)
    if not torch.is_tensor(out) or out.ndim != 4:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"layer {name!r} has output shape {shape}, not (N, C, H, W); "
                         "top-k patches need a convolutional layer")
    return out


def merge_states(states: Sequence[StreamState], k: int) -> StreamState:
    """Exact merge of shard states: the global top-k is inside the union of local top-ks.

    Every image lives in exactly one shard and offers one candidate per
    channel, so ranking the union with ``merge_topk`` gives what one process
    over all images gives, ties included.
    """
    states = [s for s in states if s.layers]
    if not states:
        return StreamState({}, {}, 0)
    layers: Dict[str, Dict[str, np.ndarray]] = {}
    for name in states[0].layers:
        cat = {f: torch.from_numpy(np.concatenate([s.layers[name][f] for s in states], axis=1))
               for f in ("values", "images", "positions")}
        v, i, p = merge_topk(cat["values"], cat["images"], cat["positions"], k)
        layers[name] = {"values": v.numpy(), "images": i.numpy(), "positions": p.numpy()}
    return StreamState(layers, dict(states[0].shapes), sum(s.n_images for s in states),
                       dict(states[0].layouts))


# --------------------------------------------------------------------------- channel choice

def choose_channels(values: np.ndarray, images: np.ndarray,
                    channels: Union[int, Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
    """(chosen channel indices, score of every channel) from a layer's (C, k) state.

    A count picks the channels with the largest mean over their filled top-k
    slots (``CHANNEL_RULE``); a list pins channels (checked, order kept).
    """
    c = values.shape[0]
    filled = images != NO_IMAGE
    safe = np.where(filled, values, 0.0).astype(np.float64)
    score = (safe.sum(axis=1) / np.maximum(filled.sum(axis=1), 1)).astype(np.float32)
    if not isinstance(channels, (int, np.integer)):
        picked = np.asarray([int(ch) for ch in channels], dtype=np.int64)
        bad = [int(ch) for ch in picked if not 0 <= ch < c]
        if bad:
            raise ValueError(f"channel {bad[0]} is out of range: the layer has {c} channels")
        return picked, score
    order = np.lexsort((np.arange(c), -score))     # score desc, then index asc
    return order[: min(int(channels), c)].astype(np.int64), score


# --------------------------------------------------------------------------- crops

def rf_origin(rf: Dict[str, Tuple], y: int, x: int) -> Tuple[int, int]:
    """Top-left input pixel of unit (y, x)'s window, unclipped (may be negative).

    The same arithmetic as ``receptive_field_box`` before it clips.
    """
    return tuple(int(round(rf["start"][a] + u * rf["jump"][a] - (rf["size"][a] - 1) / 2))
                 for a, u in ((0, y), (1, x)))  # type: ignore[return-value]


def crop_patch(image: np.ndarray, rf: Dict[str, Tuple], y: int, x: int,
               fill: Union[float, Sequence[float], np.ndarray] = 0) -> np.ndarray:
    """The whole receptive field of unit (y, x) cut from ``image`` (H, W[, C]).

    The result is always ``rf["size"]`` (h, w): parts of the window outside
    the image are ``fill``, so all patches of a layer align and a unit at the
    border shows where its window left the picture.
    """
    from reportgen.analyses.receptive_field import receptive_field_box

    size = tuple(int(s) for s in rf["size"])
    h, w = image.shape[:2]
    oy, ox = rf_origin(rf, y, x)
    y0, x0, y1, x1 = receptive_field_box(rf, y, x, (h, w))
    patch = np.empty(size + image.shape[2:], dtype=image.dtype)
    patch[...] = np.asarray(fill, dtype=image.dtype)
    if y1 > y0 and x1 > x0:
        patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox] = image[y0:y1, x0:x1]
    return patch


def _fit(patch: np.ndarray, side: Tuple[int, int]) -> np.ndarray:
    """Downscale a (h, w[, C]) patch to ``side`` (area filter); no-op when already that size."""
    if patch.shape[:2] == side:
        return patch
    if patch.dtype == np.uint8:
        return np.asarray(Image.fromarray(patch).resize(side[::-1], Image.Resampling.BOX))
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(patch, -1, 0)))[None].float()
    out = torch.nn.functional.interpolate(t, size=side, mode="area")[0]
    return np.moveaxis(out.numpy(), 0, -1).astype(np.float32)


def stored_side(rf_size: Sequence[int], cap: int = MAX_PATCH) -> Tuple[int, int]:
    """Stored patch size: the RF itself, or scaled down (aspect kept) so the long side is ``cap``."""
    h, w = (int(v) for v in rf_size)
    scale = min(1.0, cap / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


# --------------------------------------------------------------------------- projection

def project_units(model: nn.Module, x: torch.Tensor, layer: str, channels: torch.Tensor,
                  ys: torch.Tensor, xs: torch.Tensor, rule: str,
                  layout: Optional[Layout] = None) -> np.ndarray:
    """Guided-backprop / deconvnet projection of one unit per image: (N, C_in, H, W).

    Image i's unit (channels[i], ys[i], xs[i]) is summed over the batch and
    differentiated w.r.t. the input; in eval mode image i's unit depends on
    image i only, so each row is that unit's own projection. ``rule`` is
    "guided" (Springenberg et al.) or "deconv" (Zeiler & Fergus).
    """
    from reportgen.analyses.gradients import relu_backward_override

    with eval_mode(model), torch.enable_grad(), relu_backward_override(rule) as mode:
        x = x.detach().clone().requires_grad_(True)
        with ActivationRecorder(model, [layer], keep_graph=True) as rec:
            model(x)
            if layer not in rec.outputs:
                raise ValueError(f"layer {layer!r} was not called during the forward pass")
            out = _check_map(layer, rec.outputs[layer], layout)
        unit = out[torch.arange(x.shape[0], device=x.device), channels, ys, xs]
        (grad,) = torch.autograd.grad(unit.sum(), x)
    if mode.calls == 0:
        raise ValueError(f"projection {rule!r} needs ReLUs, but the model called none")
    return grad.detach().cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- result

@dataclass
class LayerTopK:
    """One layer's top-k patches. Arrays are indexed [row, rank]; rows = chosen channels."""

    layer: str
    shape: List[int]              # (C, h, w) of the layer's output, read through its layout
    rf: Dict[str, List]           # receptive_field(): size, jump, start
    channels: np.ndarray          # (S,) chosen channel indices, best first
    score: np.ndarray             # (C,) mean top-k activation of every channel (the choice's key)
    channel_max: np.ndarray       # (C,) top activation of every channel over the dataset
    values: np.ndarray            # (S, k) float32, descending per row
    images: np.ndarray            # (S, k) int64 dataset indices
    ys: np.ndarray                # (S, k) int64 unit row in the layer's map
    xs: np.ndarray                # (S, k) int64 unit column
    boxes: np.ndarray             # (S, k, 4) int64 unclipped RF box (y0, x0, y1, x1), ends exclusive
    patches: np.ndarray           # (S, k, ph, pw, 3) uint8, RF crops (downscaled past MAX_PATCH)
    projections: Optional[np.ndarray]  # (S, k, ph, pw, C_in) float32 raw projections, or None
    sources: List[List[str]]      # (S, k) image labels (class/file)
    layout: str = "nchw"          # how the layer's output was read: nchw | nhwc | tokens
    rf_note: str = ""             # why rf is the whole input, when the field could not be traced


@dataclass
class TopKResult:
    layers: List[LayerTopK]
    n_images: int
    k: int                        # per channel: min(k asked, n_images)
    projection: str               # none | guided | deconv
    channel_rule: str


def topk_patches(model: nn.Module, dataset: ImageDataset, layers: Sequence[str],
                 channels: Union[int, Sequence[int]] = 16, k: int = 9, batch_size: int = 64,
                 workers: int = 0, device: Union[str, torch.device] = "cpu",
                 input_size: Optional[Sequence[int]] = None, projection: str = "none",
                 progress: Optional[Progress] = None,
                 layouts: Optional[Dict[str, Layout]] = None) -> TopKResult:
    """Top-k dataset patches of ``channels`` channels of each of ``layers``.

    One streaming pass (``stream_topk``), then ``finish_topk`` reads back only
    the winning images to crop them. ``input_size`` defaults to the dataset's;
    ``layouts`` (layer -> Layout) default to the detected ones.
    """
    state = stream_topk(model, dataset, layers, k, batch_size, workers, device, progress, layouts)
    return finish_topk(model, dataset, state, layers, channels, k, device,
                       input_size or dataset.input_size, projection, batch_size)


def finish_topk(model: nn.Module, dataset: ImageDataset, state: StreamState, layers: Sequence[str],
                channels: Union[int, Sequence[int]], k: int, device: Union[str, torch.device],
                input_size: Sequence[int], projection: str = "none",
                batch_size: int = 64, patch_cap: int = MAX_PATCH) -> TopKResult:
    """Choose channels, then crop (and optionally project) the winners: the light second step."""
    if projection not in ("none", "guided", "deconv"):
        raise ValueError(f"unknown projection {projection!r}; valid: none, guided, deconv")
    k_eff = min(int(k), state.n_images)
    out: List[LayerTopK] = []
    for name in layers:
        if name not in state.layers:
            raise ValueError("the dataset is empty: no image reached the top-k pass")
        st = state.layers[name]
        rf = unit_field(model, name, input_size, state.layouts.get(name), state.shapes[name])
        chosen, score = choose_channels(st["values"], st["images"], channels)
        w = state.shapes[name][2]
        sel = {f: st[f][chosen, :k_eff] for f in ("values", "images", "positions")}
        ys, xs = sel["positions"] // w, sel["positions"] % w
        layer = _crop_layer(dataset, rf, sel["images"], ys, xs, patch_cap)
        lay = state.layouts.get(name)
        proj = (_project_layer(model, dataset, name, rf, chosen, sel["images"], ys, xs,
                               projection, torch.device(device), batch_size, lay, patch_cap)
                if projection != "none" and k_eff else None)
        out.append(LayerTopK(layer=name, shape=list(state.shapes[name]), rf_note=rf.get("note", ""),
                             rf={key: list(v) for key, v in rf.items() if key != "note"},
                             channels=chosen, score=score,
                             channel_max=st["values"][:, 0].astype(np.float32),
                             values=sel["values"].astype(np.float32), images=sel["images"],
                             ys=ys, xs=xs, projections=proj, layout=lay.kind if lay else "nchw", **layer))
    return TopKResult(layers=out, n_images=state.n_images, k=k_eff, projection=projection,
                      channel_rule=CHANNEL_RULE)


def unit_field(model: nn.Module, name: str, input_size: Sequence[int], layout: Optional[Layout],
               shape: Sequence[int]) -> Dict[str, Any]:
    """The input region behind one unit of ``name`` (``receptive_field``'s dict).

    A layer whose field cannot be traced (attention, which mixes every
    position; padding on channels-last windows; an op of unknown geometry) is
    given the whole input, centred on the unit's grid cell: an over-estimate,
    as ``receptive_field`` gives for adaptive pools, so a patch shows the whole
    image with the unit's cell in its middle. The dict then has a ``note``
    saying so and why, which the page shows in place. ``shape`` is the map's
    (C, h, w).
    """
    from reportgen.analyses.receptive_field import receptive_field

    try:
        return receptive_field(model, name, input_size)
    except ValueError as err:
        reason = " ".join(str(err).split(". Supported:")[0].split())
    big_h, big_w = (int(v) for v in input_size[-2:])
    jump = (max(1, big_h // int(shape[1])), max(1, big_w // int(shape[2])))
    kind = layout.kind if layout is not None else "nchw"
    why = "attention and token mixing reach every position" if kind == "tokens" else reason
    return {"size": (big_h, big_w), "jump": jump, "start": ((jump[0] - 1) / 2, (jump[1] - 1) / 2),
            "note": f"patches are the whole input centred on the unit's cell: the receptive field "
                    f"could not be traced ({why})"}


def _by_image(images: np.ndarray) -> Dict[int, List[Tuple[int, int]]]:
    """image index -> the (row, rank) slots it fills, in index order: each image is read once."""
    slots: Dict[int, List[Tuple[int, int]]] = {}
    for r, j in np.ndindex(*images.shape):
        slots.setdefault(int(images[r, j]), []).append((r, j))
    return dict(sorted(slots.items()))


def _crop_layer(dataset: ImageDataset, rf: Dict, images: np.ndarray, ys: np.ndarray,
                xs: np.ndarray, cap: int = MAX_PATCH) -> Dict:
    """Patches, boxes and labels of one layer; one image in memory at a time."""
    side = stored_side(rf["size"], cap)
    fill = dataset.fill_colour()
    s, k = images.shape
    patches = np.zeros((s, k) + side + (3,), dtype=np.uint8)
    boxes = np.zeros((s, k, 4), dtype=np.int64)
    sources = [[""] * k for _ in range(s)]
    for index, slots in _by_image(images).items():
        display = dataset.load(index)[1]
        for r, j in slots:
            y, x = int(ys[r, j]), int(xs[r, j])
            patches[r, j] = _fit(crop_patch(display, rf, y, x, fill), side)
            oy, ox = rf_origin(rf, y, x)
            boxes[r, j] = (oy, ox, oy + int(rf["size"][0]), ox + int(rf["size"][1]))
            sources[r][j] = dataset.name(index)
    return {"patches": patches, "boxes": boxes, "sources": sources}


def _project_layer(model: nn.Module, dataset: ImageDataset, name: str, rf: Dict,
                   chosen: np.ndarray, images: np.ndarray, ys: np.ndarray, xs: np.ndarray, rule: str,
                   device: torch.device, batch_size: int, layout: Optional[Layout] = None,
                   cap: int = MAX_PATCH) -> np.ndarray:
    """Projections of every (channel, rank) unit, batched, cropped like the patches."""
    s, k = images.shape
    flat = [(r, j) for r in range(s) for j in range(k)]
    side = stored_side(rf["size"], cap)
    c_in = int(dataset.input_size[0])
    out = np.zeros((s, k) + side + (c_in,), dtype=np.float32)
    for lo in range(0, len(flat), max(1, batch_size)):
        chunk = flat[lo:lo + batch_size]
        loaded = {i: dataset.load(i)[0] for i in sorted({int(images[r, j]) for r, j in chunk})}
        x = torch.stack([loaded[int(images[r, j])] for r, j in chunk]).to(device)
        grads = project_units(
            model, x, name,
            torch.tensor([int(chosen[r]) for r, _ in chunk], device=device),
            torch.tensor([int(ys[r, j]) for r, j in chunk], device=device),
            torch.tensor([int(xs[r, j]) for r, j in chunk], device=device), rule, layout)
        for (r, j), g in zip(chunk, grads):
            crop = crop_patch(np.moveaxis(g, 0, -1), rf, int(ys[r, j]), int(xs[r, j]), 0.0)
            out[r, j] = _fit(crop, side)
    return out

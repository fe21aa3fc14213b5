"""One forward pass over the dataset for every reader of it: top-k, embeddings, predictions.

The dataset sections each used to stream the whole dataset through the
model: top-k for its channel maxima, embeddings for its features, the errors
and calibration sections for class scores. On a ResNet-50 with 200 images on
two CPU cores that is 13 s of forward passes each, paid three times for the
same activations. Here one loop runs the model once per batch, and each
reader (a *tap*) takes what it needs from that forward:

* top-k: ``topk.TopKTracker`` hooks its layers and keeps every channel's
  running top-k (``absorb``);
* embeddings: ``embeddings.FeatureTap`` hooks one layer's input or output
  and keeps its pooled features, with every image's thumbnail;
* predictions: ``predictions.PredictionCounter`` reads the class scores
  (confusion, calibration sums, confident mistakes), and every image's top-1
  class is kept for the embeddings' mistakes.

A tap that fails (a layer that is no feature map, class scores of the wrong
shape) keeps its error and stops; the pass and the other taps go on, and the
section that reads the failed tap reports the error in place, as it would
had it run alone. Results equal the separate passes': each tap sees the same
batches in the same order.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from reportgen.analyses import embeddings as emb
from reportgen.analyses import predictions as pr
from reportgen.analyses import topk as tk
from reportgen.model.hooks import eval_mode
from reportgen.model.layout import Layout
from reportgen.model.loading import model_device
from reportgen.model.outputs import OutputKey, select_output


@dataclass(frozen=True)
class Taps:
    """What the pass collects; an empty part is not collected."""

    topk_layers: Tuple[str, ...] = ()
    topk_k: int = 0
    topk_layouts: Optional[Dict[str, Layout]] = None
    features_layer: Optional[str] = None          # embeddings: this layer's features
    features_input: bool = False                  # its input (the last Linear's), else its output
    features_layout: Optional[Layout] = None
    thumbnail: int = 0                            # side of every image's thumbnail (0: none)
    labels: Optional[Tuple[int, ...]] = None      # predictions: true class per image (-1: unknown)
    classes: Tuple[str, ...] = ()
    keep: int = 8                                 # confident mistakes kept

    def merged(self, other: "Taps") -> "Taps":
        """Both sets of taps in one (each kind is asked for by one section: the first one given wins)."""
        def pick(a: Any, b: Any) -> Any:
            return a if a not in (None, (), 0) else b
        return Taps(topk_layers=pick(self.topk_layers, other.topk_layers), topk_k=pick(self.topk_k, other.topk_k),
                    topk_layouts=pick(self.topk_layouts, other.topk_layouts),
                    features_layer=pick(self.features_layer, other.features_layer),
                    features_input=self.features_input if self.features_layer else other.features_input,
                    features_layout=pick(self.features_layout, other.features_layout),
                    thumbnail=pick(self.thumbnail, other.thumbnail), labels=pick(self.labels, other.labels),
                    classes=pick(self.classes, other.classes), keep=max(self.keep, other.keep))

    def covers(self, other: "Taps") -> bool:
        """Whether a pass with these taps holds everything ``other`` asks for."""
        return ((not other.topk_layers or (set(other.topk_layers) <= set(self.topk_layers)
                                            and other.topk_k <= self.topk_k))
                and (other.features_layer is None or (other.features_layer == self.features_layer
                                                      and other.features_input == self.features_input
                                                      and other.thumbnail == self.thumbnail))
                and (other.labels is None or (other.labels == self.labels and other.classes == self.classes
                                              and other.keep <= self.keep)))

    @property
    def empty(self) -> bool:
        return not self.topk_layers and self.features_layer is None and self.labels is None


@dataclass(frozen=True)
class DatasetPass:
    """What one pass left: each part None when not asked for, with its error when its tap failed."""

    n_images: int
    topk: Optional[tk.StreamState] = None
    topk_error: Optional[Exception] = None
    features: Optional[np.ndarray] = None         # (N, D) float32
    predictions: Optional[np.ndarray] = None      # (N,) int64 top-1 class of every image
    thumbnails: Optional[np.ndarray] = None       # (N, t, t, 3) uint8
    features_read: Optional[str] = None           # layout kind the features were pooled from
    features_error: Optional[Exception] = None
    labelled: Optional[pr.PredictionPass] = None
    labelled_error: Optional[Exception] = None


class _Tap:
    """One reader of the pass: ``feed`` errors are kept, not raised (see the module doc)."""

    def __init__(self, feed: Callable[..., None]):
        self.feed, self.error = feed, None

    def __call__(self, *args: Any) -> None:
        if self.error is None:
            try:
                self.feed(*args)
            except (ValueError, RuntimeError, IndexError) as err:
                self.error = err


@torch.no_grad()
def dataset_pass(model: nn.Module, dataset: tk.ImageDataset, taps: Taps, batch_size: int = 64,
                 workers: int = 0, device: Any = "cpu", output_key: OutputKey = None,
                 progress: Optional[Callable[..., Any]] = None) -> DatasetPass:
    """Run ``dataset`` through ``model`` once, feeding every tap of ``taps``; see the module doc."""
    dev = model_device(model, torch.device(device))
    loader = tk.make_loader(emb.WithThumbs(dataset, taps.thumbnail if taps.features_layer else 0),
                            batch_size, workers, dev)
    batches = progress(loader, desc="dataset pass", total=len(loader)) if progress else loader
    feats, preds, thumbs = [], [], []
    counter = (pr.PredictionCounter(taps.labels, taps.classes, dev, taps.keep)
               if taps.labels is not None else None)
    count = _Tap(counter.update) if counter is not None else None
    seen = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        tracker = (stack.enter_context(tk.TopKTracker(model, taps.topk_layers, taps.topk_k, dev,
                                                      taps.topk_layouts, keep_errors=True))
                   if taps.topk_layers else None)
        tap = (stack.enter_context(emb.FeatureTap(model, taps.features_layer, taps.features_input,
                                                  taps.features_layout)) if taps.features_layer else None)
        take = _Tap(lambda: feats.append(tap.take()))
        for x, index, thumb in batches:
            x = x.to(dev, non_blocking=True)
            if tap is not None:
                tap.start(x)
            logits = select_output(model(x), output_key)
            seen += int(x.shape[0])
            if tracker is not None:
                tracker.absorb(index)
            if tap is not None:     # the embedding's points: features, thumbnail, top-1 class
                take()
                thumbs.append(thumb)
                preds.append(logits.argmax(dim=1).cpu())
            if count is not None:
                count(logits, index)
    features = predictions = pictures = None
    if tap is not None and take.error is None:
        features, predictions = emb.stack_features(feats, preds)
        pictures = (torch.cat(thumbs).numpy() if thumbs
                    else np.zeros((0, taps.thumbnail, taps.thumbnail, 3), np.uint8))
    return DatasetPass(
        n_images=seen,
        topk=tracker.result() if tracker is not None and tracker.error is None else None,
        topk_error=tracker.error if tracker is not None else None,
        features=features, predictions=predictions, thumbnails=pictures,
        features_read=tap.read if tap is not None else None, features_error=take.error,
        labelled=counter.result() if count is not None and count.error is None else None,
        labelled_error=count.error if count is not None else None)


def labels_tuple(labels: Sequence[int]) -> Tuple[int, ...]:
    """Labels as the hashable tuple ``Taps`` compares."""
    return tuple(int(v) for v in np.asarray(labels).tolist())

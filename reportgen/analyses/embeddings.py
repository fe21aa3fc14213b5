"""Where the model puts each dataset image: penultimate features projected to 2-D.

A classifier's last linear layer separates classes with hyperplanes, so the
features it receives (the "penultimate layer") show what the network has
made linearly separable: tight, separate clusters per class mean the
representation does the work; overlapping clusters and misclassified points
sitting inside another class's cluster show which classes it confuses and
which images are odd (mislabelled, out of distribution).

* Features: the input of the last ``nn.Linear`` called in a forward pass
  (captured with a forward pre-hook), or a named layer's output, global
  average pooled when it is a feature map. Maps are read through their
  layout (``reportgen.model.layout``): a channels-last or token output is
  pooled over its grid, class and register tokens left out.
* Projection: PCA by default (numpy SVD: deterministic, fast, distances
  mean something); t-SNE on request (van der Maaten & Hinton 2008), which
  shows local neighbourhoods better but distorts global distances. t-SNE
  needs openTSNE or scikit-learn; neither is a hard dependency.
* Labels: the true class comes from the ImageFolder class folder, matched to
  the model's class names by name (None when there is no folder or no match).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from reportgen.model.hooks import eval_mode, hooks, record_calls
from reportgen.model.layers import get_layer, layer_layouts
from reportgen.model.layout import AUTO, Layout, linear_input_layout, refit
from reportgen.model.outputs import select_output

METHODS = ("pca", "tsne")
TSNE_PACKAGES = "openTSNE or scikit-learn (pip install scikit-learn)"


class MissingDependency(RuntimeError):
    """An optional package a requested method needs is not installed."""


@dataclass
class EmbeddingResult:
    coords: np.ndarray          # (N, 2) float32
    labels: np.ndarray          # (N,) int64 true class index, -1 when unknown
    predictions: np.ndarray     # (N,) int64 predicted class index
    misclassified: np.ndarray   # (N,) bool: true class known and prediction differs
    thumbnails: np.ndarray      # (N, t, t, 3) uint8
    names: List[str]            # per image: "class/file" or the file name
    method: str                 # "pca" | "tsne"
    backend: str                # "numpy" | "openTSNE" | "scikit-learn"
    layer: str                  # the module the features come from
    layer_input: bool           # True: its input (last Linear), False: its (pooled) output
    feature_dim: int
    explained: Optional[np.ndarray] = None   # PCA: variance ratio of the two axes
    layout: Optional[str] = None             # how a map was read before pooling: nchw | nhwc | tokens

    def accuracy(self) -> Optional[float]:
        """Top-1 accuracy over the images whose true class is known."""
        known = self.labels >= 0
        if not known.any():
            return None
        return float((self.predictions[known] == self.labels[known]).mean())


# --------------------------------------------------------------------------- features

def penultimate_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last nn.Linear called in a forward pass (its input is the penultimate feature).

    "Last" by when the call starts, so a Linear that wraps others (a LoRA
    adapter) loses to the last one it calls.
    """
    linears = [c for c in record_calls(model, example[:1]).calls if isinstance(c.module, nn.Linear)]
    if not linears:
        raise ValueError("the model calls no nn.Linear layer, so there is no penultimate feature "
                         "to take; name a layer with sections.embeddings.layer")
    return max(linears, key=lambda c: c.order).name


def _pooled(t: torch.Tensor, layout: Optional[Layout] = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) by global average pooling; anything else flattened per image.
    With a ``layout`` the map is read through it first (grid positions only)."""
    t = t.detach().float()
    if layout is not None:
        t = refit(layout, t.shape).to_nchw(t)
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    return t.reshape(t.shape[0], -1)


class FeatureTap:
    """A hook on ``layer`` that keeps, per forward, its pooled input (``use_input``) or output.

    A context manager: the hook is removed on exit, even on an error. Call
    :meth:`start` before each forward (it forgets the last batch and takes the
    batch's input size, which a token input needs to find its grid) and
    :meth:`take` after it. A module called several times keeps its last call.
    ``read`` is the layout kind the features were pooled from (None: plain).
    """

    def __init__(self, model: nn.Module, layer: str, use_input: bool, layout: Optional[Layout] = None):
        self.model, self.layer, self.use_input, self.layout = model, layer, use_input, layout
        self.read: Optional[str] = layout.kind if layout is not None else None
        self._current: List[torch.Tensor] = []
        self._hw: Tuple[int, ...] = ()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "FeatureTap":
        module = get_layer(self.model, self.layer)
        hs = self._stack.enter_context(hooks())
        hs.append(module.register_forward_pre_hook(self._pre) if self.use_input
                  else module.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _pooled(self, t: torch.Tensor, lay: Optional[Layout]) -> None:
        self.read = lay.kind if lay is not None else None
        self._current.append(_pooled(t, lay))

    def _pre(self, _m, args) -> None:
        x = args[0]
        self._pooled(x, linear_input_layout(x.shape, self.model, self._hw) if x.ndim in (3, 4) else None)

    def _post(self, _m, _args, out) -> None:
        self._pooled(out[0] if isinstance(out, (tuple, list)) else out, self.layout)

    def start(self, x: torch.Tensor) -> None:
        self._current.clear()
        self._hw = tuple(x.shape[-2:])

    def take(self) -> torch.Tensor:
        """(B, D) features of the last forward, on the CPU."""
        if not self._current:
            raise ValueError(f"layer {self.layer!r} was not called during the forward pass")
        return self._current[-1].cpu()


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable[torch.Tensor], layer: str, use_input: bool,
                     output_key=None, layout: Optional[Layout] = None,
                     read: Optional[List[Optional[str]]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(features (N, D), predictions (N,)) over all batches, in order.

    ``use_input``: take ``layer``'s input (a pre-hook; for the last Linear;
    a 4-D or token input is pooled over its grid, see
    ``layout.linear_input_layout``), else its output, read through ``layout``
    when given. ``read``, when given, receives the layout kind the features
    were pooled from.
    """
    feats, preds = [], []
    with eval_mode(model), FeatureTap(model, layer, use_input, layout) as tap:
        for x in batches:
            tap.start(x)
            scores = select_output(model(x), output_key)
            feats.append(tap.take())
            preds.append(scores.argmax(dim=1).cpu())
    if read is not None:
        read[:] = [tap.read]
    return stack_features(feats, preds)


def stack_features(feats: List[torch.Tensor], preds: List[torch.Tensor]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-batch features and predictions as (N, D) float32 and (N,) int64 arrays."""
    if not feats:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return (torch.cat(feats).numpy().astype(np.float32),
            torch.cat(preds).numpy().astype(np.int64))


def true_labels(folder_classes: Sequence[Optional[str]], classes: Sequence[str]) -> np.ndarray:
    """Class indices from ImageFolder folder names matched to the model's class names; -1 if unknown."""
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index.get(c, -1) if c is not None else -1 for c in folder_classes], dtype=np.int64)


# --------------------------------------------------------------------------- projections

def pca_2d(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The first two principal components (N, 2) and their explained-variance ratios (2,).

    Sign convention: each axis is flipped so its largest-magnitude loading is
    positive (lowest feature index on ties), so the same features always give
    the same picture, not a mirror image of it.
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32), np.zeros(2)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] == 0 or n == 1:
        return np.zeros((n, 2), dtype=np.float32), np.zeros(2)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(2, vt.shape[0])
    for i in range(k):
        j = int(np.argmax(np.abs(vt[i])))
        if vt[i, j] < 0:
            vt[i] = -vt[i]
    coords = np.zeros((n, 2))
    coords[:, :k] = x @ vt[:k].T
    total = float((s ** 2).sum())
    explained = np.zeros(2)
    if total > 0:
        explained[:k] = s[:k] ** 2 / total
    return coords.astype(np.float32), explained


def tsne_backend() -> Optional[str]:
    """The t-SNE package that is importable ("openTSNE", "scikit-learn") or None."""
    import importlib.util

    for module, name in (("openTSNE", "openTSNE"), ("sklearn", "scikit-learn")):
        if importlib.util.find_spec(module) is not None:
            return name
    return None


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> Tuple[np.ndarray, str]:
    """t-SNE to 2-D with a fixed seed; (coords (N, 2), backend name).

    Features are first reduced to 50 dimensions by PCA (the usual recipe: it
    removes noise and makes t-SNE fast). Perplexity is capped below N/3 so
    small datasets work. MissingDependency when no backend is installed.
    """
    backend = tsne_backend()
    if backend is None:
        raise MissingDependency(f"t-SNE needs {TSNE_PACKAGES}; neither is installed. "
                                "Install one, or use method: pca")
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if n < 4:
        return pca_2d(x)[0], "numpy"
    x = _pca_reduce(x, 50)
    perp = float(max(1.0, min(perplexity, (n - 1) / 3.0)))
    if backend == "openTSNE":
        import openTSNE

        emb = openTSNE.TSNE(n_components=2, perplexity=perp, random_state=seed, n_jobs=1,
                            verbose=False).fit(x)
        return np.asarray(emb, dtype=np.float32), backend
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # One thread: Barnes-Hut's OpenMP reductions sum in varying order (the map
    # would differ between builds), and on a busy machine its spinning threads
    # are far slower than one (seconds vs minutes for a small dataset).
    with threadpool_limits(1):
        emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                   learning_rate="auto").fit_transform(x)
    return np.asarray(emb, dtype=np.float32), backend


def _pca_reduce(x: np.ndarray, dims: int) -> np.ndarray:
    if x.shape[1] <= dims:
        return x - x.mean(axis=0, keepdims=True)
    x = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :dims] * s[:dims]


def project(features: np.ndarray, method: str = "pca", seed: int = 0,
            perplexity: float = 30.0) -> Tuple[np.ndarray, str, Optional[np.ndarray]]:
    """(coords (N, 2), backend, explained-variance ratios or None) for ``method``."""
    if method == "pca":
        coords, explained = pca_2d(features)
        return coords, "numpy", explained
    if method == "tsne":
        coords, backend = tsne_2d(features, seed, perplexity)
        return coords, backend, None
    raise ValueError(f"unknown projection {method!r}; valid: {', '.join(METHODS)}")


# --------------------------------------------------------------------------- the whole analysis

def thumbnail(display: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the displayed crop, downscaled (antialiased) for hover previews."""
    img = Image.fromarray(np.asarray(display, dtype=np.uint8))
    return np.array(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


class WithThumbs(torch.utils.data.Dataset):
    """(model input, global index, thumbnail) per item of a dataset with ``load(i) -> (tensor, display)``.

    ``size`` 0: no thumbnail (an empty tensor), and the display crop is not made.
    """

    def __init__(self, dataset: Any, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int, torch.Tensor]:
        if not self.size:
            return self.dataset[i][0], i, torch.zeros(0, dtype=torch.uint8)
        x, display = self.dataset.load(i)
        return x, i, torch.from_numpy(thumbnail(display, self.size))


def embeddings(model: nn.Module, dataset: Any, classes: Sequence[str], method: str = "pca",
               layer: Optional[str] = None, output_key=None, batch_size: int = 64, workers: int = 0,
               device: Optional[torch.device] = None, seed: int = 0, perplexity: float = 30.0,
               thumb: int = 32, progress=None, layout: str = AUTO) -> EmbeddingResult:
    """Features of every dataset image, projected to 2-D, with labels, predictions and thumbnails.

    ``dataset`` has ``items`` ((path, class folder or None) pairs), ``len``
    and ``load(i) -> (model input (C, H, W), display (H, W, 3) uint8)``, like
    ``reportgen.analyses.topk.ImageDataset``. Batched, no gradients; batch
    size changes speed only. ``layout`` says how a named ``layer`` holds its
    map ("auto": detected on the first image).
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; valid: {', '.join(METHODS)}")
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    loader = torch.utils.data.DataLoader(WithThumbs(dataset, thumb), batch_size=batch_size,
                                         shuffle=False, num_workers=workers)
    if progress is not None:
        loader = progress(loader, desc="embeddings", total=len(loader))
    thumbs: List[torch.Tensor] = []

    def inputs() -> Iterable[torch.Tensor]:
        for x, _, t in loader:
            thumbs.append(t)
            yield x.to(device)

    use_input, layer, map_layout = feature_layer(model, dataset, layer, output_key, layout, device)
    read: List[Optional[str]] = [map_layout.kind if map_layout is not None else None]
    feats, preds = extract_features(model, inputs(), layer, use_input, output_key, map_layout, read)
    pictures = torch.cat(thumbs).numpy() if thumbs else None
    return finish_embeddings(feats, preds, pictures, dataset.items, classes, method, seed, perplexity,
                             layer, use_input, read[0], thumb)


def feature_layer(model: nn.Module, dataset: Any, layer: Optional[str], output_key=None, layout: str = AUTO,
                  device: Optional[torch.device] = None) -> Tuple[bool, str, Optional[Layout]]:
    """(use its input, layer, layout of its map): the last Linear's input when ``layer`` is None."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    if layer is None:
        return True, penultimate_layer(model, dataset.load(0)[0][None].to(device)), None
    if not len(dataset):
        return False, layer, None
    first = dataset.load(0)[0][None].to(device)
    return False, layer, layer_layouts(model, first, [layer], layout, output_key, strict=layout != AUTO).get(layer)


def finish_embeddings(feats: np.ndarray, preds: np.ndarray, thumbs: Optional[np.ndarray], items: Sequence[Any],
                      classes: Sequence[str], method: str, seed: int, perplexity: float, layer: str,
                      use_input: bool, read: Optional[str], thumb: int) -> EmbeddingResult:
    """Project the features to 2-D and gather labels, mistakes and thumbnails: the light second step."""
    coords, backend, explained = project(feats, method, seed, perplexity)
    labels = true_labels([c for _, c in items], classes)
    known = labels >= 0
    return EmbeddingResult(
        coords=coords, labels=labels, predictions=preds, misclassified=known & (preds != labels),
        thumbnails=thumbs if thumbs is not None else np.zeros((0, thumb, thumb, 3), np.uint8),
        names=[f"{c}/{Path(p).name}" if c else Path(p).name for p, c in items], method=method,
        backend=backend, layer=layer, layer_input=use_input,
        feature_dim=int(feats.shape[1]) if feats.ndim == 2 else 0, explained=explained, layout=read)

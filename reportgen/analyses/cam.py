"""The class-activation-map family: CAM, Grad-CAM, Grad-CAM++, Score-CAM, Eigen-CAM.

All five weigh the channels of one layer's activations A (N, C, h, w) and
sum them; they differ only in the weights (or, for Eigen-CAM, in how the
channels are combined). So ``BaseCAM`` does everything they share - the
forward pass, the gradient of the target score, ReLU, bilinear upsampling to
the input size and per-image min-max scaling - and each method overrides one
method, as in pytorch-grad-cam's ``BaseCAM``.

Results follow pytorch-grad-cam's conventions (float32 (N, H, W) in [0, 1])
so a user can check a map against it. Everything stays on the model's device
until the final ``.cpu().numpy()``, and every step is per image, so an image
gets the same map alone or inside a batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.analyses.gradients import Target, class_scores, resolve_targets
from reportgen.errors import MethodNotApplicable
from reportgen.model.hooks import eval_mode, hooks
from reportgen.model.layers import get_layer, last_spatial_layer, layer_layouts
from reportgen.model.layout import AUTO, KINDS, Layout, infer
from reportgen.model.outputs import OutputKey

Reshape = Callable[[torch.Tensor], torch.Tensor]

GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam's guard in the alpha denominator (eq. 19)
SCORECAM_EPS = 1e-8   # pytorch-grad-cam's guard when scaling each upsampled channel to [0, 1]


@dataclass
class Capture:
    """What one forward (+ backward) pass recorded at the target layer."""

    activations: torch.Tensor            # (N, C, h, w), detached
    gradients: Optional[torch.Tensor]    # d target score / d activations, (N, C, h, w), or None
    scores: torch.Tensor                 # (N, classes), detached
    targets: torch.Tensor                # (N,) long
    images: torch.Tensor                 # (N, C_in, H, W), detached
    extra: Dict[str, Any] = field(default_factory=dict)


class BaseCAM:
    """Shared pipeline; subclasses override ``weights`` (or ``combine``).

    ``layer`` is a dotted module name, None for ``last_spatial_layer``.
    ``layout`` says how the layer holds its map ("auto": detected by
    ``reportgen.model.layout``; "nchw", "nhwc", "tokens": stated), and the
    layer's output and gradient are read as (N, C, h, w) through it. A
    ``reshape`` callable overrides it: it turns the layer output into
    (N, C, h, w) itself, applied to activations and gradients alike, as
    pytorch-grad-cam's ``reshape_transform``.
    """

    uses_gradients = True

    def __init__(self, model: nn.Module, layer: Optional[str] = None,
                 reshape: Optional[Reshape] = None, output_key: OutputKey = None, layout: str = AUTO):
        self.model = model
        self.layer = layer
        self.reshape = reshape
        self.output_key = output_key
        if layout != AUTO and layout not in KINDS:
            raise ValueError(f"unknown layout {layout!r}; valid: {AUTO}, {', '.join(KINDS)}")
        self.layout = layout
        self._read: Optional[Layout] = None
        if layer is not None:
            get_layer(model, layer)  # fail early with the list of valid names

    # ----------------------------------------------------------------- pipeline
    def __call__(self, images: torch.Tensor, target: Target = None) -> Tuple[np.ndarray, Dict[str, Any]]:
        """(maps (N, H, W) float32 in [0, 1], metadata with the layer and targets used)."""
        with eval_mode(self.model), torch.enable_grad():
            auto = self.layer is None
            name = last_spatial_layer(self.model, images[:1], self.output_key) if auto else self.layer
            self._read = self.read_layout(images, name)
            cap = self.capture(images, target, name)
            cam = self.combine(cap)
            maps = scale_per_image(upsample(torch.relu(cam), images.shape[-2:]))
        meta = {"method": type(self).__name__, "layer": name, "layer_auto": auto,
                "targets": cap.targets.tolist()}
        if self.reshape is None and self._read is not None:
            meta["layout"] = self._read.kind
        return maps.detach().cpu().numpy().astype(np.float32, copy=False), meta

    def read_layout(self, images: torch.Tensor, name: str) -> Optional[Layout]:
        """The layer's detected Layout (one forward pass of the first image); None with a
        ``reshape``, a stated layout (read off the captured output) or an unreadable output."""
        if self.reshape is not None or self.layout != AUTO:
            return None
        if isinstance(get_layer(self.model, name), torch.jit.ScriptModule):
            return None   # capture() refuses it with the reason
        found = layer_layouts(self.model, images[:1], [name], output_key=self.output_key, strict=False)
        return found.get(name)

    def capture(self, images: torch.Tensor, target: Target, name: str) -> Capture:
        """Forward once, recording the layer's output, and take d score / d output.

        The hook hands the rest of the network a clone of the output, so an
        in-place op after the layer (``ReLU(inplace=True)``) cannot overwrite
        the activations we recorded, and the gradient is the one with respect
        to the layer's own output.
        """
        layer = get_layer(self.model, name)
        if isinstance(layer, torch.jit.ScriptModule):
            raise MethodNotApplicable(f"{type(self).__name__} needs a forward hook on layer {name!r}, which "
                                      "TorchScript does not allow; use saliency or integrated_gradients for it")
        store: Dict[str, Any] = {}

        def record(_m, _i, out):
            if not torch.is_tensor(out):
                raise ValueError(f"layer {name!r} returns {type(out).__name__}, not a tensor; "
                                 "pick a layer with a single tensor output")
            store["out"] = out
            return out.clone()

        x = images.detach().clone().requires_grad_(self.uses_gradients)
        with torch.set_grad_enabled(self.uses_gradients), hooks() as hs:
            hs.append(layer.register_forward_hook(record))
            self.add_hooks(hs, store)
            scores = class_scores(self.model, x, self.output_key)
        if "out" not in store:
            raise ValueError(f"layer {name!r} was not called during the forward pass")
        t = resolve_targets(target, scores)
        out = store.pop("out")
        grads = None
        if self.uses_gradients:
            score = scores.gather(1, t[:, None]).sum()
            if not out.requires_grad:
                raise ValueError(f"the target score does not depend on layer {name!r}")
            (g,) = torch.autograd.grad(score, out, allow_unused=True)
            if g is None:
                raise ValueError(f"the target score does not depend on layer {name!r}")
            grads = self.to_nchw(g.detach(), name, tuple(images.shape[-2:]))
        acts = self.to_nchw(out.detach(), name, tuple(images.shape[-2:]))
        return Capture(acts, grads, scores.detach(), t, images.detach(), store)

    def add_hooks(self, handles: List, store: Dict[str, Any]) -> None:
        """Extra hooks for the capture pass (CAM records its linear head here)."""

    def to_nchw(self, t: torch.Tensor, name: str, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if self.reshape is not None:
            t = self.reshape(t)
        else:
            if self._read is None and self.layout != AUTO and hw is not None:
                self._read = infer(tuple(t.shape), self.layout, self.model, hw)
                if self._read is None:
                    raise ValueError(f"layer {name!r} outputs shape {tuple(t.shape)}, which is not a "
                                     f"{self.layout} feature map for a {hw[0]}x{hw[1]} input")
            if self._read is not None:
                t = self._read.to_nchw(t)
        if t.ndim != 4:
            # no reshape: the method does not apply to this layer; a reshape that gets it wrong is a bug
            refuse = ValueError if self.reshape is not None else MethodNotApplicable
            how = "the reshape callable returned" if self.reshape is not None else "outputs"
            raise refuse(f"layer {name!r} {how} shape {tuple(t.shape)}, not (N, C, H, W); "
                         "pass reshape=<callable> that turns it into (N, C, H, W) "
                         "(e.g. ViT tokens (N, L, D) -> (N, D, h, w)) or pick a convolutional layer")
        return t

    def combine(self, cap: Capture) -> torch.Tensor:
        """(N, h, w) map before ReLU: the weighted sum of the channels."""
        w = self.weights(cap)
        return (w[:, :, None, None] * cap.activations).sum(dim=1)

    def weights(self, cap: Capture) -> torch.Tensor:
        """(N, C) channel weights; the one thing most methods define."""
        raise NotImplementedError


# --------------------------------------------------------------------------- shared steps

def upsample(cam: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear (half-pixel centres, as cv2.resize and the CAM papers) to the input size."""
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    return F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def scale_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Min-max each (H, W) map to [0, 1]; a constant map becomes all zeros, never NaN."""
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(1)
    lo = flat.amin(dim=1)[:, None, None]
    span = (flat.amax(dim=1) - flat.amin(dim=1))[:, None, None]
    scaled = (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny)
    return torch.where(span > 0, scaled, torch.zeros_like(maps)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- methods

class CAM(BaseCAM):
    """Zhou et al. 2016: the head's weights of the target class, for GAP + linear heads.

    CAM is only defined when the class scores are a linear function of the
    spatial mean of the layer, so the capture pass records the last
    ``nn.Linear`` executed and checks that its input is exactly that mean.
    """

    uses_gradients = False

    def add_hooks(self, handles: List, store: Dict[str, Any]) -> None:
        def make(name):
            def fn(module, inputs, _out):
                store["linear"] = (name, module, inputs[0].detach() if inputs else None)
            return fn

        for name, m in self.model.named_modules():
            if isinstance(m, nn.Linear):
                handles.append(m.register_forward_hook(make(name)))

    def weights(self, cap: Capture) -> torch.Tensor:
        if "linear" not in cap.extra:
            raise MethodNotApplicable("cam needs a global-average-pool + nn.Linear head, but the model "
                                      "called no nn.Linear; use gradcam, which needs no particular head")
        name, fc, feats = cap.extra["linear"]
        gap = cap.activations.mean(dim=(2, 3))
        same = (feats is not None and feats.shape == gap.shape
                and torch.allclose(feats, gap, rtol=1e-4, atol=1e-5 * float(gap.abs().max().clamp_min(1))))
        if not same:
            got = tuple(feats.shape) if feats is not None else None
            raise MethodNotApplicable(
                f"cam needs a global-average-pool + linear head: the input of the final nn.Linear "
                f"{name!r} (shape {got}) is not the spatial mean of the target layer's output "
                f"{tuple(cap.activations.shape)}. Pick the layer that feeds the pooling, or use "
                "gradcam, which gives the same map for such heads and works for any head")
        return fc.weight.detach()[cap.targets].to(cap.activations.dtype)


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: weights are the spatially averaged gradients."""

    def weights(self, cap: Capture) -> torch.Tensor:
        return cap.gradients.mean(dim=(2, 3))


def gradcampp_alphas(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ alphas, eq. 19 of Chattopadhay et al. 2018 (arXiv 1710.11063).

    alpha = g^2 / (2 g^2 + sum_ab(A) g^3), the exponential-score closed form
    in which exp(S) cancels. As pytorch-grad-cam: ``GRADCAMPP_EPS`` in the
    denominator, and alpha = 0 where the gradient is 0.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    alphas = g2 / (2 * g2 + sum_a * g3 + GRADCAMPP_EPS)
    return torch.where(gradients != 0, alphas, torch.zeros_like(alphas))


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: weights are sum_ij alpha_ij * relu(g_ij)."""

    def weights(self, cap: Capture) -> torch.Tensor:
        alphas = gradcampp_alphas(cap.activations, cap.gradients)
        return (alphas * cap.gradients.clamp(min=0)).sum(dim=(2, 3))


class ScoreCAM(BaseCAM):
    """Wang et al. 2020: weight each channel by the score of the input masked with it.

    Each channel, upsampled to the input and scaled to [0, 1], masks the
    image; the target logits of the masked images, softmaxed over channels,
    are the weights (pytorch-grad-cam's variant). ``batch_size`` masked
    images go through the model per forward pass; it changes speed only.
    """

    uses_gradients = False

    def __init__(self, model: nn.Module, layer: Optional[str] = None, reshape: Optional[Reshape] = None,
                 output_key: OutputKey = None, batch_size: int = 16, layout: str = AUTO):
        super().__init__(model, layer, reshape, output_key, layout)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size

    def masks(self, acts: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """(N, C, H, W) channel masks in [0, 1]."""
        up = F.interpolate(acts, size=tuple(size), mode="bilinear", align_corners=False)
        flat = up.flatten(2)
        lo, hi = flat.amin(dim=2)[..., None, None], flat.amax(dim=2)[..., None, None]
        return (up - lo) / (hi - lo + SCORECAM_EPS)

    @torch.no_grad()
    def weights(self, cap: Capture) -> torch.Tensor:
        masks = self.masks(cap.activations, cap.images.shape[-2:])
        n, c = masks.shape[:2]
        scores = torch.empty((n, c), dtype=cap.activations.dtype, device=cap.activations.device)
        for i in range(n):
            for lo in range(0, c, self.batch_size):
                batch = cap.images[i:i + 1] * masks[i, lo:lo + self.batch_size, None]
                out = class_scores(self.model, batch, self.output_key)
                scores[i, lo:lo + len(batch)] = out[:, cap.targets[i]].to(scores.dtype)
        return torch.softmax(scores, dim=1)


class EigenCAM(BaseCAM):
    """Muhammad & Yeasin 2020: the activations projected on their first principal component.

    SVD gives the component up to sign; we flip each map so its largest
    magnitude is positive (Seg-Eigen-CAM's eq. 13, pytorch-grad-cam's
    ``get_2d_projection_with_sign_correction``), which makes the result
    independent of the LAPACK/cuSOLVER build.
    """

    uses_gradients = False

    def combine(self, cap: Capture) -> torch.Tensor:
        acts = torch.nan_to_num(cap.activations, nan=0.0)
        n, c, h, w = acts.shape
        mat = acts.reshape(n, c, h * w).transpose(1, 2)          # (N, hw, C)
        mat = mat - mat.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(mat, full_matrices=False)
        proj = (mat @ vh[:, 0, :, None])[..., 0]                  # (N, hw)
        flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
        return proj.reshape(n, h, w)


# --------------------------------------------------------------------------- entry points
# One function per method so explain() can list each method's parameters.
# ``layout``: how ``layer`` holds its map, "auto" (detected), "nchw", "nhwc" or "tokens".

def cam(model: nn.Module, images: torch.Tensor, target: Target = None, layer: Optional[str] = None, *,
        reshape: Optional[Reshape] = None, output_key: OutputKey = None, layout: str = AUTO) -> np.ndarray:
    """CAM maps (N, H, W); the model must end in global-average-pool + linear."""
    return CAM(model, layer, reshape, output_key, layout)(images, target)[0]


def gradcam(model: nn.Module, images: torch.Tensor, target: Target = None, layer: Optional[str] = None, *,
            reshape: Optional[Reshape] = None, output_key: OutputKey = None, layout: str = AUTO) -> np.ndarray:
    """Grad-CAM maps (N, H, W)."""
    return GradCAM(model, layer, reshape, output_key, layout)(images, target)[0]


def gradcampp(model: nn.Module, images: torch.Tensor, target: Target = None, layer: Optional[str] = None, *,
              reshape: Optional[Reshape] = None, output_key: OutputKey = None, layout: str = AUTO) -> np.ndarray:
    """Grad-CAM++ maps (N, H, W)."""
    return GradCAMPlusPlus(model, layer, reshape, output_key, layout)(images, target)[0]


def scorecam(model: nn.Module, images: torch.Tensor, target: Target = None, layer: Optional[str] = None, *,
             reshape: Optional[Reshape] = None, batch_size: int = 16,
             output_key: OutputKey = None, layout: str = AUTO) -> np.ndarray:
    """Score-CAM maps (N, H, W); costs one forward per channel per image."""
    return ScoreCAM(model, layer, reshape, output_key, batch_size=batch_size, layout=layout)(images, target)[0]


def eigencam(model: nn.Module, images: torch.Tensor, target: Target = None, layer: Optional[str] = None, *,
             reshape: Optional[Reshape] = None, output_key: OutputKey = None, layout: str = AUTO) -> np.ndarray:
    """Eigen-CAM maps (N, H, W); class-agnostic, ``target`` only labels the metadata."""
    return EigenCAM(model, layer, reshape, output_key, layout)(images, target)[0]

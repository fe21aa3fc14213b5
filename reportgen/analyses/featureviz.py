"""Feature visualization: the input that a channel or a class score responds to most.

Activation maximization (Erhan et al. 2009) asks "what does this unit want to
see?" by gradient ascent on the input. Done naively on raw pixels it returns
high-frequency adversarial noise that says nothing to a person. Olah et al.,
"Feature Visualization" (Distill 2017) showed which priors make the answer
readable without hand-tuned image penalties; this module implements those:

* **Fourier parameterization with 1/f scaling.** The optimized variable is the
  image's spectrum, scaled so every frequency has about the same energy as in
  natural images. Gradient steps then move low frequencies as easily as high
  ones, instead of piling up pixel-level noise.
* **Decorrelated colour.** For RGB, the spectrum lives in a decorrelated
  colour space (the square root of ImageNet's colour covariance), so steps
  change luminance and chroma independently.
* **Transformation robustness.** Each step sees a randomly jittered, scaled and
  rotated copy, so the image must drive the unit wherever it lands; patterns
  that only work pixel-exact do not survive.
* **Optional total variation** (``tv``), a classic smoothness penalty.
* **Redirected ReLU gradients** (Lucid's ``redirected_relu_grad``). A flat
  grey start leaves many ReLU units off, and an off ReLU passes no gradient,
  so a channel that is silent at the start would stay silent. While
  optimizing, an ``nn.ReLU`` whose gradient is zero for a whole image passes
  the gradient through where that raises its input. Values are unchanged.
  Clipped ReLUs (``nn.ReLU6``, ``nn.Hardtanh(0, c)``, timm's
  ``BatchNormAct2d`` with a ReLU6) follow the same rule, a saturated unit
  counting as off.
* **Objectives on a clipped output use the pre-activation.** A ReLU6 output
  stops at 6, so maximizing it saturates (or, off at the start, stays flat
  grey); a channel objective on a clipped ReLU, or on a ``BatchNormAct2d``
  whose act is one, reads the clip's input instead (probe maxima alike).

The image is optimized in [0, 1] image space (a sigmoid keeps it there) and
normalized with the spec's mean/std before the model sees it, so the model
gets exactly the kind of input it was trained on. Objectives are batched
(image i maximizes objective i in one forward/backward pass); each image's
initialization and transforms come from its own seeded ``torch.Generator``,
derived from the objective, so the batch size changes speed and never results,
and one channel's picture does not change when other channels are added.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.model import fxops
from reportgen.model.hooks import ActivationRecorder, eval_mode, hooks
from reportgen.model.layers import layer_layouts
from reportgen.model.layout import Layout, refit
from reportgen.model.outputs import select_output

Layouts = Optional[Dict[str, Layout]]

# Lucid's colour correlation square root (ImageNet), columns normalized below.
_COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                              [0.27, 0.00, -0.05],
                              [0.27, -0.09, 0.03]], dtype=np.float32)
_COLOR_MATRIX = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))
_FFT_MAGIC = 4.0   # Lucid's damping of the initial spectrum; larger = less saturated


@dataclass(frozen=True)
class Objective:
    """What one synthesized image maximizes: a channel's mean activation or a class score."""

    kind: str                    # "channel" | "class"
    index: int                   # channel index in `layer`, or class index
    layer: Optional[str] = None  # dotted module name (channels only)

    def __post_init__(self) -> None:
        if self.kind not in ("channel", "class"):
            raise ValueError(f"objective kind must be 'channel' or 'class', got {self.kind!r}")
        if self.kind == "channel" and not self.layer:
            raise ValueError("a channel objective needs a layer name")

    def seed(self, base: int) -> int:
        """A per-objective seed: stable whatever else is in the batch."""
        text = f"{base}:{self.kind}:{self.layer}:{self.index}"
        return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


@dataclass
class FeatureVizParams:
    steps: int = 128
    size: int = 128              # synthesized image is size x size
    lr: float = 0.05
    jitter: Optional[int] = None  # max translation in px; None = size // 16
    scale: float = 0.05          # random scale in [1 - scale, 1 + scale]
    rotate: float = 10.0         # random rotation in [-rotate, rotate] degrees
    tv: float = 0.0              # total-variation weight (0 = off)
    fft: bool = True             # Fourier parameterization (else raw pixels)
    decorrelate: bool = True     # decorrelated colour (RGB only)
    batch_size: int = 16         # objectives per optimization batch
    seed: int = 0


@dataclass
class FeatureVizResult:
    images: np.ndarray                 # (N, H, W, 3) float32 in [0, 1]
    kinds: List[str]                   # per image: "channel" | "class"
    layers: List[Optional[str]]        # per image: layer of a channel objective, None for classes
    indices: List[int]                 # per image: channel or class index
    activation: np.ndarray             # (N,) objective value on the final, untransformed image
    reference_mean: Optional[np.ndarray] = None  # (N,) mean of the objective over reference images
    reference_max: Optional[np.ndarray] = None   # (N,) max of the objective over reference images
    size: int = 0
    steps: int = 0
    meta: Dict[str, object] = field(default_factory=dict)

    def ratio(self) -> Optional[np.ndarray]:
        """Achieved / reference max; NaN where the reference max is not positive."""
        if self.reference_max is None:
            return None
        ref = self.reference_max.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ref > 0, self.activation / np.where(ref > 0, ref, 1.0), np.nan)


# --------------------------------------------------------------------------- parameterization

def _rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitude of each rfft2 bin (Lucid's rfft2d_freqs)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


class ImageParam(nn.Module):
    """A batch of images in [0, 1] as a function of one trainable tensor.

    With ``fft`` the tensor is a 1/f-scaled spectrum; with ``decorrelate`` (3
    channels) its channels are decorrelated colour components.
    """

    def __init__(self, generators: Sequence[torch.Generator], channels: int, h: int, w: int,
                 fft: bool = True, decorrelate: bool = True):
        super().__init__()
        self.shape = (len(generators), channels, h, w)
        self.fft = fft
        self.decorrelate = decorrelate and channels == 3
        if fft:
            freqs = _rfft2d_freqs(h, w)
            scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w))
            self.register_buffer("freq_scale", torch.tensor(scale, dtype=torch.float32)[None, None, ..., None])
            per_image = (channels, h, w // 2 + 1, 2)
        else:
            per_image = (channels, h, w)
        init = torch.stack([torch.randn(per_image, generator=g) * 0.01 for g in generators])
        self.param = nn.Parameter(init)
        self.register_buffer("color", torch.from_numpy(_COLOR_MATRIX.copy()))

    def forward(self) -> torch.Tensor:
        n, c, h, w = self.shape
        if self.fft:
            spectrum = torch.view_as_complex((self.param * self.freq_scale).contiguous())
            x = torch.fft.irfftn(spectrum, s=(h, w), norm="ortho") / _FFT_MAGIC
        else:
            x = self.param
        if self.decorrelate:
            x = torch.einsum("nchw,dc->ndhw", x, self.color)
        return torch.sigmoid(x)


# --------------------------------------------------------------------------- transforms

def _random_affine(generators: Sequence[torch.Generator], h: int, w: int, jitter: int,
                   scale: float, rotate: float) -> torch.Tensor:
    """One (N, 2, 3) affine_grid matrix per image: jitter, scale and rotation drawn per image."""
    rows = []
    for g in generators:
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        dx = round((2 * u[0] - 1) * jitter)
        dy = round((2 * u[1] - 1) * jitter)
        s = 1.0 + (2 * u[2] - 1) * scale
        a = math.radians((2 * u[3] - 1) * rotate)
        cos, sin = math.cos(a) / s, math.sin(a) / s
        rows.append([[cos, -sin, 2.0 * dx / w], [sin, cos, 2.0 * dy / h]])
    return torch.tensor(rows, dtype=torch.float32)


def transform(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image with its affine matrix; uncovered pixels become mid-grey (0.5).

    Grey (not zero/black) borders keep the optimizer from exploiting the edge,
    as Lucid's constant 0.5 padding does.
    """
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + 0.5


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, summed over the batch."""
    dh = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dw = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return (dh + dw).sum()


# --------------------------------------------------------------------------- redirected ReLU

class _RedirectedReLU(torch.autograd.Function):
    """(Clipped) relu(x) forward; backward passes the gradient through dead (or saturated) units
    when a whole image gets none."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cap: Optional[float] = None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.cap = cap
        return x.clamp(min=0, max=cap)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        dead = x < 0
        over = (x > ctx.cap) if ctx.cap is not None else torch.zeros_like(dead)
        relu_grad = grad.masked_fill(dead | over, 0)
        alive = relu_grad.reshape(len(x), -1).norm(dim=1) > 0
        if bool(alive.all()):       # the usual case: a plain ReLU gradient, nothing to redirect
            return relu_grad, None
        # never push an already negative input lower (grad > 0: descent lowers x), nor a
        # saturated one higher
        redirected = grad.masked_fill((dead & (grad > 0)) | (over & (grad < 0)), 0)
        return torch.where(alive.view(-1, *([1] * (x.ndim - 1))), relu_grad, redirected), None


def clipped_relu_cap(module: nn.Module) -> Optional[float]:
    """The upper bound of a clipped ReLU module (ReLU6, Hardtanh(0, c)); None for anything else."""
    if isinstance(module, nn.Hardtanh) and float(module.min_val) == 0.0 and float(module.max_val) > 0:
        return float(module.max_val)     # nn.ReLU6 is a Hardtanh(0, 6)
    return None


def _relu_cap(module: nn.Module) -> Tuple[bool, Optional[float]]:
    """(is a ReLU or clipped ReLU, its cap)."""
    if isinstance(module, nn.ReLU):
        return True, None
    cap = clipped_relu_cap(module)
    return cap is not None, cap


@contextlib.contextmanager
def redirected_relus(model: nn.Module) -> Iterator[None]:
    """Swap every nn.ReLU's, nn.ReLU6's and nn.Hardtanh(0, c)'s output for the redirected-gradient
    version, for the ``with`` block (timm's ``BatchNormAct2d`` calls its act as a module, so its
    ReLU6 is covered too).

    In-place ReLUs overwrite their input, so a pre-hook keeps a copy of it.
    """
    saved: Dict[int, torch.Tensor] = {}

    def pre(module: nn.Module, args):
        if module.inplace and args and torch.is_tensor(args[0]):
            saved[id(module)] = args[0].clone()

    def post(module: nn.Module, args, output):
        x = saved.pop(id(module), None)
        x = x if x is not None else (args[0] if args else None)
        if torch.is_tensor(x) and torch.is_grad_enabled():
            return _RedirectedReLU.apply(x, _relu_cap(module)[1])
        return output

    with hooks() as hs:
        for m in model.modules():
            if _relu_cap(m)[0]:
                hs.append(m.register_forward_pre_hook(pre))
                hs.append(m.register_forward_hook(post))
        yield


def preactivation_module(model: nn.Module, layer: str) -> Optional[str]:
    """The clipped ReLU whose input stands in for ``layer``'s output in a channel objective.

    A clipped output stops growing at its cap (6 for ReLU6), so maximizing it saturates
    instead of showing what drives the channel: the objective reads the clip's input (the
    pre-activation) instead. ``layer`` itself may be the clip, or a timm ``BatchNormAct2d``
    whose ``act`` is one (its output is that act's output).
    """
    modules = dict(model.named_modules())
    module = modules.get(layer)
    if module is None:
        return None
    if clipped_relu_cap(module) is not None:
        return layer
    act = getattr(module, "act", None)
    if fxops.module_kind(module) == fxops.NORM and isinstance(act, nn.Module) \
            and clipped_relu_cap(act) is not None:
        return f"{layer}.act"
    return None


# --------------------------------------------------------------------------- objectives

def _normalizer(mean: Sequence[float], std: Sequence[float], channels: int,
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values but the model takes "
                         f"{channels} channel(s)")
    m = torch.tensor([float(v) for v in mean], device=device).view(1, -1, 1, 1)
    s = torch.tensor([float(v) for v in std], device=device).view(1, -1, 1, 1)
    return m, s


def channel_view(out: torch.Tensor, layout: Optional[Layout]) -> torch.Tensor:
    """A layer output with channels at dim 1: (N, C, h, w) through its layout (refitted to this
    input size), or the output itself without one ((N, C) vectors, plain maps)."""
    return out if layout is None else refit(layout, out.shape).to_nchw(out)


def objective_values(model: nn.Module, batch: torch.Tensor, objectives: Sequence[Objective],
                     output_key=None, pair: bool = True, layouts: Layouts = None) -> torch.Tensor:
    """The objectives evaluated on a (normalized) batch.

    ``pair=True``: image i scores objective i -> (N,). ``pair=False``: every
    image scores every objective -> (N, M), for reference statistics.
    ``layouts``: layer -> Layout of the channel objectives' layers (a channel
    is then averaged over its grid positions only). Call under eval mode;
    gradients flow when enabled.
    """
    layouts = layouts or {}
    layers = sorted({o.layer for o in objectives if o.kind == "channel"})
    pre = {name: preactivation_module(model, name) for name in layers}
    pre = {name: src for name, src in pre.items() if src}
    inputs: Dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(module: nn.Module, args):
            if args and torch.is_tensor(args[0]):   # a copy: an in-place clip overwrites it next
                inputs[name] = args[0].clone() if getattr(module, "inplace", False) else args[0]
        return hook

    modules = dict(model.named_modules())
    with hooks() as hs, ActivationRecorder(model, [n for n in layers if n not in pre], keep_graph=True) as rec:
        for name, src in pre.items():
            hs.append(modules[src].register_forward_pre_hook(keep_input(name)))
        logits = select_output(model(batch), output_key)
        outputs = dict(rec.outputs)
        outputs.update(inputs)
    columns = []
    for o in objectives:
        if o.kind == "class":
            if not 0 <= o.index < logits.shape[1]:
                raise ValueError(f"class {o.index} is out of range: the model has {logits.shape[1]} classes")
            col = logits[:, o.index]
        else:
            out = outputs.get(o.layer)
            if out is None:
                raise ValueError(f"layer {o.layer!r} was not called during the forward pass")
            out = channel_view(out, layouts.get(o.layer))
            if out.ndim not in (2, 4):
                raise ValueError(f"layer {o.layer!r} has output shape {tuple(out.shape)}; "
                                 "pick a layer with (N, C) or (N, C, H, W) output")
            if not 0 <= o.index < out.shape[1]:
                raise ValueError(f"channel {o.index} is out of range: {o.layer} has {out.shape[1]} channels")
            col = out[:, o.index].reshape(out.shape[0], -1).mean(dim=1)
        columns.append(col)
    values = torch.stack(columns, dim=1).float()       # (N, M)
    if pair:
        return values.diagonal()
    return values


@torch.no_grad()
def reference_values(model: nn.Module, batches: Sequence[torch.Tensor], objectives: Sequence[Objective],
                     output_key=None, layouts: Layouts = None) -> np.ndarray:
    """(R, M): every objective on every reference image (already normalized)."""
    with eval_mode(model):
        parts = [objective_values(model, b, objectives, output_key, pair=False, layouts=layouts).cpu()
                 for b in batches if len(b)]
    if not parts:
        return np.zeros((0, len(objectives)), dtype=np.float32)
    return torch.cat(parts).numpy().astype(np.float32)


# --------------------------------------------------------------------------- optimization

def _optimize_batch(model: nn.Module, objectives: Sequence[Objective], channels: int,
                    norm: Tuple[torch.Tensor, torch.Tensor], p: FeatureVizParams,
                    device: torch.device, output_key, layouts: Layouts = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient ascent for one batch; returns (images (n, C, S, S) in [0, 1], achieved (n,))."""
    gens = [torch.Generator().manual_seed(o.seed(p.seed)) for o in objectives]
    image = ImageParam(gens, channels, p.size, p.size, p.fft, p.decorrelate).to(device)
    jitter = p.size // 16 if p.jitter is None else p.jitter
    mean, std = norm
    with redirected_relus(model):
        _ascend(model, image, objectives, gens, jitter, (mean, std), p, output_key, layouts)
    with torch.no_grad():
        final = image()
        achieved = objective_values(model, (final - mean) / std, objectives, output_key, layouts=layouts)
    return final.detach(), achieved.detach()


def _ascend(model: nn.Module, image: "ImageParam", objectives: Sequence[Objective],
            gens: Sequence[torch.Generator], jitter: int, norm: Tuple[torch.Tensor, torch.Tensor],
            p: FeatureVizParams, output_key, layouts: Layouts = None) -> None:
    """``p.steps`` Adam steps on the image parameters, each on freshly transformed copies."""
    adam = _Adam(image.param, p.lr)
    mean, std = norm
    for _ in range(p.steps):
        img = image()
        theta = _random_affine(gens, p.size, p.size, jitter, p.scale, p.rotate)
        seen = transform(img, theta)
        values = objective_values(model, (seen - mean) / std, objectives, output_key, layouts=layouts)
        loss = -values.sum()
        if p.tv > 0:
            loss = loss + p.tv * total_variation(img)
        # grad w.r.t. the image only: the model's .grad fields stay untouched
        (grad,) = torch.autograd.grad(loss, [image.param])
        adam.step(grad)


class _Adam:
    """Plain Adam (Kingma & Ba) on one tensor.

    torch.optim.Adam would do the same, but constructing it imports
    torch._dynamo, seconds of start-up for a dozen lines of arithmetic.
    """

    def __init__(self, param: torch.Tensor, lr: float, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1 ** self.t)
        v_hat = self.v / (1 - b2 ** self.t)
        self.param.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


def visualize(model: nn.Module, objectives: Sequence[Objective], channels: int,
              mean: Sequence[float], std: Sequence[float], params: Optional[FeatureVizParams] = None,
              output_key=None, reference: Optional[Sequence[torch.Tensor]] = None,
              device: Optional[torch.device] = None, layouts: Layouts = None) -> FeatureVizResult:
    """Synthesize one image per objective.

    ``channels`` is the model's input channel count (1 or 3); ``mean``/``std``
    its input normalization. ``reference``: batches of normalized real images
    (probes, dataset) whose objective values put the achieved ones in context.
    ``layouts``: layer -> Layout of the channel objectives' layers; None detects
    them on a grey image of the synthesized size. Deterministic on CPU for a
    given ``params.seed``.
    """
    p = params or FeatureVizParams()
    if channels not in (1, 3):
        raise ValueError(f"feature visualization needs a 1- or 3-channel input, not {channels}")
    if not objectives:
        raise ValueError("no objectives to visualize")
    device = device or next((t.device for t in model.parameters()), torch.device("cpu"))
    norm = _normalizer(mean, std, channels, device)
    if layouts is None:
        names = sorted({o.layer for o in objectives if o.kind == "channel"})
        layouts = layer_layouts(model, torch.zeros((1, channels, p.size, p.size), device=device), names,
                                output_key=output_key, strict=False) if names else {}
    images, achieved = [], []
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(objectives), max(1, p.batch_size)):
            chunk = list(objectives[start:start + max(1, p.batch_size)])
            img, val = _optimize_batch(model, chunk, channels, norm, p, device, output_key, layouts)
            images.append(img.cpu())
            achieved.append(val.cpu())
    imgs = torch.cat(images)
    if channels == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    ref_mean = ref_max = None
    if reference:
        ref = reference_values(model, [b.to(device) for b in reference], objectives, output_key, layouts)
        if len(ref):
            ref_mean, ref_max = ref.mean(axis=0), ref.max(axis=0)
    return FeatureVizResult(
        images=imgs.permute(0, 2, 3, 1).numpy().astype(np.float32),
        kinds=[o.kind for o in objectives], layers=[o.layer for o in objectives],
        indices=[int(o.index) for o in objectives],
        activation=torch.cat(achieved).numpy().astype(np.float32),
        reference_mean=ref_mean, reference_max=ref_max, size=p.size, steps=p.steps,
        meta={"lr": p.lr, "fft": p.fft, "decorrelate": p.decorrelate and channels == 3, "tv": p.tv,
              "jitter": p.size // 16 if p.jitter is None else p.jitter, "scale": p.scale,
              "rotate": p.rotate, "seed": p.seed})


# --------------------------------------------------------------------------- choices and budget

# Up to this many forward MACs per optimization step, extra CPU threads cost more than they
# give (``engine.throughput.threads_for``). The demo's step (ShapesNet at 64 px, 12 objectives:
# 0.20 GMACs) sat just above the old 2e8 and ran 12x slower on two threads of a busy 2-core
# machine (16 steps: 10.1 s CPU vs 0.8 s).
SMALL_WORK_MACS = 1e9


def top_channels(mean_activation: np.ndarray, k: int) -> List[int]:
    """The k channels with the highest mean activation over images (ties: lower index first).

    ``mean_activation`` is (N, C): per image, the spatial mean of each channel.
    """
    if mean_activation.ndim != 2 or mean_activation.shape[1] == 0:
        return []
    score = mean_activation.mean(axis=0)
    order = np.lexsort((np.arange(len(score)), -score))
    return [int(c) for c in order[:k]]


@torch.no_grad()
def channel_means(model: nn.Module, batches: Sequence[torch.Tensor], layer: str, output_key=None,
                  layout: Optional[Layout] = None) -> np.ndarray:
    """(N, C): each image's spatial mean of every channel of ``layer`` (the channel-choice statistic),
    read through ``layout`` when given."""
    parts = []
    with eval_mode(model), ActivationRecorder(model, [layer]) as rec:
        for b in batches:
            select_output(model(b), output_key)
            out = rec.outputs.get(layer)
            if out is None:
                raise ValueError(f"layer {layer!r} was not called during the forward pass")
            out = channel_view(out, layout)
            parts.append(out.float().reshape(out.shape[0], out.shape[1], -1).mean(dim=2).cpu())
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(parts).numpy().astype(np.float32)


@torch.no_grad()
def forward_macs(model: nn.Module, channels: int, size: int, output_key=None) -> Optional[int]:
    """MACs of one forward pass at size x size, or None when the model cannot take that size.

    Models that flatten a fixed-size map into a Linear fail at any other size;
    the caller then falls back to the model's own input size.
    """
    from reportgen.analyses.summary import summarize

    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    try:
        return int(summarize(model, torch.zeros((1, channels, size, size), device=device),
                             output_key).total_macs)
    except Exception:  # noqa: BLE001 - any failure means "not this size"
        return None


def plan_budget(macs_at: "callable", size: int, steps: int, n: int, budget_macs: float,
                min_size: int = 64, min_steps: int = 32) -> Tuple[int, int]:
    """Shrink (size, steps) until n images x steps x (forward + backward) fit the budget.

    Size and steps are reduced in turn (size by 16 px down to ``min_size``,
    steps by a quarter down to ``min_steps``), so neither collapses alone.
    ``macs_at(size)`` gives one forward pass's MACs (None: size not usable,
    treated as free to shrink no further). Never grows anything.
    """
    def cost(s: int, t: int) -> float:
        m = macs_at(s)
        return float("inf") if m is None else 3.0 * m * n * t

    shrink_size = True
    while cost(size, steps) > budget_macs:
        can_size = size - 16 >= min_size and macs_at(size - 16) is not None
        can_steps = steps > min_steps
        if not (can_size or can_steps):
            break
        if (shrink_size and can_size) or not can_steps:
            size -= 16
        else:
            steps = max(min_steps, int(steps * 0.75))
        shrink_size = not shrink_size
    return size, steps

"""Does an attribution map tell the truth about the model? Three checks.

* **Deletion / insertion** (Petsiuk et al. 2018, "RISE", section 4.1): remove
  the pixels a map calls most important first and watch the target's
  probability fall (deletion: a faithful map makes it fall fast, low AUC), or
  start from a blurred image and put the important pixels back first
  (insertion: a faithful map makes it rise fast, high AUC). As in the paper,
  deleted pixels become 0 *in the model's input space* (for normalized inputs
  that is the dataset mean colour, the paper's "black" after normalization),
  and insertion starts from a Gaussian-blurred copy of the image (the paper's
  sigma 5 at 224 pixels, scaled with the image size; the kernel reaches 3 sigma,
  ``reportgen.engine.blur``, the blur occlusion's baseline uses too).
* **Model-parameter randomization** (Adebayo et al. 2018, "Sanity checks for
  saliency maps"): a map that barely changes when the weights are replaced
  by random ones explains the input, not the model. We re-initialize a seeded
  deep copy of the model and compare the maps by rank correlation (Spearman
  of absolute values, the paper's main measure), Pearson and SSIM.
* **Border concentration**: attribution piled up on the image frame usually
  means padding artefacts or a shortcut, not the object (issue 5).

Pure: torch tensors in, numpy arrays and plain numbers out. Every forward
pass runs in eval mode with no gradient, batched; batch size changes speed,
never results.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from reportgen.engine.blur import gaussian_blur
from reportgen.model.hooks import eval_mode
from reportgen.model.loading import model_device
from reportgen.model.outputs import OutputKey, select_output

MethodFn = Callable[[nn.Module, torch.Tensor, List[int]], Any]

DEFAULT_STEPS = 32              # points per curve - 1; RISE uses 224 at 224 px, 32 keeps CPU cost modest
DEFAULT_BATCH = 32              # perturbed copies per forward pass (ResNet-50 at 224 px: ~1 GB peak)
BLUR_SIGMA_AT_224 = 5.0         # RISE's insertion blur, scaled to the image size
SANITY_THRESHOLD = 0.5          # mean Spearman above this: the map ignores the weights
BORDER_FRAC = 0.1               # band width, as a fraction of each side
BORDER_RATIO = 2.0              # finding when the border share exceeds this x the band's area share ...
BORDER_MIN_SHARE = 0.5          # ... and holds more than half the mass


# --------------------------------------------------------------------------- helpers

def to_saliency(maps: np.ndarray) -> np.ndarray:
    """Any attribution array -> (N, H, W) or (H, W) float64 importance.

    (N, C, H, W) input attributions are reduced with the sum of absolute values
    over channels (a pixel matters if any channel of it matters); 2-D and 3-D
    maps are taken as they are (CAM maps are >= 0, occlusion's probability
    drop is signed and ranked by value: a negative drop means the pixel hurt).
    """
    a = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if a.ndim == 4:
        return np.abs(a).sum(axis=1)
    if a.ndim in (2, 3):
        return a
    raise ValueError(f"expected an (H, W), (N, H, W) or (N, C, H, W) map, got shape {a.shape}")


def blur_sigma(h: int, w: int) -> float:
    """RISE's sigma 5 at 224 px, scaled, so the blurred start loses detail at the same relative scale."""
    return BLUR_SIGMA_AT_224 * max(h, w) / 224.0


def _fill(image: torch.Tensor, baseline: Union[str, float, torch.Tensor]) -> Tuple[torch.Tensor, str]:
    """What a removed pixel becomes: (1, C, H, W) tensor and a description for the report."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros_like(image), "zero (input space)"
        if baseline == "blur":
            sigma = blur_sigma(*image.shape[-2:])
            return gaussian_blur(image, sigma), f"blur (sigma {sigma:.3g} px)"
        if baseline == "mean":
            return image.mean(dim=(2, 3), keepdim=True).expand_as(image).clone(), "image mean colour"
        raise ValueError(f"unknown baseline {baseline!r}; valid: zero, blur, mean, a number or a tensor")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(image, float(baseline)), f"constant ({float(baseline):g})"
    t = torch.as_tensor(baseline, dtype=image.dtype, device=image.device)
    return t.expand_as(image).clone(), "tensor"


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most important first; ties broken by raster order (deterministic)."""
    flat = np.asarray(saliency, dtype=np.float64).reshape(-1)
    return np.argsort(-flat, kind="stable")


def trapezoid_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under y(x) by the trapezoid rule; x spans [0, 1]."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


@torch.no_grad()
def _target_probs(model: nn.Module, batch: torch.Tensor, target: int, output_key: OutputKey,
                  batch_size: int) -> np.ndarray:
    """Softmax probability of ``target`` for each image, in chunks of ``batch_size``."""
    out = []
    for lo in range(0, batch.shape[0], batch_size):
        scores = select_output(model(batch[lo:lo + batch_size]), output_key)
        out.append(torch.softmax(scores.double(), dim=1)[:, target].cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------- deletion / insertion

def deletion_insertion(model: nn.Module, image: torch.Tensor, saliency: np.ndarray, target: int,
                       steps: int = DEFAULT_STEPS, baseline: Union[str, float, torch.Tensor] = "zero",
                       insertion_baseline: Union[str, float, torch.Tensor] = "blur",
                       output_key: OutputKey = None, batch_size: int = DEFAULT_BATCH) -> Dict[str, Any]:
    """Deletion and insertion curves and AUCs of one map for one image (Petsiuk et al. 2018).

    ``image`` (1, C, H, W) preprocessed; ``saliency`` (H, W), (C, H, W) or
    (1, C, H, W) (reduced by :func:`to_saliency`); higher = more important.
    Step k of ``steps`` has the top ``floor(k * H * W / steps)`` pixels (all
    channels) deleted - replaced by ``baseline`` - or inserted into
    ``insertion_baseline``. Returns ``deletion_auc``/``insertion_auc`` (trapezoid
    over the deleted fraction in [0, 1]; probabilities, so both in [0, 1]),
    the curves (``steps + 1`` points), ``fractions`` and the baselines in words.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, H, W), got shape {tuple(image.shape)}")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    h, w = image.shape[-2:]
    sal = to_saliency(saliency)
    while sal.ndim > 2 and sal.shape[0] == 1:
        sal = sal[0]
    if sal.shape != (h, w):
        raise ValueError(f"saliency has shape {sal.shape}, the image is {(h, w)}")
    device = model_device(model, image.device)
    x = image.detach().to(device)
    deleted, del_desc = _fill(x, baseline)
    start, ins_desc = _fill(x, insertion_baseline)
    n_pix = h * w
    counts = (np.arange(steps + 1) * n_pix) // steps
    rank = np.empty(n_pix, dtype=np.int64)
    rank[pixel_order(sal)] = np.arange(n_pix)
    rank_t = torch.from_numpy(rank).to(device).view(1, 1, h, w)
    del_curve, ins_curve = [], []
    with eval_mode(model):
        # masks in chunks: step k's mask is "rank < counts[k]"; chunks bound memory at 224 px
        per = max(1, batch_size // 2)
        for lo in range(0, steps + 1, per):
            c = torch.from_numpy(counts[lo:lo + per]).to(device).view(-1, 1, 1, 1)
            mask = (rank_t < c).to(x.dtype)                      # (k, 1, H, W): 1 = touched
            dels = x * (1 - mask) + deleted * mask
            ins = start * (1 - mask) + x * mask
            probs = _target_probs(model, torch.cat([dels, ins]), int(target), output_key, batch_size)
            del_curve.append(probs[:len(c)])
            ins_curve.append(probs[len(c):])
    fractions = counts / n_pix
    d, i = np.concatenate(del_curve), np.concatenate(ins_curve)
    return {"deletion_auc": trapezoid_auc(fractions, d), "insertion_auc": trapezoid_auc(fractions, i),
            "deletion_curve": d.astype(np.float32), "insertion_curve": i.astype(np.float32),
            "fractions": fractions.astype(np.float32), "deletion_baseline": del_desc,
            "insertion_baseline": ins_desc, "steps": int(steps)}


def random_saliency(shape: Tuple[int, int], seed: int) -> np.ndarray:
    """A seeded random map: the reference a useful method has to beat on both curves."""
    return np.random.default_rng(seed).random(shape)


# --------------------------------------------------------------------------- similarity

def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks from 1 (ties share their mean rank), as scipy.stats.rankdata's default.

    numpy only: scipy is no dependency of reportgen (a plain install runs the demo's compare).
    """
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)                       # the rank of each distinct value's last copy
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 when either side is constant (a flat map carries no ranking to agree with)."""
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of any equal shape."""
    return _pearson(_ranks(np.ravel(a)), _ranks(np.ravel(b)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return _pearson(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))


def _box_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over each k x k window ('valid' positions), via 2-D cumulative sums."""
    c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004, uniform window, data range 1) of two (H, W) maps in [0, 1]."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    k = max(1, min(window, a.shape[0], a.shape[1]))
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = _box_mean(a, k), _box_mean(b, k)
    va = _box_mean(a * a, k) - mu_a ** 2
    vb = _box_mean(b * b, k) - mu_b ** 2
    cov = _box_mean(a * b, k) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


def _unit(m: np.ndarray) -> np.ndarray:
    """|m| scaled to [0, 1] by its maximum (Adebayo et al. normalize before SSIM)."""
    a = np.abs(m)
    top = float(a.max()) if a.size else 0.0
    return a / top if top > 0 else np.zeros_like(a)


def map_similarity(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """Spearman and Pearson of |a|, |b| and SSIM of their max-scaled magnitudes; 1 = identical."""
    a, b = np.abs(to_saliency(a)), np.abs(to_saliency(b))
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    return {"spearman": spearman(a, b), "pearson": pearson(a, b), "ssim": ssim(_unit(a), _unit(b))}


# --------------------------------------------------------------------------- randomization

def parameterized_modules(model: nn.Module) -> List[str]:
    """Names of modules that own parameters directly, in registration order (input -> logits)."""
    return [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def cascade_order(model: nn.Module) -> List[str]:
    """The paper's cascading order: from the top (logits) layer down to the input."""
    return parameterized_modules(model)[::-1]


def randomize_weights(model: nn.Module, seed: int = 0, layers: Optional[Sequence[str]] = None) -> nn.Module:
    """A deep copy of ``model`` with the parameters of ``layers`` (default: all) re-initialized.

    Each module's own ``reset_parameters`` is used where it has one (the
    initialization it was built with, which is what the paper re-draws);
    other parameters are drawn from a normal with the original tensor's
    standard deviation. The RNG is forked and seeded, so the copy is the same
    on every run and the caller's global RNG state is untouched. The copy is
    left in eval mode; the original is not modified.
    """
    try:
        rand = copy.deepcopy(model)
    except Exception as e:  # TorchScript modules and exotic wrappers may refuse
        raise ValueError(f"the model cannot be deep-copied for the randomization check: {e}") from None
    names = parameterized_modules(rand) if layers is None else list(layers)
    modules = dict(rand.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"unknown layer {unknown[0]!r} for randomization")
    devices = [p.device for p in rand.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices}) if devices else []):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        for name in names:
            _reinit(modules[name], gen)
    return rand.eval()


@torch.no_grad()
def _reinit(module: nn.Module, gen: torch.Generator) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset) and not isinstance(module, torch.jit.ScriptModule):
        reset()
        if isinstance(module, nn.modules.batchnorm._NormBase):
            # reset gives weight 1 / bias 0: deterministic, not random; draw them instead
            if module.weight is not None:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
            if module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        return
    for p in module.parameters(recurse=False):
        std = float(p.float().std()) if p.numel() > 1 else 1.0
        std = std if math.isfinite(std) and std > 0 else 1.0
        p.copy_((std * torch.randn(p.shape, generator=gen)).to(p.dtype))


@dataclass
class SanityResult:
    """Similarity between a method's maps for the trained and the randomized model, per image."""

    method: str
    spearman: np.ndarray                  # (N,) float
    pearson: np.ndarray
    ssim: np.ndarray
    threshold: float
    mean_spearman: float
    passed: bool                          # mean Spearman <= threshold
    randomized: str = "all parameters re-initialized"
    extra: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        return {"spearman": [round(float(v), 4) for v in self.spearman],
                "pearson": [round(float(v), 4) for v in self.pearson],
                "ssim": [round(float(v), 4) for v in self.ssim],
                "mean_spearman": round(self.mean_spearman, 4), "threshold": self.threshold,
                "passed": self.passed, "randomized": self.randomized}


def _run_method(method: Union[str, MethodFn], model: nn.Module, images: torch.Tensor,
                targets: List[int], params: Dict[str, Any]) -> np.ndarray:
    if callable(method):
        return np.asarray(method(model, images, list(targets)), dtype=np.float32)
    from reportgen.analyses.explain import explain
    return explain(model, images, method, target=list(targets), **params)


def sanity_randomization(model: nn.Module, images: torch.Tensor, method: Union[str, MethodFn],
                         targets: Sequence[int], *, seed: int = 0, randomized: Optional[nn.Module] = None,
                         original: Optional[np.ndarray] = None, threshold: float = SANITY_THRESHOLD,
                         name: Optional[str] = None, **params: Any) -> SanityResult:
    """Adebayo et al.'s model-parameter randomization test for one method.

    ``method``: a name for :func:`reportgen.explain` (``params`` go to it) or
    a callable ``fn(model, images, targets) -> maps``. ``randomized``: a model
    from :func:`randomize_weights` to share between methods (made from
    ``seed`` if None). ``original``: the maps already computed for ``model``,
    to save recomputing them. The targets are the same classes for both
    models, as in the paper. ``passed`` is False when the mean Spearman
    correlation of |maps| exceeds ``threshold``: the map survived the
    destruction of what the model learned, so it cannot be showing it.
    """
    targets = [int(t) for t in targets]
    if original is None:
        original = _run_method(method, model, images, targets, params)
    if randomized is None:
        randomized = randomize_weights(model, seed)
    after = _run_method(method, randomized, images, targets, params)
    a, b = to_saliency(original), to_saliency(after)
    if a.ndim == 2:
        a, b = a[None], b[None]
    sims = [map_similarity(x, y) for x, y in zip(a, b)]
    sp = np.array([s["spearman"] for s in sims])
    mean_sp = float(sp.mean()) if len(sp) else 0.0
    label = name or (method if isinstance(method, str) else getattr(method, "__name__", "method"))
    return SanityResult(method=label, spearman=sp, pearson=np.array([s["pearson"] for s in sims]),
                        ssim=np.array([s["ssim"] for s in sims]), threshold=float(threshold),
                        mean_spearman=mean_sp, passed=bool(mean_sp <= threshold))


def sanity_cascade(model: nn.Module, images: torch.Tensor, method: Union[str, MethodFn],
                   targets: Sequence[int], *, seed: int = 0, original: Optional[np.ndarray] = None,
                   **params: Any) -> List[Dict[str, Any]]:
    """The paper's cascading variant: randomize from the logits down, one more layer each step.

    Returns one row per step: the layer just added and the mean similarities.
    Costs one map computation per parameterized layer, so the report's
    sections use full randomization only; this is for notebooks.
    """
    targets = [int(t) for t in targets]
    if original is None:
        original = _run_method(method, model, images, targets, params)
    order = cascade_order(model)
    rows = []
    for k in range(1, len(order) + 1):
        res = sanity_randomization(model, images, method, targets, original=original,
                                   randomized=randomize_weights(model, seed, order[:k]), **params)
        rows.append({"layer": order[k - 1], "spearman": float(res.spearman.mean()),
                     "pearson": float(res.pearson.mean()), "ssim": float(res.ssim.mean())})
    return rows


# --------------------------------------------------------------------------- border

def border_mask(h: int, w: int, border_frac: float = BORDER_FRAC) -> np.ndarray:
    """Boolean (H, W): True in the band of width round(frac * side) (at least 1) along each edge."""
    if not 0 < border_frac < 0.5:
        raise ValueError("border_frac must be in (0, 0.5)")
    by, bx = max(1, int(round(border_frac * h))), max(1, int(round(border_frac * w)))
    mask = np.ones((h, w), dtype=bool)
    mask[by:h - by, bx:w - bx] = False
    return mask


def border_area_share(h: int, w: int, border_frac: float = BORDER_FRAC) -> float:
    """The band's share of the image area: what a uniform map would put there."""
    return float(border_mask(h, w, border_frac).mean())


def border_concentration(maps: np.ndarray, border_frac: float = BORDER_FRAC) -> Union[float, np.ndarray]:
    """Share of the total |attribution| inside the border band.

    (H, W) -> a float; (N, H, W) or (N, C, H, W) -> (N,) array. A map with no
    mass at all gets 0 (it points nowhere, least of all at the border).
    """
    a = np.abs(to_saliency(maps))
    single = a.ndim == 2
    a = a[None] if single else a
    mask = border_mask(a.shape[1], a.shape[2], border_frac)
    total = a.sum(axis=(1, 2))
    inside = a[:, mask].sum(axis=1)
    share = np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
    return float(share[0]) if single else share


def border_flag(shares: Sequence[float], h: int, w: int, border_frac: float = BORDER_FRAC,
                ratio: float = BORDER_RATIO, min_share: float = BORDER_MIN_SHARE) -> bool:
    """True when the mean share is above ``ratio`` x the band's area share and above ``min_share``."""
    if not len(shares):
        return False
    mean = float(np.mean(shares))
    return mean > ratio * border_area_share(h, w, border_frac) and mean > min_share

"""Common image corruptions at five severities (Hendrycks & Dietterich 2019, ImageNet-C).

Each corruption maps a batch of RGB images (B, 3, H, W), float in [0, 1] (the
crop the model sees, after resize/crop and before normalization), to a batch
of the same shape. Parameters are ImageNet-C's (its ``imagecorruptions``
reference code) at 224 px; the blur radii are scaled with the input side
(``side / 224``), so a 64 px input is blurred as much, relative to its size,
as a 224 px one. Pure torch/numpy/Pillow, no OpenCV:

* ``gaussian_noise``: x + N(0, c^2), c = .08 .12 .18 .26 .38;
* ``shot_noise``: Poisson(x c) / c, c = 60 25 12 5 3;
* ``gaussian_blur``: Gaussian of sigma c = 1 2 3 4 6 px (scipy/skimage
  convention: radius int(4 sigma + 0.5), edges replicated);
* ``defocus_blur``: a disk of radius r (3 4 6 8 10 px) anti-aliased by a 3 x 3
  (radius over 8: 5 x 5) Gaussian of sigma .1 .5 .5 .5 .5, edges reflected
  (OpenCV's default, as the reference's ``cv2.filter2D``);
* ``brightness``: HSV value + c (.1 .2 .3 .4 .5), clipped; hue and saturation kept;
* ``contrast``: (x - mean) c + mean per image and channel, c = .4 .3 .2 .1 .05;
* ``jpeg``: Pillow JPEG at quality 25 18 15 10 7;
* ``pixelate``: Pillow box down-sampling to c of the side (.6 .5 .4 .3 .25) and back.

Noise is seeded per image (``seeds``: one integer per image, e.g. from the
global image index), so a result does not depend on batch size or sharding.
Outputs are clipped to [0, 1].
"""
from __future__ import annotations

import io
import math
from typing import Callable, Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 224

PARAMS: Dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "jpeg": (25, 18, 15, 10, 7),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
}
CORRUPTIONS = tuple(PARAMS)
NOISY = ("gaussian_noise", "shot_noise")   # the ones that draw random numbers


def _scale(x: torch.Tensor) -> float:
    return min(x.shape[-2:]) / REFERENCE_SIDE


def _rng(seed: int, name: str, severity: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity)])


def gaussian_noise(x: torch.Tensor, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    c = PARAMS["gaussian_noise"][severity - 1]
    noise = np.stack([_rng(s, "gaussian_noise", severity).normal(size=x.shape[1:], scale=c) for s in seeds])
    return (x + torch.from_numpy(noise).to(x)).clamp(0, 1)


def shot_noise(x: torch.Tensor, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    c = PARAMS["shot_noise"][severity - 1]
    arr = x.detach().cpu().double().numpy()
    out = np.stack([_rng(s, "shot_noise", severity).poisson(a * c) / c for s, a in zip(seeds, arr)])
    return torch.from_numpy(out).to(x).clamp(0, 1)


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable(x: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    kk = k.to(x)
    y = F.pad(x, (r, r, 0, 0), mode=mode)
    y = F.conv2d(y, kk.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode=mode)
    return F.conv2d(y, kk.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gaussian_blur(x: torch.Tensor, severity: int, seeds: Sequence[int] = ()) -> torch.Tensor:
    sigma = PARAMS["gaussian_blur"][severity - 1] * _scale(x)
    radius = int(4.0 * sigma + 0.5)
    if radius < 1:
        return x.clone()
    # edges replicated, as scipy's and skimage's mode "nearest"
    return _separable(x, gaussian_kernel(sigma, radius), "replicate").clamp(0, 1)


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """ImageNet-C's ``disk``: a normalized disk, then a small Gaussian (OpenCV's GaussianBlur, reflect-101)."""
    half = 8 if radius <= 8 else int(math.ceil(radius))
    ksize = 3 if radius <= 8 else 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[None, :] ** 2 + t[:, None] ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    g = gaussian_kernel(alias_blur, ksize // 2)
    return _separable(disk[None, None], g, "reflect")[0, 0]


def defocus_blur(x: torch.Tensor, severity: int, seeds: Sequence[int] = ()) -> torch.Tensor:
    radius, alias = PARAMS["defocus_blur"][severity - 1]
    kernel = disk_kernel(radius * _scale(x), alias).to(x)
    r = kernel.shape[0] // 2
    h, w = x.shape[-2:]
    if r >= min(h, w):   # reflect padding needs a pad below the side: crop the kernel's empty rim
        r = min(h, w) - 1
        kernel = kernel[kernel.shape[0] // 2 - r:kernel.shape[0] // 2 + r + 1,
                        kernel.shape[1] // 2 - r:kernel.shape[1] // 2 + r + 1]
        kernel = kernel / kernel.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="reflect")
    # cv2.filter2D correlates (no kernel flip); the disk is symmetric anyway
    return F.conv2d(y, kernel[None, None].expand(c, 1, -1, -1), groups=c).clamp(0, 1)


def brightness(x: torch.Tensor, severity: int, seeds: Sequence[int] = ()) -> torch.Tensor:
    """V + c in HSV with H and S kept: RGB scales by V'/V (a black pixel becomes grey V')."""
    c = PARAMS["brightness"][severity - 1]
    v = x.max(dim=1, keepdim=True).values
    v2 = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * (v2 / v.clamp(min=1e-12)), v2.expand_as(x)).clamp(0, 1)


def contrast(x: torch.Tensor, severity: int, seeds: Sequence[int] = ()) -> torch.Tensor:
    c = PARAMS["contrast"][severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


def _pil_each(x: torch.Tensor, fn: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    arr = (x.detach().cpu().permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    out = np.stack([np.asarray(fn(Image.fromarray(a)).convert("RGB")) for a in arr])
    return torch.from_numpy(out.astype(np.float32) / 255.0).permute(0, 3, 1, 2).to(x)


def jpeg(x: torch.Tensor, severity: int, seeds: Sequence[int] = ()) -> torch.Tensor:
    quality = PARAMS["jpeg"][severity - 1]

    def one(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    return _pil_each(x, one)


def pixelate(x: torch.Tensor, severity: int, seeds: Sequence[int] = ()) -> torch.Tensor:
    c = PARAMS["pixelate"][severity - 1]

    def one(img: Image.Image) -> Image.Image:
        w, h = img.size
        small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
        return small.resize((w, h), Image.BOX)
    return _pil_each(x, one)


FUNCTIONS: Dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur, "brightness": brightness, "contrast": contrast, "jpeg": jpeg,
    "pixelate": pixelate,
}


def corrupt(x: torch.Tensor, name: str, severity: int, seeds: Sequence[int] = ()) -> torch.Tensor:
    """``x`` (B, 3, H, W) in [0, 1] under corruption ``name`` at ``severity`` (1..5)."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity!r}")
    if name in NOISY and len(seeds) != x.shape[0]:
        raise ValueError(f"{name} needs one seed per image ({x.shape[0]}), got {len(seeds)}")
    return FUNCTIONS[name](x, severity, list(seeds))

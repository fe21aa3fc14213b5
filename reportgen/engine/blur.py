"""The blurred image that occlusion and insertion curves start from: one Gaussian blur."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) images blurred per channel by a separable Gaussian of ``sigma`` pixels.

    The kernel reaches ceil(3 sigma) pixels each side (cut at 2 sigma it would
    drop about 5% of its mass), shortened to what an axis of the image allows
    and renormalised; borders are reflect-padded so they keep their colour.
    ``sigma <= 0`` gives an unchanged copy.
    """
    if sigma <= 0:
        return images.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(xs ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = images.shape[1]
    out = images
    for dim in (3, 2):   # width, then height
        pad = min(radius, out.shape[dim] - 1)
        kern = k[radius - pad:radius + pad + 1]
        kern = kern / kern.sum()
        weight = kern.view((1, 1, 1, -1) if dim == 3 else (1, 1, -1, 1)).expand(c, -1, -1, -1).contiguous()
        padding = (pad, pad, 0, 0) if dim == 3 else (0, 0, pad, pad)
        out = F.pad(out, padding, mode="reflect") if pad else out
        out = F.conv2d(out, weight, groups=c)
    return out

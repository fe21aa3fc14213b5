"""gaussian_blur: the one blur baseline, checked on impulses and constants by hand."""
from __future__ import annotations

import math

import torch

from reportgen.analyses import faithfulness as fa
from reportgen.analyses.occlusion import make_baseline
from reportgen.engine.blur import gaussian_blur


def _impulse(width: int) -> torch.Tensor:
    x = torch.zeros(1, 1, 1, width, dtype=torch.float64)
    x[..., width // 2] = 1.0
    return x


def test_an_impulse_spreads_three_sigma_each_side():
    out = gaussian_blur(_impulse(21), 1.0)[0, 0, 0]
    weights = [math.exp(-d * d / 2) for d in range(-3, 4)]
    expected = torch.zeros(21, dtype=torch.float64)
    expected[7:14] = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    torch.testing.assert_close(out, expected)
    assert out[7] > 0 and out[6] == 0        # 3 pixels reached (a 2-sigma cut stops at 2), 4 not


def test_constants_stay_even_where_the_kernel_is_cut():
    const = torch.full((2, 3, 5, 9), 0.25)
    # radius 6 (3 sigma) is more than the 5-pixel axis allows: cut to 4 there, renormalised
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)


def test_no_blur_is_a_copy():
    x = torch.rand(1, 3, 4, 4)
    out = gaussian_blur(x, 0.0)
    assert torch.equal(out, x) and out is not x


def test_occlusion_and_insertion_share_it():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(make_baseline(x, "blur", (8, 8))[0], gaussian_blur(x, 2.0), rtol=0, atol=0)
    assert fa.gaussian_blur is gaussian_blur

"""Colour maps from matplotlib (no pyplot): arrays in, RGB uint8 out."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps


def apply_cmap(values: np.ndarray, name: str = "viridis", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8; constant input maps to the low end, never NaN."""
    span = vmax - vmin
    x = (values - vmin) / span if span > 0 else np.zeros_like(values, dtype=np.float32)
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)
    rgba = colormaps[name](x, bytes=True)
    return rgba[..., :3]

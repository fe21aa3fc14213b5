"""Receptive fields of timm models: TF-"same" padding, checked against gradients.

timm's ``tf_*`` models pad like TensorFlow's "SAME": the pad a ``Conv2dSame``
or ``AvgPool2dSame`` adds depends on the input size (``ceil(n / stride)``
outputs, the smaller half of the pad first), so ``torch.fx`` cannot trace it
unless timm's own fx leaves are used. The arithmetic is checked against a
direct measurement: with positive weights, no activation and a positive
input, no gradient cancels, so the input pixels with a nonzero gradient of
one unit are exactly its (clipped) receptive field.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses.receptive_field import receptive_field, receptive_field_box

timm = pytest.importorskip("timm")
from timm.layers import Conv2dSame  # noqa: E402
from timm.layers.pool2d_same import AvgPool2dSame  # noqa: E402


def _measured_box(model: nn.Module, layer: str, side: int, y: int, x: int):
    """(y0, x0, y1, x1) of the input pixels whose gradient of unit (0, y, x) is nonzero."""
    got = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: got.__setitem__("out", o))
    image = torch.ones(1, 3, side, side, dtype=torch.float64, requires_grad=True)
    model(image)
    handle.remove()
    got["out"][0, 0, y, x].backward()
    hit = image.grad[0].abs().sum(0).numpy() > 0
    rows, cols = np.nonzero(hit.any(1))[0], np.nonzero(hit.any(0))[0]
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _positive(model: nn.Module) -> nn.Module:
    """Positive weights, identity activations and batch norms: gradients cannot cancel."""
    for _, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish)):
                setattr(m, child_name, nn.Identity())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.reset_running_stats()
        elif isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.abs() + 0.01
    return model.double().eval()


def _units(shape):
    """Corner, interior and far-corner units: the far one sees the trailing pad."""
    h, w = shape
    return sorted({(0, 0), (h // 2, w // 2), (h - 1, w - 1), (h - 1, 0)})


@pytest.mark.parametrize("side", [15, 16, 17, 31])
def test_tf_same_chain_matches_gradients(side):
    torch.manual_seed(0)
    model = _positive(nn.Sequential(
        Conv2dSame(3, 4, 3, stride=2), Conv2dSame(4, 4, 5, stride=1),
        AvgPool2dSame(3, stride=2), Conv2dSame(4, 4, 3, stride=2, dilation=1), nn.Conv2d(4, 4, 1)))
    for layer in ("0", "2", "4"):
        rf = receptive_field(model, layer, (3, side, side))
        with torch.no_grad():
            out = model[: int(layer) + 1](torch.ones(1, 3, side, side, dtype=torch.float64))
        for y, x in _units(out.shape[-2:]):
            assert receptive_field_box(rf, y, x, (side, side)) == _measured_box(model, layer, side, y, x), \
                (side, layer, y, x, rf)


def test_tf_same_differs_from_symmetric_padding():
    """The pad is asymmetric where the size needs it: an even input, stride 2, 3x3 puts
    all of its one pixel at the end, so unit 0 starts at pixel 0, not -1."""
    model = nn.Sequential(Conv2dSame(3, 1, 3, stride=2))
    rf = receptive_field(model, "0", (3, 16, 16))
    assert rf == {"size": (3, 3), "jump": (2, 2), "start": (1.0, 1.0)}
    rf_odd = receptive_field(model, "0", (3, 15, 15))
    assert rf_odd["start"] == (0.0, 0.0)


def test_tf_efficientnet_lite0_traces_and_matches_gradients():
    torch.manual_seed(0)
    side = 50    # even, so stride-2 pads are one-sided; small, so the test stays fast
    model = _positive(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    model.blocks = model.blocks[:4]   # the layers measured; the rest only costs time
    model.conv_head, model.bn2, model.classifier = nn.Identity(), nn.Identity(), nn.Identity()
    for layer in ("blocks.1", "blocks.3"):
        rf = receptive_field(model, layer, (3, side, side))
        got = {}
        handle = dict(model.named_modules())[layer].register_forward_hook(
            lambda m, i, o, got=got: got.__setitem__("shape", o.shape[-2:]))
        with torch.no_grad():
            model(torch.ones(1, 3, side, side, dtype=torch.float64))
        handle.remove()
        for y, x in _units(tuple(got["shape"])):
            assert receptive_field_box(rf, y, x, (side, side)) == _measured_box(model, layer, side, y, x), \
                (side, layer, y, x, rf)

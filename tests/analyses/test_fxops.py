"""fxops: every node of a small hand-written graph gets the kind one would say by reading it."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from reportgen.model import fxops


class EveryKind(nn.Module):
    """One op of each kind, in the order of fxops.KINDS, named so the graph reads like a table."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.gn = nn.GroupNorm(2, 4)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 2)
        self.custom = nn.Upsample(scale_factor=2)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))                  # conv, norm, pointwise
        x = F.pad(self.pool(x), (1, 1, 1, 1))                 # pool, pad
        x = self.gn(F.gelu(x)) * 2 + x                        # stat_norm, pointwise, arith x2
        a, b = torch.chunk(x, 2, dim=1)                       # split, getitem x2
        x = torch.cat([a.permute(0, 1, 3, 2), b], dim=1)      # permute, concat
        x = torch.softmax(self.custom(x), dim=1)              # other (Upsample), softmax
        return self.fc(torch.flatten(self.gap(x).view(1, 4), 1).repeat(1, 2))   # adaptive, reshape x2, other, linear


@pytest.fixture(scope="module")
def traced():
    gm = fx.symbolic_trace(EveryKind().eval())
    modules = dict(gm.named_modules())
    return gm, {n.name: fxops.node_kind(n, modules) for n in gm.graph.nodes}, modules


def test_every_node_has_the_kind_one_reads(traced):
    _gm, kinds, _ = traced
    assert kinds == {
        "x": "placeholder", "conv": fxops.CONV, "bn": fxops.NORM, "relu": fxops.POINTWISE,
        "pool": fxops.POOL, "pad": fxops.PAD, "gelu": fxops.POINTWISE, "gn": fxops.STAT_NORM,
        "mul": fxops.ARITH, "add": fxops.ARITH, "chunk": fxops.SPLIT, "getitem": fxops.GETITEM,
        "getitem_1": fxops.GETITEM, "permute": fxops.PERMUTE, "cat": fxops.CONCAT,
        "custom": fxops.OTHER, "softmax": fxops.SOFTMAX, "gap": fxops.ADAPTIVE_POOL,
        "view": fxops.RESHAPE, "flatten": fxops.RESHAPE, "repeat": fxops.OTHER, "fc": fxops.LINEAR,
        "output": "output",
    }
    assert set(kinds.values()) - {"placeholder", "output"} <= set(fxops.KINDS)


def test_functions_methods_and_modules_agree_on_a_kind():
    assert fxops.function_kind(torch.relu) == fxops.method_kind("relu") == fxops.module_kind(nn.ReLU()) \
        == fxops.POINTWISE
    assert fxops.function_kind(F.max_pool2d) == fxops.module_kind(nn.AvgPool2d(2)) == fxops.POOL
    assert fxops.function_kind(operator.iadd) == fxops.method_kind("add_") == fxops.ARITH
    assert fxops.module_kind(nn.Dropout2d()) == fxops.module_kind(nn.Identity()) == fxops.POINTWISE
    assert fxops.module_kind(nn.Conv1d(1, 1, 1)) == fxops.OTHER            # 2-d maps only
    assert fxops.function_kind(print) == fxops.method_kind("sum") == fxops.OTHER


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = x.relu_()
        y = F.relu(y, inplace=True)
        y += x                                  # traced as operator.add: a new value
        y = self.relu(y)
        return self.relu2(y.add(x)) + torch.relu_(y)


def test_in_place_ops_are_told_apart():
    gm = fx.symbolic_trace(InPlace())
    modules = dict(gm.named_modules())
    inplace = {n.name for n in gm.graph.nodes if fxops.is_inplace(n, modules)}
    assert inplace == {"relu_", "relu", "relu_1", "relu__1"}
    graph = fx.Graph()                          # operator.iadd, as other tracers write `y += x`
    x = graph.placeholder("x")
    assert fxops.is_inplace(graph.call_function(operator.iadd, (x, x)), {})
    assert not fxops.is_inplace(graph.call_function(operator.add, (x, x)), {})

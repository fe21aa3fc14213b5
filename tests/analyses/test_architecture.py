"""trace_graph: real dataflow (residual adds, branch concats), the hooks fallback, odd outputs."""
from __future__ import annotations

from typing import Dict, Set

import pytest
import torch
import torchvision
from torch import nn
from torch.fx.proxy import TraceError

from reportgen.analyses.architecture import ArchGraph, trace_graph
from reportgen.model.hooks import count_hooks


def _sources(g: ArchGraph, node_id: str) -> Set[str]:
    return {e.src for e in g.edges if e.dst == node_id}


def _reachable(g: ArchGraph, start: str, forward: bool = True) -> Set[str]:
    nxt: Dict[str, Set[str]] = {}
    for e in g.edges:
        a, b = (e.src, e.dst) if forward else (e.dst, e.src)
        nxt.setdefault(a, set()).add(b)
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(nxt.get(n, ()))
    return seen


def _assert_connected(g: ArchGraph) -> None:
    """Every node lies on a path from an input to the output."""
    ids = {n.id for n in g.nodes}
    from_inputs = set().union(*(_reachable(g, n.id) for n in g.nodes if n.kind == "input"))
    to_output = _reachable(g, "output", forward=False)
    assert from_inputs == ids, ids - from_inputs
    assert to_output == ids, ids - to_output


@pytest.fixture(scope="module")
def resnet18_graph() -> ArchGraph:
    torch.manual_seed(0)
    return trace_graph(torchvision.models.resnet18(weights=None, num_classes=10), torch.zeros(1, 3, 64, 64))


def test_resnet18_residual_adds_have_two_inputs(resnet18_graph):
    g = resnet18_graph
    assert g.method == "fx" and g.note == ""
    adds = [n for n in g.nodes if n.op == "add"]
    assert len(adds) == 8                               # one per BasicBlock
    for n in adds:
        assert len(_sources(g, n.id)) == 2
        assert n.parent.count(".") == 1                 # inside layerK.J
    _assert_connected(g)


def test_resnet18_shapes_params_and_hierarchy(resnet18_graph):
    g = resnet18_graph
    conv = next(n for n in g.nodes if n.path == "layer2.0.conv1")
    assert conv.op == "Conv2d" and conv.parent == "layer2.0" and conv.label == "conv1"
    assert conv.shape == (1, 128, 8, 8) and conv.params == 64 * 128 * 9
    assert conv.attrs["kernel_size"] == (3, 3) and conv.attrs["stride"] == (2, 2)
    assert all(e.shape is not None for e in g.edges)
    assert {"", "layer1", "layer1.0", "layer2.0.downsample"} <= set(g.blocks)
    assert g.blocks["layer1"].type == "Sequential"
    assert g.total_params() == sum(p.numel() for p in
                                   torchvision.models.resnet18(weights=None, num_classes=10).parameters())
    assert any(n.op == "flatten" and n.kind == "function" for n in g.nodes)


def test_fx_and_hooks_agree_on_resnet18(resnet18_graph):
    torch.manual_seed(0)
    hooked = trace_graph(torchvision.models.resnet18(weights=None, num_classes=10), torch.zeros(1, 3, 64, 64),
                         method="hooks")
    assert hooked.method == "hooks"
    as_set = lambda g: {(e.src, e.dst, e.shape) for e in g.edges}  # noqa: E731
    assert as_set(hooked) == as_set(resnet18_graph)


def test_resnet50_bottleneck_adds():
    g = trace_graph(torchvision.models.resnet50(weights=None), torch.zeros(1, 3, 32, 32))
    adds = [n for n in g.nodes if n.op == "add"]
    assert len(adds) == 16 and all(len(_sources(g, n.id)) == 2 for n in adds)
    # the first block of each stage adds its projection shortcut
    downsample_feeds = {e.dst for e in g.edges if e.src.endswith("downsample_1")}
    assert downsample_feeds & {n.id for n in adds}


def test_googlenet_branches_meet_in_a_cat():
    g = trace_graph(torchvision.models.googlenet(weights=None, init_weights=False, num_classes=10),
                    torch.zeros(1, 3, 64, 64))
    cats = [n for n in g.nodes if n.op == "cat"]
    assert len(cats) == 9                               # one per Inception module
    for n in cats:
        srcs = _sources(g, n.id)
        assert len(srcs) >= 3
        assert n.parent.startswith("inception")
    assert {n.parent.split(".")[0] for n in cats} == {b for b in g.blocks if b.count(".") == 0
                                                      and b.startswith("inception")}
    _assert_connected(g)


class Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx; the residual must survive the fallback."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:
            x = x + self.body(x)
        else:
            x = x - self.body(x)
        return self.head(x.mean(dim=(2, 3)))


def test_untraceable_model_uses_hooks_fallback():
    torch.manual_seed(0)
    m = Untraceable().eval()
    g = trace_graph(m, torch.ones(1, 3, 8, 8))
    assert g.method == "hooks" and "fx" in g.note
    ops = [n.op for n in g.nodes]
    assert "sum" not in ops and "gt" not in ops         # the control-flow probe is pruned
    merge = next(n for n in g.nodes if n.op in ("add", "sub"))
    assert _sources(g, merge.id) == {"stem", "body_1"}  # the skip connection
    assert next(n for n in g.nodes if n.id == "body_0").parent == "body"
    _assert_connected(g)
    with pytest.raises(TraceError):
        trace_graph(m, torch.ones(1, 3, 8, 8), method="fx")


class TupleOut(nn.Module):
    """A sub-module returning a tuple and a model returning (logits, features)."""

    class Split(nn.Module):
        def forward(self, x):
            return x[:, :2], x[:, 2:]

    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.as_dict = as_dict
        self.conv = nn.Conv2d(3, 4, 1)
        self.split = self.Split()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        a, b = self.split(self.conv(x))
        feats = (a * b).mean(dim=(2, 3))
        logits = self.fc(feats)
        return {"logits": logits, "features": feats} if self.as_dict else (logits, feats)


@pytest.mark.parametrize("as_dict", [False, True])
@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_tuple_and_dict_outputs(as_dict, method):
    g = trace_graph(TupleOut(as_dict).eval(), torch.zeros(1, 3, 4, 4), method=method)
    assert _sources(g, "output") == {"fc", next(n.id for n in g.nodes if n.op == "mean")}
    mul = next(n for n in g.nodes if n.op == "mul")
    assert _sources(g, mul.id) == {"split"}             # tuple getitems folded into the producer
    assert {e.shape for e in g.edges if e.dst == mul.id} == {(1, 2, 4, 4)}
    assert not any(n.op == "getitem" for n in g.nodes)
    _assert_connected(g)


def test_inplace_tensor_method_stays_connected():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 2, 1), nn.Linear(2, 2)

        def forward(self, x):
            x = self.conv(x)
            x.relu_()                                   # result ignored on purpose
            return self.fc(x.mean(dim=(2, 3)))

    for method in ("fx", "hooks"):
        g = trace_graph(M().eval(), torch.zeros(1, 3, 4, 4), method=method)
        relu = next(n for n in g.nodes if n.op == "relu")
        assert _sources(g, relu.id) == {"conv"}
        mean = next(n for n in g.nodes if n.op == "mean")
        assert _sources(g, mean.id) == {relu.id}


def test_model_left_untouched_even_on_error():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            if x.sum() > 0:                             # forces the hooks fallback
                raise RuntimeError("boom")
            return self.drop(self.conv(x))

    m = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        trace_graph(m, torch.ones(1, 3, 4, 4))
    assert count_hooks(m) == 0 and m.training and m.drop.training
    g = trace_graph(m, -torch.ones(1, 3, 4, 4))
    assert count_hooks(m) == 0 and m.training
    assert [n.id for n in g.nodes] == ["x", "conv", "drop", "output"]


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="hooks"):
        trace_graph(nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 4, 4), method="magic")

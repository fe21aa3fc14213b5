"""Layout: grandalf's layered layout for any depth of model, the recursion limit left alone."""
from __future__ import annotations

import random
import sys
import xml.etree.ElementTree as ET

import grandalf.layouts
import torch
from torch import nn

from reportgen.analyses.architecture import trace_graph
from reportgen.render.architecture import graph_layout as layout
from reportgen.render.architecture import render_architecture
from reportgen.render.architecture.view import VEdge, View, VNode


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def test_a_deep_model_renders_without_touching_the_recursion_limit(monkeypatch):
    layers = 600                                   # one view of 602 boxes in a chain
    model = nn.Sequential(*[nn.Conv2d(2, 2, 1) if i % 2 == 0 else nn.ReLU() for i in range(layers)])
    graph = trace_graph(model, torch.zeros(1, 2, 4, 4))
    limit, set_limit = sys.getrecursionlimit(), sys.setrecursionlimit
    changes = []
    monkeypatch.setattr(sys, "setrecursionlimit", changes.append)
    monkeypatch.setattr(grandalf.layouts, "setrecursionlimit", changes.append)
    set_limit(_stack_depth() + 200)                # room for ordinary calls, not one frame per box
    try:
        view = render_architecture(graph, engine="grandalf")
    finally:
        set_limit(limit)
    assert changes == [] and sys.getrecursionlimit() == limit
    svg = ET.fromstring(view["views"][0]["svg"])
    boxes = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if "arch-node" in (g.get("class") or "").split()]
    assert len(boxes) == layers + 2                # the input, every layer, the output


def _random_view(seed: int) -> View:
    """Boxes of mixed sizes with random edges: cycles, fan-in and several components."""
    rng = random.Random(seed)
    n = rng.randint(3, 30)
    nodes = [VNode(f"n{i}", "op", "", [("x", "arch-name")], "", w=rng.choice([40.0, 70.0, 120.0]),
                   h=rng.choice([22.0, 38.0])) for i in range(n)]
    pairs = {(rng.randrange(n), rng.randrange(n)) for _ in range(2 * n)}
    return View("v", "", nodes, [VEdge(f"n{a}", f"n{b}", "", "") for a, b in sorted(pairs) if a != b], [])


def _placed(view: View):
    return [(v.x, v.y) for v in view.nodes], [e.points for e in view.edges]


def test_same_layout_as_grandalfs_own(monkeypatch):
    for seed in range(12):
        ours = _random_view(seed)
        layout.lay_out(ours, "grandalf")
        with monkeypatch.context() as m:
            m.setattr(layout, "_Sugiyama", grandalf.layouts.SugiyamaLayout)
            theirs = _random_view(seed)
            layout.lay_out(theirs, "grandalf")
        assert _placed(ours) == _placed(theirs), seed

"""render_architecture: valid, escaped, offline, deterministic, navigable SVG views."""
from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import pytest
import torch
import torchvision
from torch import nn

from reportgen.analyses.architecture import trace_graph
from reportgen.render.architecture import graph_layout as layout
from reportgen.render.architecture import render_architecture

SVG_NS = "http://www.w3.org/2000/svg"
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _all_svg(view) -> str:
    return "".join(v["svg"] for v in view["views"])


@pytest.fixture(scope="module")
def resnet18_view():
    g = trace_graph(torchvision.models.resnet18(weights=None, num_classes=10), torch.zeros(1, 3, 64, 64))
    return render_architecture(g, engine="grandalf")


def test_every_view_is_well_formed_svg(resnet18_view):
    for v in resnet18_view["views"]:
        root = ET.fromstring(v["svg"])
        assert root.tag == f"{{{SVG_NS}}}svg"
        assert root.get("role") == "img" and root.get("aria-label") == v["alt"]
        assert root.findall(f".//{{{SVG_NS}}}title")    # hover details


def test_no_external_references(resnet18_view):
    text = _all_svg(resnet18_view).replace(SVG_NS, "")
    assert "http" not in text and "href" not in text and "url(" not in text


def test_blocks_open_existing_views(resnet18_view):
    views = resnet18_view["views"]
    ids = {v["id"] for v in views}
    root = views[0]
    assert root["path"] == "" and [c["label"] for c in root["children"]] == ["layer1", "layer2", "layer3", "layer4"]
    targets = set(re.findall(r'data-arch-open="([^"]+)"', _all_svg(resnet18_view)))
    assert targets and targets <= ids
    assert {c["id"] for v in views for c in v["crumbs"]} <= ids
    block = next(v for v in views if v["path"] == "layer2.0")
    assert [c["label"] for c in block["crumbs"]] == ["model", "layer2", "layer2.0"]
    # the residual add shows as a merge with the shortcut drawn as a skip edge
    assert "arch-skip" in block["svg"] and ">+</text>" in block["svg"]
    # Conv-BN chains (the downsample) are one box, not a view of their own
    assert "layer2.0.downsample" not in {v["path"] for v in views}
    assert "Conv2d 1×1 /2 · BN" in block["svg"]


def test_edges_carry_shapes(resnet18_view):
    root = resnet18_view["views"][0]["svg"]
    for shape in ("3×64×64", "64×16×16", "128×8×8", "512×2×2", "512"):
        assert f">{shape}</text>" in root


@pytest.fixture(scope="module")
def googlenet_graph():
    return trace_graph(torchvision.models.googlenet(weights=None, init_weights=False, num_classes=10),
                       torch.zeros(1, 3, 64, 64))


def test_output_is_deterministic(googlenet_graph):
    # the layout is the only place order could leak in (tracing follows program order)
    first = _all_svg(render_architecture(googlenet_graph, engine="grandalf"))
    assert first == _all_svg(render_architecture(googlenet_graph, engine="grandalf"))


def test_googlenet_branches_are_drawn_side_by_side(googlenet_graph):
    view = render_architecture(googlenet_graph, engine="grandalf")
    inc = next(v for v in view["views"] if v["path"] == "inception3a")
    root = ET.fromstring(inc["svg"])
    ys = {}
    for node in root.iter(f"{{{SVG_NS}}}g"):
        name = node.find(f"{{{SVG_NS}}}text")
        if "arch-node" in (node.get("class") or "") and name is not None and "branch" in (name.text or ""):
            box = node.findall(f"{{{SVG_NS}}}rect")[-1]
            ys[name.text] = float(box.get("y")) + float(box.get("height")) / 2
    assert len(ys) == 4 and max(ys.values()) - min(ys.values()) < 1    # four parallel branches, one rank
    assert len(_all_svg(view)) < 400_000


def test_resnet50_size_bound():
    g = trace_graph(torchvision.models.resnet50(weights=None), torch.zeros(1, 3, 32, 32))
    view = render_architecture(g, engine="grandalf")
    assert len(_all_svg(view)) < 300_000
    assert view["n_blocks"] > 16 and view["method"] == "fx"


class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("<script>alert(1)</script>", nn.Conv2d(3, 2, 1))
        evil = type('Evil"><img src=x onerror=alert(2)>', (nn.Module,), {"forward": lambda self, x: x * 2})
        self.add_module("block&<b>", nn.Sequential(evil(), nn.ReLU()))

    def forward(self, x):
        return getattr(self, "block&<b>")(getattr(self, "<script>alert(1)</script>")(x))


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_hostile_names_are_escaped(method):
    g = trace_graph(Hostile().eval(), torch.zeros(1, 3, 4, 4), method=method)
    view = render_architecture(g, engine="grandalf")
    svg = _all_svg(view)
    assert "<script" not in svg and "<img" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg
    for v in view["views"]:
        ET.fromstring(v["svg"])
    html = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True) \
        .get_template("sections/architecture.html.j2").render(view=view)
    assert "<script>alert" not in html and "<img" not in html
    assert html.count("<script>") == 1                  # only the partial's own toggle script


def test_partial_renders_all_views(resnet18_view):
    for autoescape in (True, False):
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=autoescape)
        html = env.get_template("sections/architecture.html.j2").render(view=resnet18_view)
        assert html.count("<svg") == len(resnet18_view["views"])
        assert "src=" not in html and "http" not in html.replace(SVG_NS, "")
        assert "figcaption" in html and "arch-current" in html


def test_engine_choice(monkeypatch):
    assert layout.pick_engine("grandalf") == "grandalf"
    monkeypatch.setattr(layout.shutil, "which", lambda name: None)
    assert layout.pick_engine("auto") == "grandalf"
    with pytest.raises(ValueError, match="dot"):
        layout.pick_engine("dot")
    with pytest.raises(ValueError, match="grandalf"):
        layout.pick_engine("neato")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
def test_dot_engine_when_present():
    g = trace_graph(torchvision.models.resnet18(weights=None, num_classes=10), torch.zeros(1, 3, 32, 32))
    view = render_architecture(g, engine="dot")
    assert view["engine"] == "dot"
    for v in view["views"]:
        ET.fromstring(v["svg"])

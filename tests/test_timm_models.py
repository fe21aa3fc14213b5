"""timm models through a minimal report: the automatic layers, their layouts and channel counts.

Each model is built by the spec's factory source (``timm:create_model``,
``pretrained: false``, 4 classes) and run through the activations and CAM
sections on one probe, at 64 x 64 for the CNNs and at the 224 x 224 the ViT
and Swin need. The recorded channel counts must be the models' real widths
(``num_features`` for the deepest map): read channels-first, a Swin stage
(N, 7, 7, 768) would give 7 channels and a ViT's attention tensor (N, 3, 197,
64) 3, which is what this file guards against. The embeddings and feature
visualization choosers are checked without a dataset, as unit tests.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import reportgen

timm = pytest.importorskip("timm")

# model -> (input side, activations: [(layer, layout, channels)], CAM (layer, layout, channels))
SWEEP = {
    "resnet18d": (64, [("act1", "nchw", 64), ("layer1", "nchw", 64), ("layer3", "nchw", 256),
                       ("layer4", "nchw", 512)], ("layer4", "nchw", 512)),
    "convnext_atto": (64, [("stem", "nchw", 40), ("stages.1", "nchw", 80), ("stages.2", "nchw", 160),
                           ("norm_pre", "nchw", 320)], ("norm_pre", "nchw", 320)),
    "efficientnet_b0": (64, [("bn1", "nchw", 32), ("blocks.1", "nchw", 24), ("blocks.4", "nchw", 112),
                             ("bn2", "nchw", 1280)], ("bn2", "nchw", 1280)),
    "mobilenetv3_small_050": (64, [("bn1", "nchw", 16), ("blocks.0", "nchw", 8), ("blocks.3", "nchw", 24),
                                   ("blocks", "nchw", 288)], ("blocks", "nchw", 288)),
    "regnetx_002": (64, [("stem", "nchw", 32), ("s1", "nchw", 24), ("s3", "nchw", 152),
                         ("final_conv", "nchw", 368)], ("final_conv", "nchw", 368)),
    "vit_tiny_patch16_224": (224, [("norm", "tokens", 192)], ("blocks.11.norm1", "tokens", 192)),
    "swin_tiny_patch4_window7_224": (224, [("patch_embed", "nhwc", 96), ("layers.1", "nhwc", 192),
                                           ("layers.2", "nhwc", 384), ("norm", "nhwc", 768)],
                                     ("norm", "nhwc", 768)),
}


def _model_spec(name: str, side: int) -> dict:
    return {"factory": "timm:create_model", "input_size": [3, side, side],
            "kwargs": {"model_name": name, "pretrained": False, "num_classes": 4}}


def _create(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=4).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SWEEP))
def test_automatic_layers_layouts_and_widths_through_a_report(tmp_path, name):
    side, stages, cam = SWEEP[name]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(tmp_path / "probe.png")
    spec = {"title": name, "model": _model_spec(name, side),
            "probes": {"images": [str(tmp_path / "probe.png")]},
            "sections": {"activations": {"max_channels": 2},
                         "cam": {"methods": ["gradcam"], "faithfulness_steps": 1}}}
    report = reportgen.build(spec, out_dir=tmp_path / "site", only=["activations", "cam"], use_cache=False)
    data = json.loads(Path(report.json_path).read_text())
    act, cam_s = data["sections"]["activations"], data["sections"]["cam"]
    assert "error" not in act and "error" not in cam_s, (act, cam_s)
    got = [(n, act["layouts"][n], act["per_layer"][n]["channels"]) for n in act["layers"]]
    assert got == stages
    assert (cam_s["layer"], cam_s["layouts"][cam_s["layer"]]) == cam[:2]
    assert "error" not in cam_s["methods"]["gradcam"], cam_s["methods"]["gradcam"]
    width = _create(name).num_features
    assert stages[-1][2] == cam[2] == width


def _ctx(model: torch.nn.Module, side: int):
    """What the choosers read of a BuildContext, with no probe and no dataset."""
    return SimpleNamespace(model=model, output_key=None, input_size=(3, side, side),
                           example=lambda: torch.zeros(1, 3, side, side))


@pytest.mark.parametrize("name,side,layers,layouts,widths,penultimate", [
    ("vit_tiny_patch16_224", 224, ["norm"], ["tokens"], [192], "head"),
    ("swin_tiny_patch4_window7_224", 224, ["layers.2", "norm"], ["nhwc", "nhwc"], [384, 768], "head.fc"),
    ("convnext_atto", 64, ["stages.2", "norm_pre"], ["nchw", "nchw"], [160, 320], "head.fc"),
])
def test_featureviz_and_embeddings_choosers_without_a_dataset(name, side, layers, layouts, widths,
                                                              penultimate):
    from reportgen.analyses import embeddings as emb
    from reportgen.analyses import featureviz as fv
    from reportgen.sections.featureviz import choose_layers, choose_layouts

    model, x = _create(name), torch.randn(2, 3, side, side)
    ctx = _ctx(model, side)
    chosen = choose_layers(ctx, "auto")
    read = choose_layouts(ctx, chosen)
    assert chosen == layers
    assert [read[n].kind for n in chosen] == layouts and [read[n].channels for n in chosen] == widths
    means = fv.channel_means(model, [x], chosen[-1], layout=read[chosen[-1]])
    assert means.shape == (2, widths[-1])
    assert emb.penultimate_layer(model, x[:1]) == penultimate
    kinds: list = [None]
    feats, preds = emb.extract_features(model, [x], penultimate, use_input=True, read=kinds)
    assert feats.shape == (2, model.num_features) and preds.shape == (2,)
    # a named token / channels-last layer is pooled over its grid only
    pooled, _ = emb.extract_features(model, [x], chosen[-1], use_input=False, layout=read[chosen[-1]],
                                     read=kinds)
    assert pooled.shape == (2, widths[-1]) and kinds == [layouts[-1]]

"""Grad-CAM on a vision transformer points at the shape: the pointing game on token layers.

The session's small ViT (``tests/vit_shapes.py``: timm's VisionTransformer
with a conv stem, an 8 x 8 patch grid and a class token in front of it) is
explained with the automatic CAM layer on the same 200 held-out demo images
the CNN is scored on (tests/analyses/test_pointing_game.py). That layer's
output is a token sequence (N, 65, 64): read as (N, C, H, W) it would not even
be 4-D; read through its layout the class token is dropped and the 64 patch
tokens become an 8 x 8 map of 64 channels.

Measured (torch 2.x CPU, one thread, deterministic training, 54 s of CPU):
the ViT reaches 89 % held-out accuracy and its Grad-CAM peak lies in the
object's box on 68.5 % of the images (137/200; Grad-CAM++ 81 %), against
96.5 % for the demo CNN's Grad-CAM (at 99.5 % accuracy). Chance - a peak at a
random pixel - is the boxes' mean share of the image, 16.2 % here. The floor,
55 %, is over three times chance and four binomial standard errors (3.3
points at n = 200) below the measured figure, room for another CPU's kernels
to train slightly different weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.analyses.explain import explain
from reportgen.analyses.pointing import pointing_game
from reportgen.model.layers import last_spatial_call

N_IMAGES = 200
CNN_GRADCAM = 0.965          # the demo CNN's Grad-CAM on the same images (reportgen/demo/train.py)
VIT_GRADCAM_FLOOR = 0.55


@pytest.mark.slow
def test_vit_gradcam_points_at_the_shape(trained_vit):
    from reportgen.demo import held_out
    from reportgen.demo.train import to_input

    vit = trained_vit
    images, labels, boxes = held_out(N_IMAGES, seed=0)
    x = to_input(torch.from_numpy(images), vit.mean, vit.std)
    with torch.no_grad():
        accuracy = float((vit.model(x).argmax(1).numpy() == labels).mean())
    layer, layout = last_spatial_call(vit.model, x[:1])
    assert (layout.kind, layout.prefix, layout.grid, layout.channels) == ("tokens", 1, (8, 8), 64), layer
    scores = {m: pointing_game(explain(vit.model, x, m, target=labels.tolist()), boxes)
              for m in ("gradcam", "gradcampp")}
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    chance = float(np.mean(area / images.shape[1] / images.shape[2]))
    print(f"\nViT ({vit.seconds:.0f} s CPU training, held-out accuracy {accuracy:.1%}, val {vit.val_acc:.1%}), "
          f"automatic CAM layer {layer!r} ({layout.describe()}):")
    for method, s in scores.items():
        print(f"  {method:10s} {s['accuracy']:6.1%}  ({s['hits']}/{s['n']})")
    print(f"  CNN gradcam {CNN_GRADCAM:6.1%}; chance (mean box share) {chance:.1%}")
    assert accuracy > 0.8, accuracy
    assert scores["gradcam"]["accuracy"] >= VIT_GRADCAM_FLOOR, scores
    assert scores["gradcam"]["accuracy"] > 3 * chance

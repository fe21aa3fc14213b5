"""Write the issue-16 project on disk, to time ``reportgen build`` and ``compare`` on a real model.

ImageNet-pretrained ``tf_efficientnet_lite0`` (or ``--arch tf_efficientnet_lite1``)
with the weights of the ``realmodels`` extra (renamed to timm's keys, as
``tests/test_real_models.py`` does), its int8 and int4 copies, the six bundled
photos as probes and a labelled folder of four crops (cat, coffee). Nothing is
downloaded. Run from the repository root:

    PYTHONPATH=. python bench/realmodel_project.py DIR [--arch tf_efficientnet_lite0]
    time python -m reportgen build DIR/spec.yaml -o DIR/site
    time python -m reportgen compare DIR/spec.yaml DIR/int8.yaml -o DIR/compare
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def write(root: Path, arch: str) -> None:
    from tests.test_real_models import quantized, timm_state_dict, write_photos

    root.mkdir(parents=True, exist_ok=True)
    write_photos(root)
    state = timm_state_dict(arch)
    for suffix, weights in (("", state), ("int8", quantized(state, 8)), ("int4", quantized(state, 4))):
        torch.save(weights, root / f"{arch}{suffix}.pt")
        (root / f"{suffix or 'spec'}.yaml").write_text(
            f"title: {arch} {suffix or 'fp32'}\nmodel: {{timm: {arch}}}\ncheckpoints: [{arch}{suffix}.pt]\n"
            "probes: {images: [probes/*.png]}\ndataset: {root: data}\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    args = ap.parse_args()
    write(args.dir, args.arch)
    print(f"wrote {args.dir}/spec.yaml, int8.yaml, int4.yaml")

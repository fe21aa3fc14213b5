"""Grad-CAM family speed: reportgen vs pytorch-grad-cam vs the forward+backward bound.

The *bound* is one forward pass plus one backward pass of the target score
(the sum of the chosen classes' logits) through the same model, with no hooks
on it: every gradient-based CAM needs at least that much work (ours needs less
of the backward, since it stops at the target layer), so ``ours / bound`` is
our cost in units of "one training-style step". pytorch-grad-cam runs in the
same process, on the same model, input and targets, through its own
``GradCAM`` / ``GradCAMPlusPlus`` (+ optional ``ScoreCAM`` / ``EigenCAM``)
with ``ClassifierOutputTarget``; it is built inside each timed call (as a
``with`` block) so its hooks never sit on the model while ours or the bound
run, and so it pays its set-up like a user would.

After a warm-up of each, the three are run interleaved (ours, peer, bound,
ours, peer, bound, ...) ``--reps`` times; the table gives each one's fastest
round and its median round, in wall time and (CPU only) process CPU time,
which is the steadier measure on a machine shared with other jobs. ``fwd``
is a plain no-grad forward, interleaved too: the floor under any CAM. On CUDA every timing is bracketed by
``torch.cuda.synchronize()``. The maps are checked against each other (both
in [0, 1]; pytorch-grad-cam resizes with cv2): the max and mean absolute
difference are reported, never asserted.

    python bench/bench_cam.py [--device cpu|cuda] [--model resnet18|resnet50] [--batch N]
                              [--size 224] [--methods gradcam,gradcampp[,eigencam,scorecam]] [--reps N]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torchvision

import pytorch_grad_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from reportgen.analyses.explain import explain
from reportgen.model.hooks import count_hooks

PEERS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus",
         "scorecam": "ScoreCAM", "eigencam": "EigenCAM"}


def timed(fn: Callable, device: torch.device):
    """(wall seconds, process CPU seconds, result)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    ap.add_argument("--batch", type=int, default=None, help="default 32 on cuda, 8 on cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--methods", default="gradcam,gradcampp",
                    help="comma-separated of " + ",".join(PEERS) + " (scorecam is very slow)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved rounds (default 10 cuda, 3 cpu)")
    ap.add_argument("--layer", default="layer4")
    args = ap.parse_args()

    device = torch.device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 8)
    reps = args.reps or (10 if device.type == "cuda" else 3)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in PEERS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(PEERS)}")

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    layer_module = dict(model.named_modules())[args.layer]
    x = torch.randn(batch, 3, args.size, args.size, device=device)
    targets: List[int] = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1)).tolist()
    t_dev = torch.tensor(targets, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# {args.model} fp32 {args.size}x{args.size}, batch {batch}, layer {args.layer}, device {name}, "
          f"torch {torch.__version__}, grad-cam {importlib.metadata.version('grad-cam')}, "
          f"rounds {reps} (+1 warm-up)")

    def bound():
        # plain training-style step on the hook-free model: forward + backward of the target score
        scores = model(x)
        scores.gather(1, t_dev[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    def forward():
        # a plain no-grad forward: the floor for any CAM (ours needs one forward with autograd on)
        with torch.no_grad():
            model(x)

    def ours(method):
        return lambda: explain(model, x, method, target=targets, layer=args.layer)

    def peer(method):
        cls = getattr(pytorch_grad_cam, PEERS[method])

        def run():
            with cls(model=model, target_layers=[layer_module]) as cam:
                out = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
            model.zero_grad(set_to_none=True)   # it leaves .grad on every parameter
            return out
        return run

    rows = []
    for method in methods:
        fns = {"ours": ours(method), "peer": peer(method), "bound": bound, "fwd": forward}
        wall: Dict[str, List[float]] = {k: [] for k in fns}
        cpu: Dict[str, List[float]] = {k: [] for k in fns}
        results = {}
        for rnd in range(reps + 1):                     # round 0 is the warm-up
            for key, fn in fns.items():
                assert count_hooks(model) == 0, "a hook was left on the model"
                dw, dc, out = timed(fn, device)
                if rnd:
                    wall[key].append(dw)
                    cpu[key].append(dc)
                results[key] = out
        a, b = np.asarray(results["ours"]), np.asarray(results["peer"])
        assert a.shape == b.shape == (batch, args.size, args.size), (a.shape, b.shape)
        diff = np.abs(a - b)
        for stat, f in (("best", min), ("median", statistics.median)):
            for clock, t in (("wall", wall), ("cpu", cpu)):
                if clock == "cpu" and device.type == "cuda":
                    continue
                rows.append((method, f"{stat} {clock}", f(t["bound"]), f(t["ours"]), f(t["peer"]), f(t["fwd"]),
                             float(diff.max()), float(diff.mean())))

    print("| method | stat | bound ms | ours ms | peer ms | ours/bound | peer/bound | ours/peer "
          "| fwd ms | ours/fwd | max\\|ours-peer\\| | mean\\|ours-peer\\| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, stat, bd, o, p, fw, dmax, dmean in rows:
        print(f"| {m} | {stat} | {bd * 1e3:.1f} | {o * 1e3:.1f} | {p * 1e3:.1f} | {o / bd:.3f} | {p / bd:.3f} "
              f"| {o / p:.3f} | {fw * 1e3:.1f} | {o / fw:.3f} | {dmax:.1e} | {dmean:.1e} |")


if __name__ == "__main__":
    main()

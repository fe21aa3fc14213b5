"""Occlusion speed: reportgen (plain and incremental engines) vs captum vs the forward-pass bound.

The *bound* is the time the same number of forward passes (1 clean + one per
occluder position) takes at the best batch size this machine reaches for the
model (a short sweep of plain forward calls): no plain occlusion can beat it
without skipping work, so ``ours / bound`` is the plain engine's overhead and
``incr / bound`` is what the incremental engine's skipping buys. captum's
``Occlusion`` runs in the same process on the same input; its
``perturbations_per_eval`` is swept in the first round and its best setting
timed in the others. ``incr est`` is what ``occlusion_cost`` predicted for
the incremental engine, as a share of the bound (arithmetic only).

Methods are measured round-robin, ``--reps`` rounds (the order rotated each
round), and each keeps its fastest round, wall and process CPU time
separately: on a shared machine that is the least noisy estimate.

    python bench/bench_occlusion.py [--device cpu|cuda] [--models resnet18,resnet50]
                                    [--configs 32/16,16/8] [--quick] [--reps N] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torchvision
from captum.attr import Occlusion

from reportgen.analyses.occlusion import occlusion_cost, occlusion_details


def timed(fn: Callable, device: torch.device):
    """(wall seconds, process CPU seconds, result). On a CPU shared with other jobs the
    CPU time (all our threads) is the steadier measure of the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c, out


def per_sample_time(model, x1, batch: int, device, min_time: float) -> float:
    """Seconds per sample of a plain no_grad forward at this batch size (best of a few calls)."""
    xb = x1.expand(batch, -1, -1, -1).contiguous()
    with torch.no_grad():
        model(xb)                                   # warm-up: allocator, oneDNN primitives
        best, spent = math.inf, 0.0
        while spent < min_time or best == math.inf:
            dt, _, _ = timed(lambda: model(xb), device)
            best, spent = min(best, dt), spent + dt
    return best / batch


def bench_model(name: str, device: torch.device, configs, reps: int, quick: bool) -> List[tuple]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    x = torch.randn(1, 3, 224, 224, device=device)
    batches = [8, 16, 32, 64] if quick else [4, 8, 16, 32, 64, 128, 256]
    tput = {b: per_sample_time(model, x, b, device, 1.0 if quick else 3.0) for b in batches}
    best_b = min(tput, key=tput.get)
    print(f"# {name}: forward per sample by batch: " + ", ".join(f"{b}: {t * 1e3:.1f} ms" for b, t in tput.items())
          + f"; bound batch {best_b}", flush=True)
    f = lambda z: torch.softmax(model(z), dim=1)
    xb = x.expand(best_b, -1, -1, -1).contiguous()
    rows = []
    for win, st in configs:
        cost = occlusion_cost(model, x, window=win, stride=st)
        n = cost.plain                                  # forward passes: 1 clean + 1 per position
        chunks = [best_b] * (n // best_b) + ([n % best_b] if n % best_b else [])
        ppes = [64] if quick else [32, 64, 128]
        times: Dict[str, float] = {}
        cpu: Dict[str, float] = {}
        results = {}

        def run(key, fn):
            dt, dc, out = timed(fn, device)
            times[key] = min(times.get(key, math.inf), dt)
            cpu[key] = min(cpu.get(key, math.inf), dc)
            results[key] = out

        def forwards():
            with torch.no_grad():
                for b in chunks:
                    model(xb[:b])

        def captum(ppe):
            return lambda: Occlusion(f).attribute(
                x, sliding_window_shapes=(3, win, win), strides=(3, st, st), target=target,
                baselines=x.mean(dim=(2, 3), keepdim=True), perturbations_per_eval=ppe)

        with torch.no_grad():
            model(xb[:chunks[-1]])                      # the bound's last (smaller) batch: warm it too
            target = int(model(x).argmax(dim=1)[0])     # the predicted class, as ours picks it
        for r in range(reps):
            jobs = [("bound", forwards),
                    ("ours", lambda: occlusion_details(model, x, window=win, stride=st, incremental=False)),
                    ("incr", lambda: occlusion_details(model, x, window=win, stride=st, incremental=True))]
            sweep = ppes if r == 0 else [min(ppes, key=lambda p: times[f"captum{p}"])]
            jobs += [(f"captum{ppe}", captum(ppe)) for ppe in sweep]
            k = r % len(jobs)                           # rotate the order: no method always runs first
            for key, fn in jobs[k:] + jobs[:k]:
                run(key, fn)
            print(f"#   {win}/{st} round {r + 1}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()), flush=True)
        cap = min((k for k in times if k.startswith("captum")), key=times.get)
        ref = results[cap][0, 0].cpu().numpy()
        err = float(np.abs(results["ours"].sensitivity[0] - ref).max())
        err_inc = float(np.abs(results["incr"].sensitivity[0] - results["ours"].sensitivity[0]).max())
        est = cost.incremental / cost.plain
        for clock, t in (("wall", times), ("cpu", cpu)):
            rows.append((name, f"{win}/{st}", clock, n, t["bound"], t["ours"], t["incr"], t[cap], cap[6:],
                         results["ours"].batch_size, est, err, err_inc))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default=None, help="comma-separated (default resnet18,resnet50; quick resnet18)")
    ap.add_argument("--configs", default=None, help="window/stride list (default 32/16,16/8; quick 32/16)")
    ap.add_argument("--quick", action="store_true", help="resnet18, 32/16, one captum setting, 1 round")
    ap.add_argument("--reps", type=int, default=None, help="rounds per method (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 is steadiest on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reps = args.reps or (1 if args.quick else 2)
    models = (args.models or ("resnet18" if args.quick else "resnet18,resnet50")).split(",")
    configs = [tuple(int(v) for v in c.split("/")) for c in
               (args.configs or ("32/16" if args.quick else "32/16,16/8")).split(",")]
    print(f"# fp32 224x224, 1 image, random init, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, rounds {reps}", flush=True)
    rows = []
    for name in models:
        rows += bench_model(name, device, configs, reps, args.quick)
    print("| model | window/stride | clock | passes | bound s | ours s | incr s | captum s (ppe) | ours/bound "
          "| incr/bound | incr est | captum/bound | ours/captum | our batch | max\\|ours-captum\\| "
          "| max\\|incr-ours\\| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, ws, clock, n, b, o, i, c, ppe, bs, est, e, ei in rows:
        print(f"| {name} | {ws} | {clock} | {n} | {b:.2f} | {o:.2f} | {i:.2f} | {c:.2f} ({ppe}) | {o / b:.3f} "
              f"| {i / b:.3f} | {est:.3f} | {c / b:.3f} | {o / c:.3f} | {bs} | {e:.1e} | {ei:.1e} |")


if __name__ == "__main__":
    main()

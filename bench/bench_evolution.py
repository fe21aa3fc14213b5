"""Evolution at scale: N ResNet-50 checkpoints through reportgen.build, peak memory and report size.

The claim under test: the evolution section streams the series, holding
about three models' parameters at once however long the series is, and the
report stays a few MB. So each build runs in its own child process and reports
its own peak RSS (``ru_maxrss``):

* **baseline**: ``--only curves``: the pipeline's own cost (torch, the model,
  resolve() validating every checkpoint one by one), without evolution;
* **evolution**: ``--only evolution curves``.

Their difference is what the evolution pass adds. Checkpoints are written in
a third child (so generating them does not count) to a temporary folder that
is deleted at the end. Each checkpoint is the previous one plus small noise;
``layer1`` is never perturbed (a frozen stage, to exercise the finding) and
``fc`` grows. Needs about N x 103 MB of free disk (checked first).

    python bench/bench_evolution.py [--n 50] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CKPT_MB = 103          # torchvision resnet50 state_dict saved with torch.save
SPEC = """\
title: ResNet-50 evolution benchmark
model:
  torchvision: resnet50
  input_size: [3, 224, 224]
checkpoints: [ckpt/epoch_*.pt]
probes: {{images: [probe.png]}}
metrics: metrics.csv
device: cpu
"""


def generate(root: Path, n: int) -> None:
    """N checkpoints, each a small random step from the last; metrics in each and in a CSV."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    (root / "ckpt").mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    rows = ["epoch,train_loss,val_loss,val_acc"]
    for t in range(n):
        lr = 0.02 / (1 + t / 10)
        for k, v in sd.items():
            if not v.is_floating_point() or k.startswith("layer1.") or "running_" in k:
                continue
            v.add_(lr * v.std().clamp_min(1e-3) * torch.randn(v.shape, generator=g))
            if k.startswith("fc."):
                v.mul_(1.03)
        acc = 0.3 + 0.6 * (1 - np.exp(-t / 12))
        torch.save({"state_dict": sd, "epoch": t + 1, "metrics": {"val_acc": acc}},
                   root / "ckpt" / f"epoch_{t + 1:03d}.pt")
        rows.append(f"{t + 1},{2.5 * np.exp(-t / 15):.4f},{2.6 * np.exp(-t / 18) + 0.2:.4f},{acc:.4f}")
    (root / "metrics.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(root / "probe.png")
    (root / "spec.yaml").write_text(SPEC.format())


def build(root: Path, only: list) -> dict:
    """One build in this process; prints what the parent needs as JSON."""
    import reportgen

    started = time.perf_counter()
    report = reportgen.build(root / "spec.yaml", out_dir=root / ("site-" + "-".join(only)),
                             only=only, use_cache=False, quiet=True)
    wall = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
    html = report.path.read_bytes()
    return {"only": only, "wall_s": round(wall, 1), "peak_rss_mb": round(rss_mb),
            "report_kb": round(len(html) / 1024), "json_kb": round(report.json_path.stat().st_size / 1024),
            "timings": report.data["timings"], "findings": [f["id"] for f in report.findings],
            "loads": report.data["sections"].get("evolution", {}).get("checkpoint_loads")}


def child(*args: str) -> str:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return out.stdout


def model_mb() -> float:
    import torchvision
    m = torchvision.models.resnet50(weights=None)
    return sum(p.numel() * p.element_size() for p in m.parameters()) / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--keep", type=Path, default=None, help="write the series here and keep it")
    ap.add_argument("--_generate", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_build", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_only", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._generate:
        return generate(args._generate, args.n)
    if args._build:
        print(json.dumps(build(args._build, args._only)))
        return
    base = args.keep or Path(tempfile.mkdtemp(prefix="reportgen-bench-evo-"))
    base.mkdir(parents=True, exist_ok=True)
    n = args.n
    free_mb = shutil.disk_usage(base).free / 2 ** 20
    if free_mb < n * CKPT_MB * 1.2:
        fallback = 20
        print(f"only {free_mb:.0f} MB free for {n} checkpoints: using {fallback}", file=sys.stderr)
        n = fallback
    root = base / "series"
    try:
        t0 = time.perf_counter()
        child("--_generate", str(root), "--n", str(n))
        size = sum(f.stat().st_size for f in (root / "ckpt").iterdir()) / 2 ** 20
        print(f"generated {n} checkpoints, {size:.0f} MB, in {time.perf_counter() - t0:.0f}s; "
              f"one model's parameters: {model_mb():.0f} MB")
        for only in (["curves"], ["evolution", "curves"]):
            res = json.loads(child("--_build", str(root), "--_only", *only, "--n", str(n)))
            print(json.dumps(res))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

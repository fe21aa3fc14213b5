"""What a compare costs: two ResNet-18s, cold and warm, peak memory against dataset size, the demo.

Project: torchvision ``resnet18`` (weights=None, 4 classes, seed 0) as BASE; NEW
is BASE with Gaussian noise (``--noise`` x the weights' std) added to
``layer4.1.conv2``, so the change starts deep. 6 probes, an ImageFolder dataset
of ``--images`` synthetic PNGs (4 classes, smooth colour fields with a class
shape, ``--size``² pixels, seeded).

Rows (each command is a fresh ``python -m reportgen.cli`` subprocess; wall time,
its CPU time (user + sys: steadier than wall on a shared machine) and peak RSS
from ``os.wait4``):

* ``build BASE``, ``build NEW`` into an empty cache, then ``compare`` warm: it must
  take every section of both models from the cache and compute only what crosses
  models (the dataset pass, units, weights); the ``cached`` column counts the
  sections it found (from its progress log);
* ``compare --no-cache``: cold, every section of both models computed again;
* ``compare`` warm with ``--only summary`` at ``--images`` and at ``--mem`` images:
  peak RSS must be flat in the dataset size (the pass streams);
* ``reportgen demo`` in a fresh folder (``--demo``), the whole command.

    python bench/bench_compare.py [--images 200] [--mem 2000] [--size 224]
                                  [--sections summary filters activations cam topk] [--demo]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image

CLASSES = ("circle", "square", "stripe", "blank")
ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` PNGs in ImageFolder layout: a smooth random colour field plus a class shape."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        low = rng.random((4, 4, 3)).astype(np.float32)
        img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                         dtype=np.float32)
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
        mask = {"circle": (yy - cy) ** 2 + (xx - cx) ** 2 < r * r,
                "square": (abs(yy - cy) < r) & (abs(xx - cx) < r),
                "stripe": abs(xx - cx) < r / 3,
                "blank": np.zeros_like(yy, dtype=bool)}[cls]
        img[mask] = rng.random(3) * 255
        out = folder / cls / f"{i:05d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(out)


def make_project(root: Path, images: int, size: int, noise: float) -> Dict[str, Path]:
    """Checkpoints, probes, dataset and the two specs under ``root``."""
    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    new_sd = {k: v.clone() for k, v in base.state_dict().items()}
    w = new_sd["layer4.1.conv2.weight"]
    g = torch.Generator().manual_seed(1)
    new_sd["layer4.1.conv2.weight"] = w + noise * w.std() * torch.randn(w.shape, generator=g)
    (root / "ckpt").mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": base.state_dict(), "epoch": 1}, root / "ckpt" / "base.pt")
    torch.save({"model_state_dict": new_sd, "epoch": 2}, root / "ckpt" / "new.pt")
    write_images(root / "probes_src", 6, size, seed=1)
    probes = sorted((root / "probes_src").rglob("*.png"))
    (root / "probes").mkdir(exist_ok=True)
    for p in probes:
        p.rename(root / "probes" / f"{p.parent.name}_{p.name}")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    specs = {}
    for side, n in (("base", images), ("new", images)):
        specs[side] = root / f"{side}.yaml"
        specs[side].write_text(_spec(side, f"data{n}", n, size))
    return specs


def _spec(side: str, data: str, limit: int, size: int) -> str:
    return (f"title: ResNet-18 {side.upper()}\n"
            f"model:\n  torchvision: resnet18\n  kwargs: {{num_classes: {len(CLASSES)}}}\n"
            f"  input_size: [3, {size}, {size}]\n"
            f"checkpoints: [ckpt/{side}.pt]\nclasses: classes.txt\n"
            "probes: {images: [probes/*.png]}\n"
            f"dataset: {{root: {data}, limit: {limit}, batch_size: 32}}\n")


def run(cmd: Sequence[str], env: Dict[str, str], cwd: Path) -> Dict[str, object]:
    """One fresh subprocess: wall s, CPU s (user + sys), peak RSS MiB, its stderr."""
    err = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err.seek(0)
    text = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024,
            "log": text}


def _cached(log: str) -> str:
    done = re.findall(r"reportgen: \S+ done in [\d.]+s( \(cached\))?", log)
    return f"{sum(1 for c in done if c)}/{len(done)}"


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--mem", type=int, nargs="*", default=[2000], help="more dataset sizes for peak memory")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--noise", type=float, default=1.0, help="noise on layer4.1.conv2, x its weights' std")
    ap.add_argument("--sections", nargs="+", default=["summary", "filters", "activations", "cam", "topk"],
                    help="sections of the builds and the cold/warm compare ('all': every one)")
    ap.add_argument("--demo", action="store_true", help="also time `reportgen demo` in a fresh folder")
    ap.add_argument("--keep", metavar="DIR", help="work here and keep it (default: a temporary folder)")
    args = ap.parse_args(list(argv) or None)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-compare-"))
    tmp.mkdir(parents=True, exist_ok=True)
    specs = make_project(tmp, args.images, args.size, args.noise)
    for n in sorted({args.images, *args.mem}):
        if not (tmp / f"data{n}").exists():
            write_images(tmp / f"data{n}", n, args.size, seed=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT), REPORTGEN_CACHE_DIR=str(tmp / "cache"))
    cli = [sys.executable, "-m", "reportgen.cli"]
    only = [] if args.sections == ["all"] else ["--only", *args.sections]
    rows: List[List[str]] = []

    def row(name: str, r: Dict[str, object], extra: str = "", size: str = "") -> None:
        rows.append([name, f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r['rss']:.0f}", extra, size])
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)

    for side in ("base", "new"):
        r = run([*cli, "build", str(specs[side]), "-o", str(tmp / f"site-{side}"), *only], env, tmp)
        row(f"build {side.upper()} ({args.images} images)", r, _cached(r["log"]))
    r = run([*cli, "compare", str(specs["base"]), str(specs["new"]), "-o", str(tmp / "warm"), *only], env, tmp)
    row("compare warm (after both builds)", r, _cached(r["log"]),
        f"{(tmp / 'warm' / 'index.html').stat().st_size / 1e6:.2f} MB")
    r = run([*cli, "compare", str(specs["base"]), str(specs["new"]), "-o", str(tmp / "cold"), "--no-cache", *only],
            env, tmp)
    row("compare cold (--no-cache)", r, _cached(r["log"]),
        f"{(tmp / 'cold' / 'index.html').stat().st_size / 1e6:.2f} MB")
    for n in sorted({args.images, *args.mem}):
        for side in ("base", "new"):
            (tmp / f"{side}{n}.yaml").write_text(_spec(side, f"data{n}", n, args.size))
        out = tmp / f"mem{n}"
        r = run([*cli, "compare", str(tmp / f"base{n}.yaml"), str(tmp / f"new{n}.yaml"), "-o", str(out),
                 "--only", "summary"], env, tmp)
        row(f"compare --only summary, {n} images", r, _cached(r["log"]),
            f"{(out / 'index.html').stat().st_size / 1e6:.2f} MB")
    if args.demo:
        r = run([*cli, "demo", "-o", str(tmp / "demo")], env, tmp)
        row("reportgen demo (fresh folder)", r, _cached(r["log"]))

    print(f"\nthreads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}; work folder {tmp}")
    print("| step | wall s | CPU s | peak RSS MiB | sections cached | report |")
    print("|---|---|---|---|---|---|")
    for r_ in rows:
        print("| " + " | ".join(r_) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

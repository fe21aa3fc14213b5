"""A whole default build of a big model: time per section, wall, page size, budget choices.

The case of issue 9 ("builds that fit a budget"): torchvision ``resnet50``
(``weights=None``, seed 0), six probe images of uniform noise from a fixed
seed (256x256, resized to the input; ``--size 512`` feeds 512x512 probes to a
512x512 model), every default section, no dataset. The spec is written to a
temporary folder and built there with a fresh cache, in this process, through
``reportgen.build`` (the CLI's path), so what is timed is what a user waits for.

Printed: the wall time of the whole build (spec to written page) and the
process's CPU time (steadier on a shared machine), each
section's time and its share of the page (the bytes between its
``<section id=...>`` tags), the page size, and -- where the build plans a
budget -- the throughput it measured and every choice it made. ``--rebuild``
builds a second time from the cache and checks the page is byte-identical.
Runs on code without a budget (main before issue 9) too: the budget columns
are then empty.

    python bench/bench_build_budget.py [--size 224] [--model resnet50] [--budget SECONDS]
                                       [--device cpu|cuda] [--rebuild] [--keep DIR]
                                       [--dataset N [--classes K]] [--only SECTION ...] [--sections YAML]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
from PIL import Image

N_PROBES = 6


def write_project(root: Path, model: str, size: int, budget: Any, device: str, dataset: int = 0,
                  classes: int = 4, sections: str = "") -> Path:
    rng = np.random.default_rng(0)
    side = 256 if size <= 256 else size
    probes = root / "probes"
    probes.mkdir(parents=True)
    for i in range(N_PROBES):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(probes / f"noise_{i}.png")
    for i in range(dataset):       # a labelled dataset: noise images in folders named like the model's classes
        folder = root / "data" / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    lines = ["title: budget bench", "model:", f"  torchvision: {model}", f"  input_size: [3, {size}, {size}]",
             "probes:", "  images: [probes/*.png]", f"device: {device}", "seed: 0"]
    if dataset:
        lines.append("dataset: {root: data}")
    if sections:
        lines.append(f"sections: {sections}")
    if budget is not None:
        lines.append(f"budget: {budget}")
    spec = root / "spec.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def section_bytes(page: str) -> Dict[str, int]:
    out = {}
    for m in re.finditer(r'<section id="([^"]+)" class="section[^"]*">', page):
        end = page.find("</section>", m.end())
        out[m.group(1)] = len(page[m.start():end].encode())
    return out


def build_once(spec: Path, out: Path, cache: Path, only: Any = None) -> Dict[str, Any]:
    import reportgen

    started, cpu = time.perf_counter(), time.process_time()
    report = reportgen.build(spec, out_dir=out, cache_dir=cache, quiet=False, only=only)
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "report": report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224, help="model input side (probes are 256 px, or this)")
    ap.add_argument("--budget", default=None, help="spec budget: seconds or auto (default: the spec's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--rebuild", action="store_true", help="build again from the cache, compare the pages")
    ap.add_argument("--keep", metavar="DIR", help="copy the project and its site here")
    ap.add_argument("--dataset", type=int, default=0, metavar="N",
                    help="a labelled dataset of N noise images in --classes class folders (default: none)")
    ap.add_argument("--classes", type=int, default=4, help="class folders of --dataset (class_0, class_1, ...)")
    ap.add_argument("--only", nargs="+", metavar="SECTION", help="build only these sections")
    ap.add_argument("--sections", default="", metavar="YAML",
                    help="the spec's sections: mapping, inline, e.g. '{shortcuts: {images: 50}}'")
    args = ap.parse_args()

    import torch
    import reportgen

    root = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    try:
        spec = write_project(root / "project", args.model, args.size, args.budget, args.device, args.dataset,
                             args.classes, args.sections)
        first = build_once(spec, root / "site", root / "cache", args.only)
        report = first["report"]
        page = report.path.read_text(encoding="utf-8")
        data = report.data
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nreportgen {reportgen.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{args.model} {args.size}x{args.size}, {N_PROBES} probes, {args.dataset} dataset image(s), "
              f"device {args.device}")
        budget = data.get("budget")
        if budget:
            print(f"budget {budget.get('seconds')} s; planned {budget.get('planned_s')} s; "
                  f"throughput {json.dumps(budget.get('throughput'))}")
        sizes = section_bytes(page)
        print(f"\n| section | time s | page KB | estimated s | choices |\n|---|---|---|---|---|")
        for name, seconds in data["timings"].items():
            sec = data["sections"].get(name) or {}
            b = sec.get("budget") if isinstance(sec, dict) else None
            choices = json.dumps(b.get("choices"), sort_keys=True) if b else ""
            est = f"{b['estimated_s']:.1f}" if b and b.get("estimated_s") is not None else ""
            skipped = " (skipped)" if isinstance(sec, dict) and "skipped" in sec else ""
            print(f"| {name}{skipped} | {seconds:.1f} | {sizes.get(name, 0) / 1024:.0f} | {est} | {choices} |")
        size = report.path.stat().st_size
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nwall {first['wall']:.1f} s (process CPU {first['cpu']:.1f} s, load average {load:.1f} on "
              f"{os.cpu_count()} cores); page {size / 1e6:.2f} MB ({size:,} bytes); peak RSS {peak_rss:.0f} MiB")
        if args.rebuild:
            again = build_once(spec, root / "site2", root / "cache", args.only)
            same = again["report"].path.read_bytes() == report.path.read_bytes()
            print(f"rebuild from cache: {again['wall']:.1f} s, byte-identical: {same}")
        if args.keep:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Held-out checkpoint series derived from the trained demo (issue 5 acceptance).

Each variant copies the demo folder and rewrites its checkpoints with one
known defect, so the report's findings can be checked against a known answer:

* healthy   - the demo as trained: no warning or error findings;
* frozen    - ``features.conv2`` holds its final trained weights in every
  checkpoint (a frozen pretrained layer). The last checkpoint is the healthy
  model bit for bit, so any finding other than ``frozen-layers`` is spurious;
* dead      - half of ``features.conv3``'s output channels zeroed, their BN
  set to output -1 (so the ReLU never fires) in the last three checkpoints;
* noisy     - the first layer's filters replaced by i.i.d. Gaussian noise of
  the same per-filter norm in the last checkpoint;
* diverging - every conv's weights grow geometrically to x20 over the series
  (BN running statistics rescaled so the function is unchanged, as happens
  under BN without weight decay) and the held-out metrics regress at the end.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import torch

VARIANTS = ("healthy", "frozen", "dead", "noisy", "diverging")
CONVS = ("features.conv1", "features.conv2", "features.conv3", "features.conv4")


def checkpoints(root: Path) -> List[Path]:
    """The demo's checkpoints, oldest first (natural order of epoch_<n>.pt)."""
    return sorted(root.glob("checkpoints/epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def _rewrite(root: Path, change: Callable[[int, int, dict], None]) -> None:
    """Load every checkpoint, let ``change(t, T, ckpt)`` edit it in place, save it back."""
    paths = checkpoints(root)
    for t, path in enumerate(paths):
        ckpt = torch.load(path, weights_only=True)
        change(t, len(paths), ckpt)
        torch.save({"model_state_dict": ckpt["model_state_dict"], "epoch": ckpt["epoch"],
                    "metrics": ckpt["metrics"]}, path)


def _frozen(root: Path) -> None:
    final = torch.load(checkpoints(root)[-1], weights_only=True)["model_state_dict"]
    weight = final["features.conv2.weight"].clone()

    def change(t: int, n: int, ckpt: dict) -> None:
        ckpt["model_state_dict"]["features.conv2.weight"] = weight.clone()
    _rewrite(root, change)


def _dead(root: Path) -> None:
    def change(t: int, n: int, ckpt: dict) -> None:
        if t < n - 3:
            return
        sd = ckpt["model_state_dict"]
        dead = torch.arange(0, sd["features.conv3.weight"].shape[0], 2)   # every other channel: 50%
        sd["features.conv3.weight"][dead] = 0.0
        sd["features.bn3.weight"][dead] = 0.0
        sd["features.bn3.bias"][dead] = -1.0
    _rewrite(root, change)


def _noisy(root: Path) -> None:
    g = torch.Generator().manual_seed(0)

    def change(t: int, n: int, ckpt: dict) -> None:
        if t != n - 1:
            return
        sd = ckpt["model_state_dict"]
        w = sd["features.conv1.weight"]
        noise = torch.randn(w.shape, generator=g)
        scale = w.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
        sd["features.conv1.weight"] = noise * scale.view(-1, 1, 1, 1)
    _rewrite(root, change)


def _diverging(root: Path) -> None:
    def change(t: int, n: int, ckpt: dict) -> None:
        sd = ckpt["model_state_dict"]
        k = 20.0 ** (t / (n - 1))
        for conv in CONVS:
            bn = conv.replace("conv", "bn")
            sd[f"{conv}.weight"] = sd[f"{conv}.weight"] * k
            sd[f"{bn}.running_mean"] = sd[f"{bn}.running_mean"] * k     # BN sees k*x: same output
            sd[f"{bn}.running_var"] = sd[f"{bn}.running_var"] * k * k
        if t >= n - 2:
            _regress(ckpt["metrics"], t - (n - 3))
    _rewrite(root, change)
    _regress_csv(root / "metrics.csv")


def _regress(metrics: Dict[str, float], steps: int) -> None:
    """Held-out loss up, accuracy down: ``steps`` (1, 2) epochs into a divergence."""
    metrics["val_loss"] = float(metrics["val_loss"]) + 0.6 * steps
    metrics["val_acc"] = float(metrics["val_acc"]) - 0.12 * steps


def _regress_csv(path: Path) -> None:
    rows = list(csv.DictReader(path.open()))
    for steps, row in zip((1, 2), rows[-2:]):
        m = {"val_loss": float(row["val_loss"]), "val_acc": float(row["val_acc"])}
        _regress(m, steps)
        row.update({k: f"{v:.6f}" for k, v in m.items()})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


MAKERS: Dict[str, Callable[[Path], None]] = {
    "healthy": lambda root: None, "frozen": _frozen, "dead": _dead, "noisy": _noisy,
    "diverging": _diverging}


def make_variant(demo: Path, out: Path, variant: str) -> Path:
    """Copy the trained demo to ``out`` (no site, no manifest) and apply ``variant``; returns the spec."""
    shutil.copytree(demo, out, ignore=shutil.ignore_patterns("site", ".demo-tmp-*", "notes.txt"))
    MAKERS[variant](out)
    return out / "spec.yaml"

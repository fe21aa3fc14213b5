"""Deterministic CPU training of ShapesNet on the shapes task.

Why it looks like this: the demo has to run on a laptop or a 2-core CI box in
well under two minutes and give the same checkpoints every time, so that the
report built from them (and the tests that check explanations localize) are
reproducible. Hence: no DataLoader workers, the whole split held as one uint8
tensor, a seeded ``torch.Generator`` for shuffling and augmentation, torch's
deterministic-algorithms mode, and a checkpoint per epoch *including* the
untrained initialization (epoch 0), so the report's evolution section has a
"before" to compare with.
"""
from __future__ import annotations

import contextlib
import csv
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from reportgen.demo import shapes
from reportgen.demo.net import ShapesNet
from reportgen.engine.throughput import cpu_threads
from reportgen.progress import bars_wanted

METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "train_acc"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (it goes into the manifest)."""

    seed: int = 0
    n_train: int = 4000
    n_val: int = 1000
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # Decoupled weight decay on the first conv only. Why: BN follows it, so its
    # scale does not change what the net computes, and nothing else removes the
    # random init from it: with 1e-4 (x the schedule's summed lr 0.76, 0.008%)
    # the trained 5x5 filters stayed ~85% init noise by variance (median
    # roughness 0.84; half of them no smoother than their own shuffled taps) and
    # the report rightly called them noisy. 1.0 shrinks the init to ~47% by norm
    # while the gradients keep the learned, smooth part: median roughness 0.70,
    # 1 of 16 filters in the noise band, val_acc 99.5%, CAM pointing 96.5%.
    # (3.0 gave smoother filters but CAM pointing fell to 86.5%, 2.0 to 89.5%.)
    first_layer_weight_decay: float = 1.0
    augment: bool = True
    erase_background: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


# Distinct generator seeds per split, so no held-out image is a training image.
_SPLIT_OFFSETS = {"train": 1, "val": 2, "probes": 3, "held_out": 4}


def split_seed(name: str, seed: int = 0) -> int:
    """The numpy seed of split ``name`` (train, val, probes, held_out) for a demo seed."""
    return 100 * seed + _SPLIT_OFFSETS[name]


def channel_stats(images: np.ndarray) -> Tuple[List[float], List[float]]:
    """Per-channel mean and std in [0, 1] units, rounded so the spec can state them."""
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 3) for v in x.mean(0)], [round(float(v), 3) for v in x.std(0)]


def to_input(images: torch.Tensor, mean: List[float], std: List[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalized float (N, 3, H, W), as the report will preprocess."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@contextlib.contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count, restored on exit.

    Restoring matters because prepare_demo runs inside the user's process
    (``reportgen.build`` from a notebook); we must not leave global torch
    settings changed behind us.
    """
    was_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with cpu_threads(threads):
            yield
    finally:
        torch.use_deterministic_algorithms(was_det)


# One thread, always. Measured: the thread count changes the trained bits
# (oneDNN's reductions split differently), so it must not depend on the
# machine; and on a shared 2-core box 2 threads ran 2-3x *slower* than 1
# (OpenMP threads spin while waiting for a core). One thread keeps the demo
# reproducible and its time predictable.
TRAIN_THREADS = 1


@dataclass
class TrainResult:
    """The metrics rows (one per checkpoint) and the normalization trained with."""

    history: List[Dict[str, float]]
    mean: List[float]
    std: List[float]


def train(out_dir: Path, config: TrainConfig = TrainConfig(), quiet: bool = False) -> TrainResult:
    """Train, writing ``checkpoints/epoch_<e>.pt`` (e = 0..epochs) and ``metrics.csv``.

    ``out_dir`` should be a scratch folder: the caller (prepare_demo) moves
    it into place only once everything is written.
    """
    data = load_data(config)
    ckpt_dir = Path(out_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with deterministic_torch(TRAIN_THREADS):
        torch.manual_seed(config.seed)
        # channels_last: measured ~40% faster on CPU (max-pooling above all).
        model = ShapesNet(num_classes=len(shapes.CLASSES)).to(memory_format=torch.channels_last)
        history = _fit(model, data, config, ckpt_dir, quiet)
    write_metrics(Path(out_dir) / "metrics.csv", history)
    return TrainResult(history, data.mean, data.std)


@dataclass
class DemoData:
    """Both splits as tensors plus the normalization computed from the train split."""

    x_train: torch.Tensor  # uint8 (N, 64, 64, 3)
    y_train: torch.Tensor
    box_train: torch.Tensor  # (N, 4) x0, y0, x1, y1, x1/y1 exclusive
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: List[float]
    std: List[float]


def load_data(config: TrainConfig) -> DemoData:
    train_imgs, train_y, train_box = shapes.make_split(config.n_train, split_seed("train", config.seed))
    val_imgs, val_y, _ = shapes.make_split(config.n_val, split_seed("val", config.seed))
    mean, std = channel_stats(train_imgs)
    return DemoData(torch.from_numpy(train_imgs), torch.from_numpy(train_y), torch.from_numpy(train_box),
                    torch.from_numpy(val_imgs), torch.from_numpy(val_y), mean, std)


def _fit(model: nn.Module, data: DemoData, config: TrainConfig, ckpt_dir: Path,
         quiet: bool) -> List[Dict[str, float]]:
    """The training loop proper; one checkpoint per epoch, epoch 0 before any step."""
    gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(config.n_train / config.batch_size)
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch)
    # Epoch 0 has no running loss; measure the untrained net on a train slice instead.
    n0 = min(config.n_val, config.n_train)
    train_loss0, train_acc0 = evaluate(model, data.x_train[:n0], data.y_train[:n0], data)
    history = [_record(model, 0, train_loss0, train_acc0, data, ckpt_dir)]
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="training demo ShapesNet",
               unit="step", disable=not bars_wanted(quiet), leave=False)
    with bar:
        for epoch in range(1, config.epochs + 1):
            loss, acc = _train_epoch(model, data, config, optimizer, scheduler, gen, bar)
            history.append(_record(model, epoch, loss, acc, data, ckpt_dir))
            bar.set_postfix(val_acc=f"{history[-1]['val_acc']:.3f}")
            if not quiet and not bars_wanted(quiet):       # a CI log: one line per epoch
                print(f"reportgen: demo epoch {epoch}/{config.epochs}: val_acc {history[-1]['val_acc']:.3f}",
                      file=sys.stderr, flush=True)
    return history


def _param_groups(model: nn.Module, config: TrainConfig) -> List[Dict]:
    """The first conv's weight with its own (strong) weight decay, everything else with the default."""
    first = "features.conv1.weight"
    return [{"params": [p for n, p in model.named_parameters() if n != first]},
            {"params": [p for n, p in model.named_parameters() if n == first],
             "weight_decay": config.first_layer_weight_decay}]


def _train_epoch(model: nn.Module, data: DemoData, config: TrainConfig, optimizer, scheduler,
                 gen: torch.Generator, bar) -> Tuple[float, float]:
    """One pass over the shuffled train split; returns mean loss and accuracy."""
    model.train()
    order = torch.randperm(config.n_train, generator=gen)
    total_loss, correct = 0.0, 0
    for start in range(0, config.n_train, config.batch_size):
        idx = order[start:start + config.batch_size]
        x = to_input(data.x_train[idx], data.mean, data.std)
        if config.erase_background:
            x = _erase_background(x, data.box_train[idx], gen)
        if config.augment:
            x = _augment(x, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        y = data.y_train[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        bar.update(1)
    return total_loss / config.n_train, correct / config.n_train


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree turns: shape classes are invariant to them,
    and each one moves the box with the object, so localization stays honest."""
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = x.flip(3)
    k = int(torch.randint(0, 4, (1,), generator=gen))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def _erase_background(x: torch.Tensor, boxes: torch.Tensor, gen: torch.Generator,
                      sizes: Tuple[int, int] = (8, 20), tries: int = 8) -> torch.Tensor:
    """Paint one flat square per image somewhere *outside* its object's box.

    Why: occlusion maps slide a flat patch (the dataset or image mean) over
    the image. To a shape classifier such a patch is itself a square, so an
    untreated net changes its mind wherever the patch lands and occlusion
    points at the background. Seeing such patches on the background during
    training (never on the object, so no label noise) teaches the net to
    ignore them; its decision then rests on the object alone, which is what
    the demo's explanations are meant to show. The fill is either the dataset
    mean (0 after normalization) or the image's own mean colour, the two
    usual occlusion baselines.
    """
    n, _, h, w = x.shape
    x = x.clone()
    size = torch.randint(sizes[0], sizes[1] + 1, (n,), generator=gen)
    corner = torch.rand(n, tries, 2, generator=gen)
    own_mean = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        s = int(size[i])
        xs = (corner[i, :, 0] * (w - s + 1)).long()
        ys = (corner[i, :, 1] * (h - s + 1)).long()
        x0, y0, x1, y1 = boxes[i].tolist()
        clear = (xs + s <= x0) | (xs >= x1) | (ys + s <= y0) | (ys >= y1)
        if not bool(clear.any()):
            continue
        j = int(clear.nonzero()[0])
        fill = x[i].mean((1, 2), keepdim=True) if own_mean[i] else torch.zeros(x.shape[1], 1, 1)
        x[i, :, int(ys[j]):int(ys[j]) + s, int(xs[j]):int(xs[j]) + s] = fill
    return x


@torch.no_grad()
def evaluate(model: nn.Module, x_u8: torch.Tensor, y: torch.Tensor, data: DemoData,
             batch_size: int = 250) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (BN running statistics)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        x = to_input(x_u8[start:start + batch_size], data.mean, data.std)
        logits = model(x.contiguous(memory_format=torch.channels_last))
        yb = y[start:start + batch_size]
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return total_loss / len(y), correct / len(y)


def _record(model: nn.Module, epoch: int, train_loss: float, train_acc: float,
            data: DemoData, ckpt_dir: Path) -> Dict[str, float]:
    """Evaluate on the held-out split and save the checkpoint for this epoch."""
    val_loss, val_acc = evaluate(model, data.x_val, data.y_val, data)
    metrics = {"train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
               "val_acc": round(val_acc, 6), "train_acc": round(train_acc, 6)}
    save_checkpoint(ckpt_dir / f"epoch_{epoch}.pt", model, epoch, metrics)
    return {"epoch": epoch, **metrics}


def save_checkpoint(path: Path, model: nn.Module, epoch: int, metrics: Dict[str, float]) -> None:
    """Only tensors, ints and floats, so ``torch.load(weights_only=True)`` accepts it.

    Tensors are saved in the standard (contiguous) layout whatever layout we
    trained in, so the file does not depend on that speed trick.
    """
    state = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state, "epoch": epoch, "metrics": dict(metrics)}, path)


def write_metrics(path: Path, history: List[Dict[str, float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)

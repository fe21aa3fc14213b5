"""One pass of the model over the labelled dataset: what the errors and calibration sections read.

Per batch, the class scores of the clean images feed, at once:

* a ``confusion.ConfusionCounter`` (K x K counts);
* a ``calibration.CalibrationCounter`` (per-bin and per-temperature sums);
* the labelled images' top-1 confidence and correctness (two arrays of n,
  for the ECE bootstrap and the equal-mass bins);
* a running list of the ``keep`` most confident mistakes (confidence desc,
  then image index asc: batch size never changes which are kept).

Unlabelled images (``labels[i] == agreement.UNKNOWN``) are run but not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from reportgen.analyses import calibration as cal
from reportgen.analyses.agreement import top1
from reportgen.analyses.confusion import ConfusionCounter, ConfusionResult
from reportgen.analyses.topk import make_loader
from reportgen.model.hooks import eval_mode
from reportgen.model.loading import model_device
from reportgen.model.outputs import OutputKey, select_output


@dataclass(frozen=True)
class Mistakes:
    """The most confident mistakes, most confident first."""

    indices: np.ndarray       # (M,) global image index
    true: np.ndarray          # (M,) true class
    predicted: np.ndarray     # (M,) top-1 class
    confidence: np.ndarray    # (M,) probability of the predicted class
    p_true: np.ndarray        # (M,) probability of the true class

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class PredictionPass:
    confusion: ConfusionResult
    calibration: cal.CalibrationCounter   # sums; ``calibration_result`` reads them with the arrays below
    confidence: np.ndarray                # (n,) top-1 probability of each labelled image
    correct: np.ndarray                   # (n,) 1.0 where its top-1 class is the true one
    mistakes: Mistakes
    n_images: int                         # images run (labelled or not)

    def calibration_result(self, resamples: int = cal.BOOTSTRAP, seed: int = 0) -> cal.CalibrationResult:
        return cal.calibration_result(self.calibration, self.confidence, self.correct, resamples, seed)


class MistakeKeeper:
    """Running top-``keep`` of wrong predictions by confidence (ties: lower image index)."""

    def __init__(self, keep: int):
        self.keep = int(keep)
        self.rows = np.zeros((5, 0), dtype=np.float64)   # index, true, predicted, confidence, p_true

    def update(self, rows: np.ndarray) -> None:
        if not rows.shape[1] or not self.keep:
            return
        both = np.concatenate([self.rows, rows], axis=1)
        order = np.lexsort((both[0], -both[3]))[:self.keep]
        self.rows = both[:, order]

    def result(self) -> Mistakes:
        r = self.rows
        return Mistakes(r[0].astype(np.int64), r[1].astype(np.int64), r[2].astype(np.int64),
                        r[3].astype(np.float32), r[4].astype(np.float32))


class PredictionCounter:
    """The per-batch half of the pass: class scores in, sums and arrays kept; ``result`` reads them.

    Split from the loop so another pass over the dataset (``dataset_pass``,
    which also feeds top-k and embeddings from the same forward) can count
    predictions without a forward of its own.
    """

    def __init__(self, labels: Sequence[int], classes: Sequence[str], device: torch.device, keep: int = 8,
                 bins: int = cal.BINS):
        self.classes = list(classes)
        self.device = device
        self.known = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.confusion = ConfusionCounter(len(self.classes), device)
        self.calib = cal.CalibrationCounter(bins, device=device)
        self.keeper = MistakeKeeper(keep)
        self.conf_parts: list = []
        self.ok_parts: list = []
        self.seen = 0

    def update(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        """One batch: ``logits`` (B, K) class scores of the images whose global indices are ``index``."""
        logits = logits.float()
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise ValueError(f"the model gives class scores of shape {tuple(logits.shape)}, but "
                             f"{len(self.classes)} classes are named")
        dev = self.device
        lab = self.known[index.long()].to(dev)
        pred = top1(logits)
        self.seen += int(logits.shape[0])
        self.confusion.update(pred, lab)
        c, ok = self.calib.update(logits, lab)
        self.conf_parts.append(c.numpy())
        self.ok_parts.append(ok.numpy())
        wrong = (lab >= 0) & (pred != lab)
        if bool(wrong.any()):
            p = torch.softmax(torch.nan_to_num(logits[wrong].double(), nan=-1e30), dim=1)
            t, k = lab[wrong], pred[wrong]
            rows = torch.stack([index.to(dev)[wrong].double(), t.double(), k.double(),
                                p.gather(1, k[:, None])[:, 0], p.gather(1, t[:, None])[:, 0]])
            self.keeper.update(rows.cpu().numpy())

    def result(self) -> PredictionPass:
        conf = np.concatenate(self.conf_parts) if self.conf_parts else np.zeros(0)
        ok = np.concatenate(self.ok_parts) if self.ok_parts else np.zeros(0)
        return PredictionPass(self.confusion.result(self.classes), self.calib, conf, ok, self.keeper.result(),
                              self.seen)


def prediction_pass(model: nn.Module, dataset: torch.utils.data.Dataset, labels: Sequence[int],
                    classes: Sequence[str], batch_size: int = 64, workers: int = 0,
                    device: Any = "cpu", output_key: OutputKey = None, keep: int = 8,
                    bins: int = cal.BINS, progress: Optional[Callable[..., Any]] = None) -> PredictionPass:
    """Stream ``dataset`` (items ``(tensor, global index)``) once; see the module doc."""
    dev = model_device(model, torch.device(device))
    counter = PredictionCounter(labels, classes, dev, keep, bins)
    loader = make_loader(dataset, batch_size, workers, dev)
    batches = progress(loader, desc="dataset predictions", total=len(loader)) if progress else loader
    with eval_mode(model), torch.no_grad():
        for x, index in batches:
            counter.update(select_output(model(x.to(dev)), output_key), index)
    return counter.result()

"""Model summary: per-layer output shape, parameters and MACs; top-k predictions.

MACs are counted analytically for the layers that dominate compute (conv,
linear, and the matmul inside attention is left out); that is what people
compare across architectures, and it needs no extra dependency.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from reportgen.model.hooks import eval_mode, hooks
from reportgen.model.outputs import select_output


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: Optional[List[int]]
    params: int
    macs: int
    depth: int


@dataclass
class ModelSummary:
    rows: List[LayerRow]
    total_params: int
    trainable_params: int
    total_macs: int
    input_size: List[int]
    num_classes: int


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * int(np.prod(module.kernel_size))
        return int(out.numel() // out.shape[0]) * per_output
    if isinstance(module, nn.Linear):
        return int(out.numel() // out.shape[0]) * module.in_features
    return 0


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


@torch.no_grad()
def summarize(model: nn.Module, example: torch.Tensor, output_key=None) -> ModelSummary:
    """One forward pass of a single example with hooks on the leaf modules."""
    shapes: Dict[str, List[int]] = {}
    macs: Dict[str, int] = {}

    def make(name: str, module: nn.Module):
        def fn(_m, _i, out):
            if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
                out = out[0]
            if torch.is_tensor(out):
                shapes[name] = list(out.shape[1:])
                macs[name] = macs.get(name, 0) + _macs(module, out)
        return fn

    from reportgen.model.loading import is_scripted

    leaves = [(n, m) for n, m in model.named_modules() if n and _is_leaf(m)]
    scripted = is_scripted(model)  # no hooks on TorchScript: names and params only
    with eval_mode(model), hooks() as hs:
        for name, module in ([] if scripted else leaves):
            hs.append(module.register_forward_hook(make(name, module)))
        scores = select_output(model(example[:1]), output_key)
    rows = [LayerRow(name=n, type=getattr(m, "original_name", None) or type(m).__name__, output_shape=shapes.get(n),
                     params=_own_params(m), macs=macs.get(n, 0), depth=n.count(".")) for n, m in leaves]
    # parameters registered directly on containers (e.g. ViT's class token) are counted too
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(rows=rows, total_params=total, trainable_params=trainable,
                        total_macs=sum(macs.values()), input_size=list(example.shape[1:]),
                        num_classes=int(scores.shape[-1]))


@dataclass
class Predictions:
    probs: np.ndarray      # (N, k) softmax probabilities, descending
    indices: np.ndarray    # (N, k) class indices


@torch.no_grad()
def top_predictions(model: nn.Module, batch: torch.Tensor, k: int = 5, output_key=None) -> Predictions:
    with eval_mode(model):
        scores = select_output(model(batch), output_key).float()
    probs = torch.softmax(scores, dim=1)
    k = min(k, probs.shape[1])
    values, idx = probs.topk(k, dim=1)
    return Predictions(probs=values.cpu().numpy().astype(np.float32), indices=idx.cpu().numpy())

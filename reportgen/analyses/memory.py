"""Peak activation bytes of one sample's forward pass: what batch sizes are planned from.

Occlusion sizes its batches of occluded copies with it (:func:`probe`), and
the incremental engine estimates the same number from its cached clean pass
(:func:`peak_estimate` over its graph's values).
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
from torch import nn

from reportgen.hooks import record_calls


def nbytes(v: Any) -> int:
    """Bytes held by the tensors in ``v`` (a tensor, or tuples/lists of them); 0 for anything else."""
    if torch.is_tensor(v):
        return v.numel() * v.element_size()
    if isinstance(v, (tuple, list)):
        return sum(nbytes(t) for t in v)
    return 0


def peak_estimate(steps: Sequence[Tuple[int, int]], in_bytes: int) -> int:
    """Peak bytes of a no_grad forward from each step's (input, output) bytes.

    At any moment such a pass holds about one layer's input and output plus
    one skip tensor (a residual branch): max(in + out) + max(out) + the input.
    """
    if not steps:
        return 2 * in_bytes
    return max(i + o for i, o in steps) + max(o for _, o in steps) + in_bytes


def probe(model: nn.Module, x1: torch.Tensor) -> Tuple[int, Any]:
    """One forward pass of a single sample: its peak activation bytes, and its output.

    The output is the clean image's scores, so the probe costs no extra pass.
    On CUDA the allocator's peak is exact; on CPU we record every leaf
    module's input and output sizes (:func:`peak_estimate`).
    """
    if x1.is_cuda:
        torch.cuda.synchronize(x1.device)
        before = torch.cuda.memory_allocated(x1.device)
        torch.cuda.reset_peak_memory_stats(x1.device)
        out = model(x1)
        torch.cuda.synchronize(x1.device)
        return max(1, torch.cuda.max_memory_allocated(x1.device) - before), out
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        # no hooks on TorchScript (the model is often wrapped, e.g. in ScoresModel):
        # assume activations of a typical CNN's early layers
        return 64 * nbytes(x1), model(x1)
    rec = record_calls(model, x1)
    sizes: List[Tuple[int, int]] = [(nbytes(c.inputs), nbytes(c.output)) for c in rec.calls if c.leaf]
    return peak_estimate(sizes, nbytes(x1)), rec.output

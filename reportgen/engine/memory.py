"""Peak activation bytes of one sample's forward pass: what batch sizes are planned from.

Occlusion sizes its batches of occluded copies with it (:func:`probe`, or
:func:`probe_shapes` where a run on the meta device works: shapes only, no
arithmetic), and the incremental engine estimates the same number from its
cached clean pass (:func:`peak_estimate` over its graph's values).
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import torch
from torch import nn

from reportgen.model.hooks import record_calls


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
    return _recorded_peak(model, x1)


def _recorded_peak(model: nn.Module, x1: torch.Tensor) -> Tuple[int, Any]:
    """Peak bytes from every leaf module's input and output sizes, and the output."""
    rec = record_calls(model, x1)
    sizes: List[Tuple[int, int]] = [(nbytes(c.inputs), nbytes(c.output)) for c in rec.calls if c.leaf]
    return peak_estimate(sizes, nbytes(x1)), rec.output


class _Call(nn.Module):
    """Lets ``torch.func.functional_call`` swap ``module``'s weights while ``fn`` runs."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def on_meta(module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``module``'s parameters and buffers, and the tensors in ``args``,
    replaced by meta tensors of the same shapes: shapes flow, nothing is computed
    (milliseconds for a ResNet-50). The module itself is left as it was.

    Raises what the run raises: an op without a meta kernel, a tensor made on a real
    device inside ``forward``, data-dependent Python. TorchScript cannot be run this way
    (ValueError); callers fall back to a real run.
    """
    if any(isinstance(m, torch.jit.ScriptModule) for m in module.modules()):
        raise ValueError("TorchScript modules cannot run on the meta device")
    runner = _Call(module, fn)
    meta = {k: torch.empty_like(v, device="meta") for k, v in
            list(runner.named_parameters()) + list(runner.named_buffers())}
    args = tuple(a.to("meta") if torch.is_tensor(a) else a for a in args)
    with torch.no_grad():
        return torch.func.functional_call(runner, meta, args)


def probe_shapes(model: nn.Module, x1: torch.Tensor) -> Tuple[int, Any]:
    """:func:`probe`'s CPU estimate from a run on the meta device: the same peak bytes (they
    depend on shapes only) and the output as meta tensors, at no forward pass's cost.
    Raises where :func:`on_meta` does."""
    return on_meta(model, lambda x: _recorded_peak(model, x), x1)

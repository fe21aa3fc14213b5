"""How fast this machine runs this model: seconds per image, forward and forward + backward.

Measured once at the start of a build on the real input size (the first probe,
repeated), so the budget planner (``reportgen.engine.budget``) can price
every setting in seconds. Cheap by construction: one untimed warm-up pass of
one image (first calls pay for kernel selection, allocator growth and lazy
imports: on EfficientNet-Lite0 under load the first pass took 2.2 s, ten
times a steady one, and a plan priced from it dropped every setting to its
last rung), then one timed pass of one image, then, when that left room,
one forward and one forward + backward pass of a small batch whose size is
picked so the timed passes stay near ``MEASURE_FRACTION`` of the budget.
When the single timed pass already took that share, it is the measurement
(steady state, so fair) and the backward pass is priced by the usual ratio.
The backward pass goes to the input only (``torch.autograd.grad``): no
parameter gradient is stored, the model is left as it was (eval mode
restored, no hook).

Timings are noisy; :func:`stored` / :func:`store` keep one measurement per
architecture, input size, device and thread count in the cache folder, and
``budget.stable`` keeps it while new measurements stay close, so rebuilding
on the same machine plans the same settings.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn

from reportgen.atomic import atomic_write
from reportgen.engine.budget import BACKWARD_RATIO, Throughput
from reportgen.model.hooks import eval_mode
from reportgen.model.outputs import OutputKey, select_output

MEASURE_FRACTION = 0.02     # of the budget, for the timed passes (the untimed warm-up comes on top)
MAX_BATCH = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def measure(model: nn.Module, example: torch.Tensor, budget_s: float, output_key: OutputKey = None) -> Throughput:
    """Seconds per image of ``model`` on inputs like ``example`` (1, C, H, W), on its device."""
    device = example.device
    x1 = example[:1].detach()

    def forward(x: torch.Tensor) -> None:
        with torch.no_grad():
            select_output(model(x), output_key)

    def forward_backward(x: torch.Tensor) -> None:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            scores = select_output(model(x), output_key)
            torch.autograd.grad(scores.max(dim=1).values.sum(), x)

    with eval_mode(model):
        forward(x1)                                  # warm-up: first-call costs, never the measurement
        one = _timed(lambda: forward(x1), device)
        if one > MEASURE_FRACTION * budget_s:
            # one steady pass already took the measurement's share: take it, and the usual
            # backward/forward ratio, rather than spend more of the budget on timing
            return Throughput(forward_s=one, backward_s=BACKWARD_RATIO * one, batch=1, device=device.type,
                              source="measured")
        # forward + forward/backward of b images cost about 4 b single passes
        b = int(max(1, min(MAX_BATCH, (MEASURE_FRACTION * budget_s) // max(4 * one, 1e-9))))
        xb = x1.expand(b, *x1.shape[1:]).contiguous()
        fwd = _timed(lambda: forward(xb), device) / b
        try:
            bwd = _timed(lambda: forward_backward(xb), device) / b
        except RuntimeError:   # no gradient reaches the input (a frozen or integer model): the usual ratio
            bwd = BACKWARD_RATIO * fwd
    return Throughput(forward_s=fwd, backward_s=max(bwd, fwd), batch=b, device=device.type, source="measured")


def _path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "throughput" / f"{key}.json"


def stored(cache_dir: Path, key: str) -> Optional[Throughput]:
    """The measurement kept under ``key``, or None."""
    try:
        d = json.loads(_path(cache_dir, key).read_text())
        return Throughput(float(d["forward_s"]), float(d["backward_s"]), int(d["batch"]), str(d["device"]),
                          "stored")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(cache_dir: Path, key: str, t: Throughput) -> None:
    """Keep ``t`` under ``key``; a read-only cache folder is no error."""
    path = _path(cache_dir, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"forward_s": t.forward_s, "backward_s": t.backward_s, "batch": t.batch,
                                       "device": t.device}))
    except OSError:
        pass


def drop(cache_dir: Path, key: str) -> bool:
    """Forget the measurement kept under ``key`` (a plan it priced overshot); True when one was kept."""
    try:
        _path(cache_dir, key).unlink()
        return True
    except OSError:
        return False


def threads_for(device: torch.device, macs: Optional[float], small: float) -> Optional[int]:
    """Intra-op CPU threads for work of ``macs`` multiply-accumulates a call: one on the CPU when it
    is at most ``small``, else None (torch's own count, as when ``macs`` could not be counted).

    Short kernels are too short to share: threads spend the time synchronizing, and on a busy
    machine (a CI runner, a laptop in a call) waiting for a core. The demo's model on two busy
    cores: CAM, gradients, occlusion, top-k and embeddings took 35 s of CPU on two threads, 8.5 s
    on one.
    """
    return 1 if device.type == "cpu" and macs is not None and macs <= small else None


@contextlib.contextmanager
def cpu_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (None: unchanged), then restore the count.

    Tiny models (tests, toy nets) spend more time synchronizing threads than
    computing; on a busy machine one thread is ten times faster for them.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

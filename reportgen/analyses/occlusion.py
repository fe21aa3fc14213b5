"""Occlusion sensitivity (Zeiler & Fergus, 2014): how much the target's probability drops
when a window of the image is hidden.

Output convention (SPEC.md, ``occlusion``): per pixel, the mean over the
windows that cover it of ``p(target | image) - p(target | occluded image)``,
``p`` the softmax probability. Positive = hiding this pixel hurts the target.

Window placement follows captum's ``Occlusion`` so users can move between the
two: along each axis windows start at ``0, s, 2s, ...`` for
``ceil((H - h) / s) + 1`` positions, the last one clipped at the image edge
(so every pixel is covered when ``stride <= window``). With ``stride > window``
(captum refuses it) the pixels between windows are covered by none and get 0.

Occluded copies are evaluated in batches sized from a memory budget (one probe
pass measures what one sample costs), so batching changes speed, never results.
``incremental=True`` recomputes only the activations a patch can change
(``reportgen.analyses.incremental``, after Krypton); it is exact up to float
rounding and needs a torch.fx-traceable model.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from reportgen.analyses.blur import gaussian_blur
from reportgen.analyses.incremental import IncrementalEngine, trace
from reportgen.analyses.memory import probe
from reportgen.hooks import eval_mode
from reportgen.models import model_device
from reportgen.outputs import OutputKey, ScoresModel, select_output

Size2 = Union[int, Tuple[int, int], Sequence[int]]
Target = Union[None, int, Sequence[int], torch.Tensor, np.ndarray]
Baseline = Union[str, float, int, Sequence[float], torch.Tensor]

BASELINES = ("mean", "zero", "grey", "gray", "blur")

# CPU: at most this share of the RAM the OS reports as available, and never
# more than CPU_BUDGET_CAP, for the occluded copies and their activations.
# Past ~100 samples a CPU forward gains nothing from a bigger batch, while
# other processes (and our own numpy results) still need the memory.
CPU_BUDGET_FRACTION = 0.25
CPU_BUDGET_CAP = 2 << 30
# CUDA: this share of the free device memory (the allocator and cuDNN
# workspaces want the rest).
CUDA_BUDGET_FRACTION = 0.5
# incremental="auto" uses the incremental engine when its planned conv work is
# at most this share of a full pass; above it the cutting and pasting is not
# worth it (Krypton makes the same call per model).
AUTO_MAX_COST = 0.75


@dataclass
class OcclusionDetails:
    """Everything one occlusion run computed; all numpy, nothing on a device."""

    sensitivity: np.ndarray      # (N, H, W) float32, the SPEC.md map
    prob_map: np.ndarray         # (N, nY, nX) float32, p(target | occluded) per occluder position
    top_class: np.ndarray        # (N, nY, nX) int64, argmax class per occluder position
    positions: np.ndarray        # (nY * nX, 2) int, top-left (y, x) of each window, row-major
    grid: Tuple[int, int]        # (nY, nX)
    targets: np.ndarray          # (N,) int64, the class explained per image
    base_prob: np.ndarray        # (N,) float32, p(target | image)
    window: Tuple[int, int]
    stride: Tuple[int, int]
    baseline: str                # what the occluder was filled with, in words
    forward_passes: int          # images run through the model (clean + occluded)
    batches: int                 # forward calls those took
    batch_size: int
    incremental: bool
    notes: Dict[str, Any] = field(default_factory=dict)

    def meta(self) -> Dict[str, Any]:
        """JSON-able summary for report.json (auto choices included so users can pin them)."""
        return {"window": list(self.window), "stride": list(self.stride), "baseline": self.baseline,
                "grid": list(self.grid), "targets": self.targets.tolist(),
                "base_prob": [round(float(p), 6) for p in self.base_prob],
                "forward_passes": self.forward_passes, "batches": self.batches,
                "batch_size": self.batch_size, "incremental": self.incremental, **self.notes}


# ---------------------------------------------------------------- arguments

def _pair(v: Size2, name: str) -> Tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    try:
        a, b = (int(t) for t in v)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"occlusion: {name} must be an int or (height, width), got {v!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"occlusion: {name} must be positive, got {(a, b)}")
    return a, b


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Start offsets along one axis, captum's placement (see module docstring)."""
    n = math.ceil((size - window) / stride) + 1
    starts = np.arange(n) * stride
    return starts[starts < size]


def _check_images(images: Any) -> torch.Tensor:
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"occlusion: images must be a float tensor (N, C, H, W), got {shape}")
    if images.shape[0] == 0:
        raise ValueError("occlusion: images is empty")
    return images


def _targets(target: Target, n: int, k: int) -> Optional[torch.Tensor]:
    """Class index per image (None: the predicted class, filled in later); clear errors."""
    if target is None:
        return None
    t = torch.as_tensor(np.asarray(target.cpu() if torch.is_tensor(target) else target)).reshape(-1).long()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"occlusion: got {t.numel()} targets for {n} images")
    bad = [int(v) for v in t if not 0 <= int(v) < k]
    if bad:
        raise ValueError(f"occlusion: target {bad[0]} out of range: the model has {k} classes (0..{k - 1})")
    return t


def make_baseline(images: torch.Tensor, baseline: Baseline, window: Tuple[int, int]) -> Tuple[torch.Tensor, str]:
    """What fills the occluder, broadcastable to (N, C, H, W), and a description.

    * ``"mean"``: each image's own per-channel mean (a neutral colour for that image);
    * ``"zero"``: 0 in the model's input space (the dataset mean if inputs are normalized);
    * ``"grey"``/``"gray"``: the constant 0.5 *in the tensor's own units* -- mid-grey
      for un-normalized [0, 1] inputs. We cannot know the preprocessing here; a caller
      that does passes ``(0.5 - mean) / std`` as a per-channel sequence;
    * ``"blur"``: the image Gaussian-blurred with sigma = max(window) / 4, so the window
      loses detail at its own scale but keeps its colours;
    * a float, a per-channel sequence, or a tensor broadcastable to the images.
    """
    n, c = images.shape[:2]
    if isinstance(baseline, str):
        name = baseline.lower()
        if name == "mean":
            return images.mean(dim=(2, 3), keepdim=True), "mean"
        if name == "zero":
            return images.new_zeros(1, 1, 1, 1), "zero"
        if name in ("grey", "gray"):
            return images.new_full((1, 1, 1, 1), 0.5), "grey (0.5)"
        if name == "blur":
            sigma = max(window) / 4.0
            return gaussian_blur(images, sigma), f"blur (sigma {sigma:g})"
        raise ValueError(f"occlusion: unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}, "
                         "a number, a per-channel sequence or a tensor")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return images.new_full((1, 1, 1, 1), float(baseline)), f"constant ({float(baseline):g})"
    t = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    if t.dim() == 1:
        if t.numel() != c:
            raise ValueError(f"occlusion: baseline has {t.numel()} values for {c} channels")
        return t.view(1, c, 1, 1), "per-channel constant"
    try:
        torch.broadcast_shapes(t.shape, images.shape)
    except RuntimeError:
        raise ValueError(f"occlusion: baseline shape {tuple(t.shape)} does not broadcast to "
                         f"{tuple(images.shape)}") from None
    return t, "tensor"


# ---------------------------------------------------------------- batch size

def default_memory_budget(device: torch.device) -> int:
    """Bytes we allow the occluded batch to take (see the constants above for why)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    avail = _available_ram()
    return int(min(avail * CPU_BUDGET_FRACTION, CPU_BUDGET_CAP))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def balanced_chunks(total: int, max_size: int) -> List[Tuple[int, int]]:
    """[start, stop) chunks of at most max_size, as equal as possible (no tiny last batch)."""
    n = max(1, math.ceil(total / max(1, max_size)))
    size = math.ceil(total / n)
    return [(i, min(i + size, total)) for i in range(0, total, size)]


# ---------------------------------------------------------------- main

def occlusion(model: nn.Module, images: torch.Tensor, target: Target = None, window: Size2 = 16,
              stride: Size2 = 8, baseline: Baseline = "mean", output_key: OutputKey = None,
              memory_budget: Optional[int] = None, incremental: Union[bool, str] = False,
              return_top_class: bool = False):
    """The (N, H, W) float32 occlusion map of SPEC.md.

    With ``return_top_class`` also the (N, nY, nX) most likely class per
    occluder position, as a tuple ``(sensitivity, top_class)``.
    See :func:`occlusion_details` for the parameters.
    """
    d = occlusion_details(model, images, target=target, window=window, stride=stride, baseline=baseline,
                          output_key=output_key, memory_budget=memory_budget, incremental=incremental)
    return (d.sensitivity, d.top_class) if return_top_class else d.sensitivity


def occlusion_details(model: nn.Module, images: torch.Tensor, target: Target = None, window: Size2 = 16,
                      stride: Size2 = 8, baseline: Baseline = "mean", output_key: OutputKey = None,
                      memory_budget: Optional[int] = None,
                      incremental: Union[bool, str] = False) -> OcclusionDetails:
    """Occlusion sensitivity plus the per-position probability and top-class maps.

    ``window``/``stride``: int or (h, w) in input pixels. ``baseline``: see
    :func:`make_baseline`. ``output_key``: which part of the model's output
    holds the class scores (``reportgen.outputs.select_output``).
    ``memory_budget``: bytes for one batch of occluded copies (default: from
    free memory, :func:`default_memory_budget`). ``incremental``: False (plain batched
    passes), True (the incremental engine; ValueError if the model cannot be
    traced) or "auto" (incremental when traceable and its plan saves enough).
    """
    images = _check_images(images)
    win, st = _pair(window, "window"), _pair(stride, "stride")
    n, c, h, w = images.shape
    if win[0] > h or win[1] > w:
        raise ValueError(f"occlusion: window {win} is larger than the image ({h}, {w})")
    if incremental not in (False, True, "auto"):
        raise ValueError(f"occlusion: incremental must be False, True or 'auto', got {incremental!r}")
    device = model_device(model, images.device)
    images = images.to(device)
    base, base_desc = make_baseline(images, baseline, win)
    ys, xs = window_starts(h, win[0], st[0]), window_starts(w, win[1], st[1])
    starts = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)

    scores = ScoresModel(model, output_key)
    with eval_mode(model), torch.no_grad():
        engine, notes = _pick_engine(model, images, win, starts, incremental)
        if engine is None:
            per_sample, logits0 = probe(scores, images[:1])
        else:
            per_sample, logits0 = engine.peak_bytes(), select_output(engine.output, output_key)
        if logits0.dim() != 2:
            raise ValueError(f"occlusion: the model's class scores have shape {tuple(logits0.shape)}, "
                             "expected (N, classes)")
        targets = _targets(target, n, logits0.shape[1])
        budget = memory_budget if memory_budget is not None else default_memory_budget(device)
        batch = max(1, int(budget // per_sample))
        if engine is None:
            rest = [scores(images[1 + a:1 + b]) for a, b in balanced_chunks(n - 1, batch)] if n > 1 else []
            clean_logits = torch.cat([logits0] + rest)
            targets = clean_logits.argmax(dim=1).cpu() if targets is None else targets
            base_prob, _ = _prob_and_top(clean_logits, targets)
            probs, top, batches = _run_full(scores, images, base, targets, win, starts, batch)
            batches += 1 + len(rest)
        else:
            probs, top, base_prob, targets, batches = _run_incremental(
                engine, images, base, targets, win, starts, batch, output_key)
    sens = _accumulate(base_prob[:, None] - probs, starts, win, (h, w))
    grid = (len(ys), len(xs))
    return OcclusionDetails(
        sensitivity=sens, prob_map=probs.reshape(n, *grid).astype(np.float32),
        top_class=top.reshape(n, *grid), positions=starts, grid=grid,
        targets=targets.cpu().numpy().astype(np.int64), base_prob=base_prob.astype(np.float32),
        window=win, stride=st, baseline=base_desc, forward_passes=n + n * len(starts),
        batches=batches, batch_size=batch,
        incremental=engine is not None, notes=notes)


def _prob_and_top(logits: torch.Tensor, t: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """p(target) per row (float64 softmax, so tiny differences survive) and the argmax class."""
    p = torch.softmax(logits.double(), dim=1)
    t = t.to(logits.device).view(-1, 1)
    return p.gather(1, t).squeeze(1).cpu().numpy(), logits.argmax(dim=1).cpu().numpy()


def _run_full(scores: nn.Module, images: torch.Tensor, base: torch.Tensor, targets: torch.Tensor,
              win: Tuple[int, int], starts: np.ndarray, batch: int):
    """Plain batched occlusion: occluded copies of all images, ``batch`` per forward call."""
    n = images.shape[0]
    P = len(starts)
    base_full = base.expand_as(images)
    probs = np.empty(n * P)
    top = np.empty(n * P, dtype=np.int64)
    chunks = balanced_chunks(n * P, batch)
    for a, b in chunks:
        img = torch.arange(a, b) // P
        xb = images[img.to(images.device)]                  # a copy
        for j, job in enumerate(range(a, b)):
            i, (y, x) = job // P, starts[job % P]
            xb[j, :, y:y + win[0], x:x + win[1]] = base_full[i, :, y:y + win[0], x:x + win[1]]
        probs[a:b], top[a:b] = _prob_and_top(scores(xb), targets[img])
    return probs.reshape(n, P), top.reshape(n, P), len(chunks)


def _pick_engine(model, images, win, starts, incremental):
    """The incremental engine if asked for (and, for "auto", worth it), else None; notes say why.

    The engine's clean pass of image 0 doubles as the probe pass (its cached
    activations give the per-sample memory), so choosing costs no extra pass.
    """
    if incremental is False:
        return None, {}
    try:
        engine = IncrementalEngine(trace(model))
        engine.clean_pass(images[:1])
        engine.build_plan(win, starts)
    except Exception as e:   # untraceable, or an op the interpreter trips on: "auto" falls back
        if incremental is True:
            raise
        return None, {"incremental_skipped": f"{type(e).__name__}: {e}"}
    cost = engine.cost_fraction()
    notes = {"incremental_cost": round(cost, 4)}
    if incremental == "auto" and cost > AUTO_MAX_COST:
        notes["incremental_skipped"] = f"planned work {cost:.0%} of a full pass"
        return None, notes
    return engine, notes


def _run_incremental(engine, images, base, targets, win, starts, batch, output_key):
    """Per image: one clean pass (cached), then the occluded positions in batches."""
    n, P = images.shape[0], len(starts)
    base_full = base.expand_as(images)
    probs = np.empty((n, P))
    top = np.empty((n, P), dtype=np.int64)
    base_prob = np.empty(n)
    chosen = torch.empty(n, dtype=torch.long)
    plan = engine.plan[engine.input_node]
    chunks = balanced_chunks(P, batch)
    for i in range(n):
        out = engine.output if i == 0 else engine.clean_pass(images[i:i + 1])   # image 0: done when planning
        logits = select_output(out, output_key)
        chosen[i] = logits.argmax(dim=1)[0] if targets is None else targets[i]
        base_prob[i:i + 1], _ = _prob_and_top(logits, chosen[i:i + 1])
        for a, b in chunks:
            idx = np.arange(a, b)
            rect = _input_rects(images[i], base_full[i], plan, idx)
            logits = select_output(engine.run(rect, idx), output_key)
            probs[i, a:b], top[i, a:b] = _prob_and_top(logits, chosen[i].expand(b - a))
    return probs, top, base_prob, chosen, n * (1 + len(chunks))


def _input_rects(x: torch.Tensor, base: torch.Tensor, plan, idx: np.ndarray) -> torch.Tensor:
    """Each occluded image's input rectangle: the image at the stored corner, window filled."""
    (h, w), off, lo, hi = plan.size, plan.off[idx], plan.lo[idx], plan.hi[idx] + 1
    rect = x.new_empty((len(idx), x.shape[0], h, w))
    for j in range(len(idx)):
        oy, ox = off[j]
        rect[j] = x[:, oy:oy + h, ox:ox + w]
        rect[j, :, lo[j, 0] - oy:hi[j, 0] - oy, lo[j, 1] - ox:hi[j, 1] - ox] = \
            base[:, lo[j, 0]:hi[j, 0], lo[j, 1]:hi[j, 1]]
    return rect


def _accumulate(diff: np.ndarray, starts: np.ndarray, win: Tuple[int, int], hw: Tuple[int, int]) -> np.ndarray:
    """Mean of each pixel's covering windows' differences; 0 where no window covers it."""
    n = diff.shape[0]
    total = np.zeros((n,) + hw)
    count = np.zeros(hw)
    for p, (y, x) in enumerate(starts):
        total[:, y:y + win[0], x:x + win[1]] += diff[:, p, None, None]
        count[y:y + win[0], x:x + win[1]] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)

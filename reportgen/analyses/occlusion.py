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

Two engines compute the same map. The plain one runs every occluded copy
through the model, the clean images in the same batches. The incremental one
(``reportgen.engine.incremental``, after Krypton) recomputes only the
activations a patch can change; it is exact up to float rounding and needs a
torch.fx-traceable model. ``incremental="auto"`` (the default) runs it where its
plan saves enough work. :func:`occlusion_cost` says what either costs, in forward
passes, without running anything.

Batches are capped by a memory budget (what one sample costs is measured on the
meta device: shapes, no arithmetic) and, by default, sized within that cap by
measured throughput (``reportgen.engine.batching``): the probed chunks are
real work. Batching changes speed and float rounding, never results.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from reportgen.engine.batching import START, FixedBatcher, ThroughputBatcher
from reportgen.engine.blur import gaussian_blur
from reportgen.engine.incremental import IncrementalEngine, trace
from reportgen.engine.memory import probe, probe_shapes
from reportgen.model.hooks import eval_mode
from reportgen.model.loading import model_device
from reportgen.model.outputs import OutputKey, ScoresModel, select_output

Size2 = Union[int, Tuple[int, int], Sequence[int]]
Target = Union[None, int, Sequence[int], torch.Tensor, np.ndarray]
Baseline = Union[str, float, int, Sequence[float], torch.Tensor]
BatchSize = Union[str, int]

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


def _batcher(batch_size: BatchSize, cap: int, device: torch.device) -> Any:
    """What sizes the forward calls: by measured throughput ("auto"), the memory cap, or pinned."""
    if batch_size == "auto":
        return ThroughputBatcher(cap, start=START.get(device.type, START["cpu"]))
    return FixedBatcher(cap if batch_size == "memory" else int(batch_size))


def _batch_notes(batch_size: BatchSize, batcher: Any, cap: int) -> Dict[str, Any]:
    notes: Dict[str, Any] = {"batch_policy": batch_size if isinstance(batch_size, str) else "fixed",
                             "batch_cap": cap}
    if isinstance(batcher, ThroughputBatcher):
        notes["batch_ms_per_sample"] = {str(s): round(t * 1e3, 3) for s, t in sorted(batcher.measured.items())}
    return notes


# ---------------------------------------------------------------- cost

@dataclass(frozen=True)
class OcclusionCost:
    """What an occlusion run costs, planned without running it (:func:`occlusion_cost`).

    The unit is one forward pass of one image through the whole model.
    """

    images: int
    positions: int                        # occluder positions per image (nY * nX)
    plain: int                            # passes of the plain engine: exactly its ``forward_passes``
    incremental: Optional[float]          # pass equivalents of the incremental engine; None: it cannot run
    incremental_fraction: Optional[float]  # one incremental pass's conv/linear multiply-adds / a full pass's
    auto: str                             # what incremental="auto" runs: "incremental" or "plain"
    reason: str = ""                      # why auto runs the plain engine, when it does

    def passes(self, engine: str = "auto") -> float:
        """Pass equivalents of ``engine``: "plain", "incremental" or "auto"."""
        if engine == "auto":
            engine = self.auto
        if engine == "plain":
            return float(self.plain)
        if engine == "incremental" and self.incremental is not None:
            return self.incremental
        raise ValueError(f"occlusion: no {engine!r} engine for this model ({self.reason or 'valid: plain'})")


def occlusion_cost(model: nn.Module, inputs: Union[torch.Tensor, Sequence[int]], window: Size2 = 16,
                   stride: Size2 = 8) -> OcclusionCost:
    """The forward-pass cost of ``occlusion(model, inputs, window=..., stride=...)``, per engine.

    ``inputs``: the images (N, C, H, W) or just that shape. Nothing runs on real
    data: the model is traced and run once on the meta device (shapes only;
    tens of milliseconds for a ResNet-50), so a planner can try many windows
    and strides. The plain engine runs ``N * (1 + positions)`` images, exactly.
    The incremental engine runs each image once in full and every occluded copy at
    ``incremental_fraction`` of the multiply-adds: ``N * (1 + positions * fraction)``.
    That counts arithmetic only; the cutting and pasting costs a little more, and
    memory traffic saved a little less (bench/README.md: measured time per pass was
    within ~0.2x of the fraction on a CPU).
    """
    shape = tuple(inputs.shape) if torch.is_tensor(inputs) else tuple(int(v) for v in inputs)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"occlusion: inputs must be images (N, C, H, W) or that shape, got {shape}")
    n, c, h, w = shape
    win, st = _pair(window, "window"), _pair(stride, "stride")
    if win[0] > h or win[1] > w:
        raise ValueError(f"occlusion: window {win} is larger than the image ({h}, {w})")
    starts = _window_grid((h, w), win, st)
    if torch.is_tensor(inputs):
        x1 = inputs[:1]
    else:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        x1 = torch.zeros((1, c, h, w), dtype=dtype, device=model_device(model, torch.device("cpu")))
    with eval_mode(model), torch.no_grad():
        fraction, skip = _auto_plan(model, x1, win, starts)
    P = len(starts)
    return OcclusionCost(images=n, positions=P, plain=n * (1 + P),
                         incremental=None if fraction is None else n * (1 + P * fraction),
                         incremental_fraction=fraction, auto="plain" if skip else "incremental", reason=skip)


def _auto_plan(model: nn.Module, x1: torch.Tensor, win: Tuple[int, int],
               starts: np.ndarray) -> Tuple[Optional[float], str]:
    """The incremental plan's share of a full pass's multiply-adds (None if it cannot run)
    and why incremental="auto" would not run it ("" when it would).

    Planned on the model as it is (no BatchNorm folding: folding removes per-pixel
    nodes only, so the convs, and the share, are the same) with shapes from the meta device.
    """
    try:
        fraction = _planned_engine(model, x1, win, starts, fuse_bn=False).cost_fraction()
    except Exception as e:  # untraceable, or an op the interpreter trips on
        return None, f"{type(e).__name__}: {e}"
    return fraction, f"planned work {fraction:.0%} of a full pass" if fraction > AUTO_MAX_COST else ""


def _planned_engine(model: nn.Module, x1: torch.Tensor, win: Tuple[int, int], starts: np.ndarray,
                    fuse_bn: bool) -> IncrementalEngine:
    engine = IncrementalEngine(trace(model, fuse_bn=fuse_bn))
    engine.shape_pass(x1)
    engine.build_plan(win, starts)
    return engine


def _window_grid(hw: Tuple[int, int], win: Tuple[int, int], st: Tuple[int, int]) -> np.ndarray:
    """(nY * nX, 2) top-left corners of every window, row-major."""
    ys, xs = window_starts(hw[0], win[0], st[0]), window_starts(hw[1], win[1], st[1])
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)


# ---------------------------------------------------------------- main

def occlusion(model: nn.Module, images: torch.Tensor, target: Target = None, window: Size2 = 16,
              stride: Size2 = 8, baseline: Baseline = "mean", output_key: OutputKey = None,
              memory_budget: Optional[int] = None, incremental: Union[bool, str] = "auto",
              batch_size: BatchSize = "auto", return_top_class: bool = False):
    """The (N, H, W) float32 occlusion map of SPEC.md.

    With ``return_top_class`` also the (N, nY, nX) most likely class per
    occluder position, as a tuple ``(sensitivity, top_class)``.
    See :func:`occlusion_details` for the parameters.
    """
    d = occlusion_details(model, images, target=target, window=window, stride=stride, baseline=baseline,
                          output_key=output_key, memory_budget=memory_budget, incremental=incremental,
                          batch_size=batch_size)
    return (d.sensitivity, d.top_class) if return_top_class else d.sensitivity


def occlusion_details(model: nn.Module, images: torch.Tensor, target: Target = None, window: Size2 = 16,
                      stride: Size2 = 8, baseline: Baseline = "mean", output_key: OutputKey = None,
                      memory_budget: Optional[int] = None, incremental: Union[bool, str] = "auto",
                      batch_size: BatchSize = "auto") -> OcclusionDetails:
    """Occlusion sensitivity plus the per-position probability and top-class maps.

    ``window``/``stride``: int or (h, w) in input pixels. ``baseline``: see
    :func:`make_baseline`. ``output_key``: which part of the model's output
    holds the class scores (``reportgen.model.outputs.select_output``).
    ``memory_budget``: bytes for one batch of occluded copies (default: from
    free memory, :func:`default_memory_budget`); it caps the batch size.
    ``incremental``: "auto" (the incremental engine when the model traces and its
    plan saves enough, see :func:`occlusion_cost`), True (the incremental engine;
    ValueError if the model cannot be traced) or False (plain batched passes).
    ``batch_size``: "auto" (by measured throughput, up to the memory cap,
    ``reportgen.engine.batching``), "memory" (the cap itself) or an int.
    Neither engine nor batch size changes the result beyond float rounding.
    """
    images = _check_images(images)
    win, st = _pair(window, "window"), _pair(stride, "stride")
    n, c, h, w = images.shape
    if win[0] > h or win[1] > w:
        raise ValueError(f"occlusion: window {win} is larger than the image ({h}, {w})")
    if incremental not in (False, True, "auto"):
        raise ValueError(f"occlusion: incremental must be False, True or 'auto', got {incremental!r}")
    if batch_size not in ("auto", "memory") and not (
            isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ValueError(f"occlusion: batch_size must be 'auto', 'memory' or a positive int, got {batch_size!r}")
    device = model_device(model, images.device)
    images = images.to(device)
    base, base_desc = make_baseline(images, baseline, win)
    starts = _window_grid((h, w), win, st)
    grid = (len(window_starts(h, win[0], st[0])), len(window_starts(w, win[1], st[1])))

    scores = ScoresModel(model, output_key)
    with eval_mode(model), torch.no_grad():
        engine, notes = _pick_engine(model, images[:1], win, starts, incremental)
        known = None
        if engine is None:
            per_sample, out0, known = _probe(scores, images[:1])
        else:
            per_sample, out0 = engine.peak_bytes(), select_output(engine.output, output_key)
        if out0.dim() != 2:
            raise ValueError(f"occlusion: the model's class scores have shape {tuple(out0.shape)}, "
                             "expected (N, classes)")
        targets = _targets(target, n, out0.shape[1])
        budget = memory_budget if memory_budget is not None else default_memory_budget(device)
        cap = max(1, int(budget // per_sample))
        batcher = _batcher(batch_size, cap, device)
        if engine is None:
            probs, top, base_prob, targets, batches = _run_plain(scores, images, base, targets, win, starts,
                                                                 batcher, known)
        else:
            probs, top, base_prob, targets, batches = _run_incremental(
                engine, images, base, targets, starts, batcher, output_key)
    notes.update(_batch_notes(batch_size, batcher, cap))
    sens = _accumulate(base_prob[:, None] - probs, starts, win, (h, w))
    return OcclusionDetails(
        sensitivity=sens, prob_map=probs.reshape(n, *grid).astype(np.float32),
        top_class=top.reshape(n, *grid), positions=starts, grid=grid,
        targets=targets.cpu().numpy().astype(np.int64), base_prob=base_prob.astype(np.float32),
        window=win, stride=st, baseline=base_desc, forward_passes=n + n * len(starts),
        batches=batches, batch_size=batcher.batch_size,
        incremental=engine is not None, notes=notes)


def _probe(scores: nn.Module, x1: torch.Tensor) -> Tuple[int, torch.Tensor, Optional[torch.Tensor]]:
    """Peak bytes per sample and the output's shape; the first image's scores too if a pass ran.

    On a CPU from the meta device (no pass: a batch-1 pass costs several batched
    samples' time there). On CUDA, and where the meta run fails (TorchScript, an op
    without a meta kernel), one real pass of the first image (on CUDA the allocator's
    peak is exact), whose scores are then known clean logits, so the pass is not wasted.
    """
    if not x1.is_cuda:
        try:
            per_sample, out = probe_shapes(scores, x1)
            return per_sample, out, None
        except Exception:  # noqa: BLE001 - anything the meta device cannot run
            pass
    per_sample, out = probe(scores, x1)
    return per_sample, out, out


def _prob_and_top(logits: torch.Tensor, t: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """p(target) per row (float64 softmax, so tiny differences survive) and the argmax class."""
    p = torch.softmax(logits.double(), dim=1)
    t = t.to(logits.device).view(-1, 1)
    return p.gather(1, t).squeeze(1).cpu().numpy(), logits.argmax(dim=1).cpu().numpy()


def _run_plain(scores: nn.Module, images: torch.Tensor, base: torch.Tensor, targets: Optional[torch.Tensor],
               win: Tuple[int, int], starts: np.ndarray, batcher: Any, known: Optional[torch.Tensor]):
    """Plain batched occlusion: the clean images, then every occluded copy, in the batcher's chunks.

    One job list, clean images first (all but image 0 when its scores are ``known``),
    so every forward call is a full batch and each image's clean scores (and so its
    target) are in hand before its first occluded copy is scored.
    """
    n, P = images.shape[0], len(starts)
    base_full = base.expand_as(images)
    clean = np.arange(0 if known is None else 1, n)
    m = len(clean)
    probs = np.empty(n * P)
    top = np.empty(n * P, dtype=np.int64)
    base_prob = np.empty(n)
    chosen = torch.empty(n, dtype=torch.long) if targets is None else targets.clone()
    if known is not None:
        _clean_scores(known, np.zeros(1, dtype=np.int64), targets is None, chosen, base_prob)
    batches = 0 if known is None else 1
    for a, b in batcher.chunks(m + n * P):
        jobs = np.arange(a, b)
        k = int(np.count_nonzero(jobs < m))                        # clean rows come first
        occluded = jobs[k:] - m
        img = np.concatenate([clean[jobs[:k]], occluded // P])
        xb = images[torch.as_tensor(img, device=images.device)]   # a copy
        for j, job in enumerate(occluded, start=k):
            i, (y, x) = job // P, starts[job % P]
            xb[j, :, y:y + win[0], x:x + win[1]] = base_full[i, :, y:y + win[0], x:x + win[1]]
        logits = scores(xb)
        if k:
            _clean_scores(logits[:k], img[:k], targets is None, chosen, base_prob)
        if k < len(jobs):
            probs[occluded], top[occluded] = _prob_and_top(logits[k:], chosen[img[k:]])
        batches += 1
    return probs.reshape(n, P), top.reshape(n, P), base_prob, chosen, batches


def _clean_scores(logits: torch.Tensor, img: np.ndarray, predicted: bool, chosen: torch.Tensor,
                  base_prob: np.ndarray) -> None:
    """Fill in the target (the predicted class when ``predicted``) and p(target) of clean images ``img``."""
    idx = torch.as_tensor(img)
    if predicted:
        chosen[idx] = logits.argmax(dim=1).cpu()
    base_prob[img], _ = _prob_and_top(logits, chosen[idx])


def _pick_engine(model, x1, win, starts, incremental):
    """The incremental engine if asked for (and, for "auto", worth it), else None; notes say why.

    Planning runs on the meta device (:meth:`IncrementalEngine.shape_pass`), so
    choosing costs no forward pass; the share of work it plans is the one
    :func:`occlusion_cost` reports.
    """
    if incremental is False:
        return None, {}
    if incremental is True:
        engine = _planned_engine(model, x1, win, starts, fuse_bn=True)   # untraceable: raises
        return engine, {"incremental_cost": round(engine.cost_fraction(), 4)}
    cost, skip = _auto_plan(model, x1, win, starts)
    notes: Dict[str, Any] = {} if cost is None else {"incremental_cost": round(cost, 4)}
    if skip:
        return None, dict(notes, incremental_skipped=skip)
    try:
        return _planned_engine(model, x1, win, starts, fuse_bn=True), notes
    except Exception as e:  # noqa: BLE001 - folding tripped where the plain trace did not
        return None, dict(notes, incremental_skipped=f"{type(e).__name__}: {e}")


def _run_incremental(engine, images, base, targets, starts, batcher, output_key):
    """Per image: one clean pass (cached), then the occluded positions in the batcher's chunks."""
    n, P = images.shape[0], len(starts)
    base_full = base.expand_as(images)
    probs = np.empty((n, P))
    top = np.empty((n, P), dtype=np.int64)
    base_prob = np.empty(n)
    chosen = torch.empty(n, dtype=torch.long)
    plan = engine.plan[engine.input_node]
    batches = 0
    for i in range(n):
        logits = select_output(engine.clean_pass(images[i:i + 1]), output_key)
        chosen[i] = logits.argmax(dim=1)[0] if targets is None else targets[i]
        base_prob[i:i + 1], _ = _prob_and_top(logits, chosen[i:i + 1])
        batches += 1
        for a, b in batcher.chunks(P):
            idx = np.arange(a, b)
            rect = _input_rects(images[i], base_full[i], plan, idx)
            logits = select_output(engine.run(rect, idx), output_key)
            probs[i, a:b], top[i, a:b] = _prob_and_top(logits, chosen[i].expand(b - a))
            batches += 1
    return probs, top, base_prob, chosen, batches


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

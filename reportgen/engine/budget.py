"""Builds that fit a budget: what each automatic setting costs, and which settings fit.

A build has a time budget (seconds for the whole build) and a page budget
(bytes of ``index.html``). The expensive settings a spec leaves on ``auto`` are
*knobs*: a ladder of values, best first (the best is the setting every build
used before budgets, so it is also the most auto may choose), each with its
cost in image passes (:class:`Cost`: forward passes, and forward+backward
passes). A setting written in the spec is a knob of one value: it is honoured
as is, and its cost still counts. :func:`plan` turns the knobs, a
:class:`Throughput` (seconds per image pass, measured on the real model and
input size by ``reportgen.engine.throughput``) and the budget into choices:

1. every knob starts at its best value;
2. while the estimate exceeds the time left for sections, the knob whose current
   cost in seconds is the largest steps down one rung (ties: the earlier
   section, then the earlier knob), until the estimate fits or every knob is on
   its last rung (then the plan says it is ``over``).

So a model whose best settings fit gets exactly those, the costliest setting
gives way first, and the plan is a pure function of the throughput numbers:
inject them and it is deterministic. Timings are noisy, so :func:`stable`
keeps an earlier measurement while a new one stays within a factor of it
(hysteresis): rebuilding on the same machine keeps the same choices, and the
section cache (keyed on them) hits. A small model (up to SMALL_MODEL_MACS per
image, the demo's) is not timed at all: :func:`reference` prices it from its
MACs, so its settings never depend on how busy the machine is.

The page budget works the same way on bytes: :func:`page_shares` gives each
image-heavy section a share of the page, and a section draws fewer or smaller
pictures (:func:`channels_per_layer`, :func:`thumbnail_side`) when its share
asks for it. Nothing here runs a model or reads a clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# Default time budgets, seconds for the whole build (see the README, "Builds that fit a
# budget"): on CPU what a reviewer waits for in CI and what the demo takes; on a GPU the
# best settings of a ResNet-50-class model take a few seconds, so the budget only bites for
# models many times its cost.
DEFAULT_BUDGET_S = {"cpu": 90.0, "cuda": 60.0}
# Share of the budget kept for what is not estimated in passes: loading the model and the
# probes, tracing the architecture, encoding pictures, writing the page.
RESERVE_FRACTION = 0.25
# A new measurement within this factor of the stored one keeps the stored one.
HYSTERESIS = 1.5
# Models up to this many multiply-accumulates per image (CIFAR-scale nets, the demo's) are
# planned from their MACs at a fixed reference speed, never from a timing: their best
# settings fit any budget worth having, and a timing on a busy machine must not move them.
SMALL_MODEL_MACS = 1e8
# The reference speed: MACs per second of a forward pass, and seconds of overhead per image
# (a small model's pass is mostly overhead). CPU: two cores of a CI runner, a little busy.
REFERENCE_SPEED = {"cpu": (5e9, 1e-3), "cuda": (1e12, 1e-4)}
BACKWARD_RATIO = 3.0        # a forward + backward pass over a forward pass, when not timed
# A setting written in the spec is honoured; it is announced on stderr when its estimate
# exceeds this share of the budget (and LONG_MIN_S).
LONG_FRACTION = 0.25
LONG_MIN_S = 10.0
# A plan overshoots when its sections take more than this factor of their estimate, and at
# least OVERSHOOT_MIN_S more (a second's overhead on a tenth of a second estimated is no news).
OVERSHOOT_FACTOR = 1.5
OVERSHOOT_MIN_S = 5.0
# Page budget: 5 MB keeps a report quick to open and under the size forges and mail
# gateways take without complaint (above 10 MB the build warns: commands.build.SIZE_WARNING_BYTES).
DEFAULT_PAGE_MB = 5.0
# Share of the page budget kept for what no section shrinks: text, tables, the architecture
# graph, the theme, the audit sections' pictures (ResNet-50 with 200 dataset images: about
# 0.75 MB of them). Its page came out at 5.02 MB while top-k's patches took no share; with
# them in the shares it is 3.6 MB.
PAGE_RESERVE_FRACTION = 0.15

# Ladders, best (the pre-budget default) first.
IG_STEPS = (32, 24, 16, 12, 8, 6, 4)
SMOOTHGRAD_SAMPLES = (16, 12, 8, 6, 4)
FAITHFULNESS_STEPS = (32, 24, 16, 12, 8, 6, 4)
FEATUREVIZ_STEPS = (128, 96, 64, 48, 32)
OCCLUSION_WINDOWS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
OCCLUSION_STRIDES = (8, 12, 16, 24, 32, 48, 64, 96, 128)
OCCLUSION_MIN_GRID = 5          # auto never coarsens the occluder grid below 5 positions a side
ACTIVATION_CHANNELS = (32, 24, 16, 12, 8, 6, 4)
SHORTCUT_MAPS = (100, 64, 48, 32, 24, 16)          # attribution maps per class
SHORTCUT_TRANSPLANTS = (100, 64, 48, 32, 24, 16, 12, 8)   # images each cluster's region is pasted into
# (8 against 8 controls still lets Fisher's test reach p < 0.001 when every transplant flips)


@dataclass(frozen=True)
class Cost:
    """Image passes: ``forward`` without gradients, ``backward`` forward + backward."""

    forward: float = 0.0
    backward: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.forward * k, self.backward * k)

    __rmul__ = __mul__


@dataclass(frozen=True)
class Throughput:
    """Seconds per image for one forward pass and one forward + backward pass."""

    forward_s: float
    backward_s: float
    batch: int = 1                  # images per timed pass
    device: str = "cpu"
    source: str = "given"           # measured | stored (an earlier, close measurement) | reference |
                                    # not measured (nothing to plan) | given

    def seconds(self, cost: Cost) -> float:
        return cost.forward * self.forward_s + cost.backward * self.backward_s

    def to_json(self) -> Dict[str, Any]:
        return {"forward_s_per_image": round(self.forward_s, 6), "backward_s_per_image": round(self.backward_s, 6),
                "batch": self.batch, "device": self.device, "source": self.source}


def reference(macs: float, device: str = "cpu") -> Throughput:
    """The throughput a small model is planned with: from its MACs, not from a clock."""
    rate, overhead = REFERENCE_SPEED.get(device, REFERENCE_SPEED["cuda"])
    forward = overhead + macs / rate
    return Throughput(forward, BACKWARD_RATIO * forward, 1, device, "reference")


def stable(new: Throughput, stored: Optional[Throughput], factor: float = HYSTERESIS) -> Throughput:
    """``stored`` while ``new`` is within ``factor`` of it on both numbers, else ``new``."""
    if stored is None or stored.device != new.device:
        return new
    close = all(1 / factor <= a / b <= factor for a, b in ((new.forward_s, stored.forward_s),
                                                            (new.backward_s, stored.backward_s)) if b > 0)
    if close:
        return Throughput(stored.forward_s, stored.backward_s, stored.batch, stored.device, "stored")
    return new


def overshot(estimated_s: float, actual_s: float) -> bool:
    """Sections that took more than OVERSHOOT_FACTOR × their estimate (and OVERSHOOT_MIN_S more)."""
    return actual_s > OVERSHOOT_FACTOR * estimated_s and actual_s - estimated_s > OVERSHOOT_MIN_S


@dataclass(frozen=True)
class Knob:
    """One setting: its candidate values (each a mapping option -> value), best first, and costs.

    ``auto`` names the options the plan may choose; empty, the knob was written
    in the spec (one value, honoured as is). ``label`` and ``scope`` name it in
    estimate lines ("occlusion" with ... "on 6 probes").
    """

    name: str
    values: Tuple[Dict[str, Any], ...]
    costs: Tuple[Cost, ...]
    auto: Tuple[str, ...] = ()
    label: str = ""
    scope: str = ""

    def __post_init__(self) -> None:
        if not self.values or len(self.values) != len(self.costs):
            raise ValueError(f"knob {self.name!r}: needs one cost per value, got {len(self.values)} "
                             f"values and {len(self.costs)} costs")

    @property
    def given(self) -> bool:
        return not self.auto


@dataclass(frozen=True)
class Needs:
    """What a section will cost: passes it always makes, and its knobs."""

    fixed: Cost = Cost()
    knobs: Tuple[Knob, ...] = ()


@dataclass(frozen=True)
class SectionPlan:
    choices: Dict[str, Any]          # option -> value chosen (auto) or honoured (written)
    auto: Tuple[str, ...]            # the options chosen automatically
    scaled: Tuple[str, ...]          # auto options below their best value
    best: Dict[str, Any]             # option -> the best value (what auto would take with time to spare)
    estimated_s: float
    full_s: float                    # the estimate at the best values
    lowest: bool = False             # every setting chosen automatically is on its last rung

    def to_json(self) -> Dict[str, Any]:
        return {"choices": dict(self.choices), "auto": list(self.auto), "scaled": list(self.scaled),
                "lowest": self.lowest, "estimated_s": round(self.estimated_s, 2), "full_s": round(self.full_s, 2)}


@dataclass(frozen=True)
class Plan:
    budget_s: float
    reserve_s: float
    throughput: Throughput
    sections: Dict[str, SectionPlan]
    planned_s: float                 # the estimate of every section's passes, as chosen
    over: bool                       # even the last rungs do not fit
    long: List[str] = field(default_factory=list)   # estimate lines for written settings that take long

    @property
    def available_s(self) -> float:
        return max(0.0, self.budget_s - self.reserve_s)

    def choice(self, section: str, option: str) -> Any:
        return self.sections[section].choices[option]


def plan(needs: Mapping[str, Needs], throughput: Throughput, budget_s: float,
         reserve_s: Optional[float] = None) -> Plan:
    """Choices for every knob of ``needs`` (section -> Needs, in report order); see the module doc."""
    reserve = RESERVE_FRACTION * budget_s if reserve_s is None else float(reserve_s)
    available = max(0.0, budget_s - reserve)
    knobs = [(name, k) for name, n in needs.items() for k in n.knobs]
    rung = {i: 0 for i in range(len(knobs))}

    def knob_s(i: int) -> float:
        return throughput.seconds(knobs[i][1].costs[rung[i]])

    fixed = {name: throughput.seconds(n.fixed) for name, n in needs.items()}
    total = sum(fixed.values()) + sum(knob_s(i) for i in rung)
    def saving(i: int) -> float:
        costs = knobs[i][1].costs
        return throughput.seconds(costs[rung[i]]) - throughput.seconds(costs[-1])

    while total > available:
        movable = [i for i in rung if rung[i] + 1 < len(knobs[i][1].values) and saving(i) > 0]
        if not movable:
            break
        i = max(movable, key=lambda j: (knob_s(j), -j))
        before = knob_s(i)
        rung[i] += 1
        total += knob_s(i) - before
    sections: Dict[str, SectionPlan] = {}
    for name in needs:
        ids = [i for i, (s, _) in enumerate(knobs) if s == name]
        choices: Dict[str, Any] = {}
        best: Dict[str, Any] = {}
        auto: List[str] = []
        scaled: List[str] = []
        for i in ids:
            k = knobs[i][1]
            choices.update(k.values[rung[i]])
            best.update(k.values[0])
            auto.extend(k.auto)
            if rung[i]:
                scaled.extend(o for o in k.auto if k.values[rung[i]][o] != k.values[0][o])
        full = fixed[name] + sum(throughput.seconds(knobs[i][1].costs[0]) for i in ids)
        est = fixed[name] + sum(knob_s(i) for i in ids)
        lowest = all(rung[i] + 1 == len(knobs[i][1].values) for i in ids if knobs[i][1].auto)
        sections[name] = SectionPlan(choices, tuple(auto), tuple(scaled), best, est, full, lowest)
    long = [long_line(name, k, throughput, budget_s) for name, k in knobs if k.given]
    return Plan(budget_s=budget_s, reserve_s=reserve, throughput=throughput, sections=sections,
                planned_s=total, over=total > available, long=[line for line in long if line])


def long_line(section: str, knob: Knob, throughput: Throughput, budget_s: float) -> Optional[str]:
    """The stderr line for a written setting whose estimate is long, else None."""
    seconds = throughput.seconds(knob.costs[0])
    if seconds <= max(LONG_MIN_S, LONG_FRACTION * budget_s):
        return None
    cost = knob.costs[0]
    per = throughput.backward_s if cost.backward >= cost.forward else throughput.forward_s
    what = ", ".join(f"{k} {_words(v)}" for k, v in knob.values[0].items())
    label = knob.label or section
    scope = f" {knob.scope}" if knob.scope else ""
    return (f"reportgen: {label} with {what}{scope}: about {duration(seconds)} at the measured "
            f"{per:.2g} s/pass (written in the spec, so honoured; the build budget is {duration(budget_s)})")


def _words(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value) if len(set(value)) > 1 else str(value[0])
    return str(value)


def duration(seconds: float) -> str:
    """'45 s', '14 min', '2.1 h': how long, in words a person reads at a glance."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- costs per setting

def occlusion_positions(h: int, w: int, window: Sequence[int], stride: Sequence[int]) -> int:
    """Occluder positions of captum's placement (``reportgen.analyses.occlusion.window_starts``)."""
    def along(size: int, win: int, st: int) -> int:
        n = math.ceil((size - win) / st) + 1
        return min(n, math.ceil(size / st))   # starts past the image are dropped
    return along(h, window[0], stride[0]) * along(w, window[1], stride[1])


def occlusion_cost(h: int, w: int, window: Sequence[int], stride: Sequence[int], n_images: int,
                   incremental: Any = "auto") -> Cost:
    """Forward passes of one occlusion run: each image clean, then once per occluder position.

    Counted as full passes whatever ``incremental`` says (the incremental engine's
    saving is only known once it has traced the model): an upper bound. The
    occlusion module's own estimate replaces this once it has one.
    """
    return Cost(forward=n_images * (1 + occlusion_positions(h, w, window, stride)))


def pair(v: Any) -> Tuple[int, int]:
    """An int or [h, w] option as (h, w)."""
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _fitted(value: Any, h: int, w: int) -> Any:
    """An automatic int or pair, no larger than the input: an int while it stays square."""
    a, b = pair(value)
    a, b = min(a, h), min(b, w)
    return a if a == b and not isinstance(value, (list, tuple)) else [a, b]


def occlusion_ladder(h: int, w: int, window: Any = "auto", stride: Any = "auto") -> List[Dict[str, Any]]:
    """Window/stride candidates, best first; a written one stays as written.

    Both auto: 16/8 (shrunk to fit a small input, as before budgets), then
    larger windows, each moved by half its side, while the occluder grid keeps
    at least OCCLUSION_MIN_GRID positions along the shorter side. Only the
    window auto: larger windows at the written stride; only the stride:
    longer strides up to the written window.
    """
    if window != "auto" and stride != "auto":
        return [{"window": window, "stride": stride}]
    if window == "auto" and stride == "auto":
        pairs = list(zip(OCCLUSION_WINDOWS, OCCLUSION_STRIDES))
    elif window == "auto":
        pairs = [(wi, stride) for wi in OCCLUSION_WINDOWS]
    else:
        pairs = [(window, si) for si in OCCLUSION_STRIDES if si <= max(min(pair(window)), OCCLUSION_STRIDES[0])]
    out: List[Dict[str, Any]] = []
    for wi, si in pairs:
        cand = {"window": wi if window != "auto" else _fitted(wi, h, w),
                "stride": si if stride != "auto" else _fitted(si, h, w)}
        if out:
            wp, sp = pair(cand["window"]), pair(cand["stride"])
            grid = min(occlusion_positions(h, 1, (wp[0], 1), (sp[0], 1)),
                       occlusion_positions(1, w, (1, wp[1]), (1, sp[1])))
            if wp[0] > h or wp[1] > w or grid < OCCLUSION_MIN_GRID:
                break
            if cand == out[-1]:
                continue
        out.append(cand)
    return out


def faithfulness_cost(n_images: int, n_maps: int, steps: int) -> Cost:
    """Deletion and insertion of every map (the random reference included) per image."""
    return Cost(forward=n_images * n_maps * 2 * (steps + 1))


def ladder(best: int, rungs: Sequence[int]) -> List[int]:
    """``rungs`` at or below ``best``, with ``best`` first."""
    return [best] + [r for r in rungs if r < best]


def halvings(n: int, floor: int = 1) -> List[int]:
    """``n``, then halves, then ``floor`` itself (or just ``n`` when it is no larger): a count's ladder."""
    out, v = [n], n
    while v // 2 >= floor:
        v //= 2
        out.append(v)
    if out[-1] > floor:
        out.append(floor)
    return out


def knob(name: str, option: str, given: Any, rungs: Sequence[Any], cost: Callable[[Any], Cost],
         label: str = "", scope: str = "") -> Knob:
    """A one-option knob: ``given`` ("auto" or the spec's value) over ``rungs``; ``cost(value) -> Cost``."""
    values = [given] if given != "auto" else list(rungs)
    return Knob(name, tuple({option: v} for v in values), tuple(cost(v) for v in values),
                auto=() if given != "auto" else (option,), label=label or name, scope=scope)


# --------------------------------------------------------------------------- the page

# Bytes per pixel of the encodings sections use, measured on noise-like content (the worst
# case: a real photo compresses two to five times better), base64 included.
WEBP_BYTES_PER_PIXEL = 1.0
PNG_BYTES_PER_PIXEL = 4.0


def page_shares(weights: Mapping[str, float], room: float) -> Dict[str, int]:
    """Each section's share of ``room`` bytes: an equal part, the part a small section leaves to the rest.

    ``weights``: each image-heavy section's bytes at full settings. A section
    that needs less than an equal part keeps all it needs; the others split
    what is left the same way (max-min fairness), so the heaviest give way first.
    """
    out: Dict[str, int] = {}
    left = float(room)
    order = sorted(weights, key=lambda name: (weights[name], name))
    for i, name in enumerate(order):
        part = min(max(0.0, weights[name]), left / (len(order) - i))
        out[name] = int(part)
        left -= part
    return {name: out[name] for name in weights}


def channels_per_layer(full: Mapping[str, float], best: int, share: float,
                       rungs: Sequence[int] = ACTIVATION_CHANNELS) -> Dict[str, int]:
    """Channels shown per layer so that every layer's grids together fit ``share`` bytes.

    ``full``: each layer's bytes at ``best`` channels (bytes scale with the
    channels shown). Layers are served smallest first, each taking at most an
    equal part of what is left, so layers of small maps keep every channel and
    the ones with large maps give way; the counts come from ``rungs`` below
    ``best`` (the last rung when even that does not fit).
    """
    options = ladder(best, rungs)
    out: Dict[str, int] = {}
    left = float(share)
    order = sorted(full, key=lambda name: (full[name], name))
    for i, name in enumerate(order):
        part = left / (len(order) - i)
        per = full[name] / best
        k = next((k for k in options if k * per <= part), options[-1])
        out[name] = k
        left -= k * per
    return {name: out[name] for name in full}


def thumbnail_side(display: int, share: Optional[int]) -> int:
    """A thumbnail's stored side: 0 (as it is) with room on the page, else twice its display size."""
    return 0 if share is None else 2 * display

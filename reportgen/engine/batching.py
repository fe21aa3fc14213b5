"""Batch size by measured throughput: time a few sizes on the real work, keep the fastest.

The largest batch memory allows is not the fastest one. On a CPU the
activations of a big batch fall out of cache and the time per sample grows
(ResNet-18 at 224x224 on 2 quiet cores: 18 ms per sample at batch 8, 22 at 32,
26 at 64, 28 at 209, the memory cap), while a GPU keeps getting faster until it
is full. So :class:`ThroughputBatcher` hands out the real work in chunks whose
sizes it probes: powers of two, from ``start`` (or the memory cap, if
smaller): one step up, on up while the time per sample improves by more than
``MARGIN``, else down while it improves; the rest of the work runs at the
fastest size seen. Every probed chunk is real work, so probing costs no extra
pass, only a few chunks at a size that may be slower. That is cheap for a small
size (few samples) and dear for a big one, so the search starts small and
climbs. No chunk is ever larger than the memory cap.

Each run searches afresh. Keeping what one run measured for the next (per
model, input shape and device) would save its few probed chunks, but a noisy
first measurement would then steer every later run, and the search is already
close to free.

Batch size changes speed and float rounding (~1e-7 relative in the outputs),
nothing else; a caller that needs bit-identical reruns pins one batch size.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

# A size replaces the best one only if its time per sample is this much lower:
# below that the difference is noise on a shared machine.
MARGIN = 0.03
# Where the search starts: small on a CPU, where the best size often is small
# and a probe of a too-big size wastes the most; on a GPU, below where a
# convnet fills the device, from where the climb goes on up.
START = {"cpu": 8, "cuda": 256}


# Images per forward pass over a dataset when the spec leaves dataset.batch_size on auto. A CPU
# runs ResNet-50 at 224 px fastest per image at 1 to 8 (2 quiet cores: 60 ms at 8, 74 at 16,
# 87 at 32, 99 at 64, where the old default of 64 made the build's dataset pass 1.6x slower);
# a GPU wants large batches.
DATASET_BATCH = {"cpu": 8, "cuda": 64}


def dataset_batch(value: object, device_type: str) -> int:
    """``dataset.batch_size`` as a number: as written, or (auto) the device's DATASET_BATCH."""
    if value in (None, "auto"):
        return DATASET_BATCH.get(device_type, DATASET_BATCH["cuda"])
    return int(value)


def balanced_chunks(total: int, max_size: int) -> List[Tuple[int, int]]:
    """[start, stop) chunks of at most max_size, as equal as possible (no tiny last batch)."""
    n = max(1, math.ceil(total / max(1, max_size)))
    size = math.ceil(total / n)
    return [(i, min(i + size, total)) for i in range(0, total, size)]


class FixedBatcher:
    """:class:`ThroughputBatcher`'s interface for one pinned size: balanced chunks of at most ``size``."""

    def __init__(self, size: int):
        self.batch_size = max(1, int(size))
        self.sizes: List[int] = []

    def chunks(self, total: int) -> Iterator[Tuple[int, int]]:
        for a, b in balanced_chunks(total, self.batch_size):
            self.sizes.append(b - a)
            yield a, b


def _pow2_floor(v: int) -> int:
    return 1 << (max(1, v).bit_length() - 1)


class ThroughputBatcher:
    """Chunks of ``range(total)`` sized by measured throughput, never larger than ``cap``.

    Use :meth:`chunks` as the loop over the work: the time from one chunk being
    handed out to the next being asked for is that chunk's time, so the loop
    body must do the chunk's work (and finish it: on a GPU, read the result back).
    ``clock`` is injectable so tests can feed known timings.
    """

    def __init__(self, cap: int, start: int = START["cpu"], clock: Callable[[], float] = time.perf_counter):
        self.cap = max(1, int(cap))
        self.start = _pow2_floor(min(max(1, int(start)), self.cap))
        self.clock = clock
        self.measured: Dict[int, float] = {}     # batch size -> seconds per sample
        # the fastest size so far; a size takes its place only when faster by more than
        # MARGIN, so on a flat curve the search stays put instead of drifting on noise
        self.best: Optional[int] = None
        self.sizes: List[int] = []          # every chunk handed out, in order

    # ---- the search
    def next_probe(self) -> Optional[int]:
        """The next size to time, None when the search is over (both neighbours of the best measured)."""
        if self.best is None:
            return self.start
        for size in (2 * self.best, self.best // 2):
            if 1 <= size <= self.cap and size not in self.measured:
                return size
        return None

    @property
    def batch_size(self) -> int:
        """The size chosen (the best measured), or the largest chunk run when nothing was timed."""
        return self.best or max(self.sizes, default=self.start)

    # ---- the work
    def chunks(self, total: int) -> Iterator[Tuple[int, int]]:
        """[a, b) chunks covering ``range(total)`` in order; times the loop body of each."""
        pos = 0
        while pos < total:
            size, probing = self._size(total - pos)
            self.sizes.append(size)
            t = self.clock()
            yield pos, pos + size
            if probing:
                self._record(size, self.clock() - t)
            pos += size

    def _size(self, remaining: int) -> Tuple[int, bool]:
        probe = self.next_probe()
        if probe is not None and probe <= remaining:
            return probe, True
        if self.best is None:     # too little work to time anything: all of it (it fits: start <= cap)
            return min(remaining, self.cap), False
        # the rest at the best size, in equal chunks (no tiny last batch)
        return math.ceil(remaining / math.ceil(remaining / self.best)), False

    def _record(self, size: int, seconds: float) -> None:
        self.measured[size] = seconds / size
        if self.best is None or self.measured[size] < (1 - MARGIN) * self.measured[self.best]:
            self.best = size

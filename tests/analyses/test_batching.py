"""ThroughputBatcher: the search over batch sizes, driven by a scripted clock (no real timing)."""
from __future__ import annotations

from typing import Callable, List, Tuple

import pytest

from reportgen.engine.batching import FixedBatcher, ThroughputBatcher, balanced_chunks


def run(total: int, cap: int, per_sample: Callable[[int], float], start: int = 32
        ) -> Tuple[ThroughputBatcher, List[Tuple[int, int]]]:
    """Drive a batcher over ``total`` jobs; a chunk of b jobs takes b * per_sample(b) seconds."""
    now = [0.0]
    batcher = ThroughputBatcher(cap, start=start, clock=lambda: now[0])
    chunks = []
    for a, b in batcher.chunks(total):
        chunks.append((a, b))
        now[0] += (b - a) * per_sample(b - a)
    return batcher, chunks


def covers(chunks: List[Tuple[int, int]], total: int) -> bool:
    return [a for a, _ in chunks] == [0] + [b for _, b in chunks[:-1]] and chunks[-1][1] == total


def test_climbs_to_the_fastest_size_and_runs_the_rest_there():
    # per sample: 1.0 at 32, 0.8 at 64, 0.9 at 128 (CPU-like: past 64 it gets slower again)
    curve = {32: 1.0, 64: 0.8, 128: 0.9}
    batcher, chunks = run(1000, cap=4096, per_sample=lambda b: curve.get(b, 0.8))
    assert sorted(batcher.measured) == [32, 64, 128]
    assert batcher.batch_size == 64 and batcher.next_probe() is None
    assert batcher.sizes[:3] == [32, 64, 128] and max(batcher.sizes[3:]) <= 64
    assert covers(chunks, 1000)


def test_steps_down_when_up_is_no_better():
    # the fastest size is 8: 32 -> 64 (worse) -> 16 -> 8 -> 4 (worse)
    batcher, chunks = run(500, cap=4096, per_sample=lambda b: abs(b - 8) / 8 + 1)
    assert batcher.sizes[:5] == [32, 64, 16, 8, 4]
    assert batcher.batch_size == 8 and max(batcher.sizes[5:]) <= 8
    assert covers(chunks, 500)


def test_gpu_like_curve_climbs_to_the_cap():
    batcher, chunks = run(5000, cap=1000, per_sample=lambda b: 1 / b, start=256)
    assert batcher.sizes[:2] == [256, 512]            # 1024 is over the cap
    assert batcher.batch_size == 512 and max(batcher.sizes) <= 1000
    assert covers(chunks, 5000)


def test_a_noise_sized_gain_does_not_move_the_choice():
    # 64 is 1% faster than 32: under MARGIN, so the smaller batch stays
    batcher, _ = run(1000, cap=4096, per_sample=lambda b: {64: 0.99}.get(b, 1.0))
    assert batcher.batch_size == 32


@pytest.mark.parametrize("cap", [1, 5, 20, 33])
def test_never_over_the_memory_cap(cap):
    batcher, chunks = run(400, cap=cap, per_sample=lambda b: 1 / b)
    assert max(batcher.sizes) <= cap and batcher.batch_size <= cap
    assert covers(chunks, 400)


def test_too_little_work_to_probe_runs_at_once():
    batcher, chunks = run(20, cap=4096, per_sample=lambda b: 1.0)
    assert chunks == [(0, 20)] and batcher.measured == {} and batcher.batch_size == 20


def test_rest_of_the_work_is_split_evenly():
    # 32 and 64 probed (96 jobs), 128 does not fit in the 104 left: two chunks of 52, not 64 + 40
    batcher, chunks = run(200, cap=4096, per_sample=lambda b: {32: 1.0}.get(b, 0.5))
    assert batcher.sizes == [32, 64, 52, 52]
    assert covers(chunks, 200)


def test_fixed_batcher_and_balanced_chunks():
    fixed = FixedBatcher(4)
    assert list(fixed.chunks(10)) == [(0, 4), (4, 8), (8, 10)] == balanced_chunks(10, 4)
    assert fixed.sizes == [4, 4, 2] and fixed.batch_size == 4
    assert balanced_chunks(9, 4) == [(0, 3), (3, 6), (6, 9)]

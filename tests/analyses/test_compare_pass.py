"""The compare pass: CKA and predictions on the same forwards, one process or sharded over two.

The sharded test spawns two CPU processes (gloo), as the top-k one does; rank r
takes items r::2, so every sum and count is split across processes and the
all-reduce (after re-expressing the CKA sums around one common shift) is what
is tested. Counts and flipped images must match exactly, CKA to float64
rounding. One image per batch everywhere, so each image's activations are
computed identically in every run (float conv kernels may round differently
for another batch shape) and top-1 classes cannot differ.
"""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reportgen.analyses import agreement as ag
from reportgen.analyses import cka as ck
from reportgen.analyses import compare_pass as cp
from reportgen.analyses import weight_diff as wd
from tests.analyses.test_cka import Indexed

LAYERS = ["relu1", "conv2", "fc"]
CLASSES = ["a", "b", "c", "d"]
BATCH = 1


def models():
    from tests.conftest import TinyCNN

    torch.manual_seed(0)
    base = TinyCNN().eval()
    torch.manual_seed(1)
    new = TinyCNN().eval()
    return base, new


def dataset(n: int) -> Indexed:
    return Indexed(torch.randn((n, 3, 10, 10), generator=torch.Generator().manual_seed(7)))


def labels(n: int) -> np.ndarray:
    out = np.arange(n) % 4
    out[::5] = ag.UNKNOWN        # some images (probes) without a label
    return out


def run_single(n: int, mode: str = "pairs") -> cp.ComparePassResult:
    base, new = models()
    new_layers = None if mode == "pairs" else ["relu2", "fc"]
    return cp.compare_pass(base, new, dataset(n), LAYERS, CLASSES, new_layers=new_layers, mode=mode,
                           labels=labels(n), batch_size=BATCH)


def test_one_pass_gives_cka_and_predictions(make_cnn):
    res = run_single(13)
    base, new = models()
    x = dataset(13).x
    with torch.no_grad():
        want = ag.compare_predictions(base(x), new(x), labels(13), CLASSES)
    assert res.predictions.predictions_json() == want.predictions_json()
    np.testing.assert_array_equal(res.predictions.changed.indices, want.changed.indices)
    alone = ck.layer_pairs_cka(base, new, dataset(13), LAYERS, batch_size=BATCH)
    np.testing.assert_allclose(res.cka.debiased, alone.debiased, rtol=1e-12)
    assert res.cka.n == res.predictions.n == 13


def test_output_keys_pick_the_class_scores(make_cnn):
    class Tupled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return {"aux": torch.zeros(len(x)), "scores": self.inner(x)}

    base, new = models()
    res = cp.compare_pass(Tupled(base), new, dataset(6), ["inner.relu2"], CLASSES,
                          new_layers=["relu2"], output_keys=("scores", None), batch_size=3)
    assert res.predictions.n == 6
    with pytest.raises(ValueError, match="not a tensor"):
        cp.compare_pass(Tupled(base), new, dataset(6), ["inner.relu2"], CLASSES, new_layers=["relu2"])


def test_comparison_layers_follow_the_contract(make_cnn):
    base = make_cnn(seed=0)
    new = copy.deepcopy(base)
    with torch.no_grad():
        new.fc.weight.mul_(0.5)
    res = cp.compare_pass(base, new, dataset(8), ["conv1", "relu2", "fc"], CLASSES, batch_size=4)
    weights = wd.weight_change(base, new)
    layers = cp.comparison_layers(res.cka, weights, order=["conv1", "relu1", "conv2", "relu2", "fc"])
    assert list(layers) == ["conv1", "conv2", "relu2", "fc"]      # the union, in the given order
    assert list(cp.comparison_layers(res.cka, weights)) == ["conv1", "relu2", "fc", "conv2"]
    assert all(set(v) == {"cka", "weight_change"} for v in layers.values())
    assert layers["conv1"] == {"cka": pytest.approx(1.0), "weight_change": 0.0}
    assert layers["relu2"]["weight_change"] is None and layers["conv2"]["cka"] is None
    assert 0 < layers["fc"]["weight_change"] < 1
    # different architectures: a cross matrix, no weight change; same-named layers still get a CKA
    other = make_cnn(seed=1, mid=8)
    cross = cp.compare_pass(base, other, dataset(8), ["relu1", "relu2"], CLASSES,
                            new_layers=["relu2", "fc"], mode="matrix", batch_size=4)
    assert cp.comparison_layers(cross.cka, None) == {"relu2": {"cka": pytest.approx(cross.cka.cka[1, 0]),
                                                               "weight_change": None}}


# --------------------------------------------------------------------------- two processes

def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        out = {}
        for n, mode in ((13, "pairs"), (9, "matrix"), (1, "pairs")):   # n=1: rank 1 sees no image
            base, new = models()
            new_layers = None if mode == "pairs" else ["relu2", "fc"]
            out[(n, mode)] = cp.compare_pass(base, new, dataset(n), LAYERS, CLASSES, new_layers=new_layers,
                                             mode=mode, labels=labels(n), batch_size=BATCH,
                                             distributed=True)
        (Path(tmp) / f"rank{rank}.pkl").write_bytes(pickle.dumps(out))
    finally:
        dist.destroy_process_group()


def assert_same(got: cp.ComparePassResult, want: cp.ComparePassResult) -> None:
    assert got.predictions.predictions_json() == want.predictions.predictions_json()
    for kind in ("negative", "positive", "changed"):
        for f in ("indices", "labels", "base", "new"):
            np.testing.assert_array_equal(getattr(getattr(got.predictions, kind), f),
                                          getattr(getattr(want.predictions, kind), f))
    np.testing.assert_array_equal(got.predictions.class_count, want.predictions.class_count)
    assert got.cka.n == want.cka.n and got.cka.estimator == want.cka.estimator
    # shards run other batch sizes than one process: float32 forwards agree to ~1e-6, not to the last bit
    np.testing.assert_allclose(got.cka.biased, want.cka.biased, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.cka.debiased, want.cka.debiased, rtol=1e-5, atol=1e-9)
    assert got.cka.base_reduction == want.cka.base_reduction
    assert got.cka.new_reduction == want.cka.new_reduction


def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    for (n, mode), got in ranks[0].items():
        want = run_single(n, mode)
        assert_same(got, want)
        assert_same(ranks[1][(n, mode)], want)     # every rank holds the merged result
    assert ranks[0][(13, "pairs")].predictions.negative_flips is not None
    assert np.isfinite(ranks[0][(13, "pairs")].cka.debiased.diagonal()).all()

"""The sharded top-k pass (2 CPU processes, gloo) gives exactly the single-process result.

Two ways in: ``torch.multiprocessing.spawn`` around the library function,
and the real ``torchrun -m reportgen.distributed topk`` entry on a
spec. Shards are interleaved (rank r takes r::2), so every channel's winners
come from both processes and the merge, ties included, is what is tested.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from reportgen.analyses import topk as tk
from reportgen.analyses import topk_distributed as tkd

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["relu1", "relu2"]
# Float conv kernels may round differently for another batch size (oneDNN picks the algorithm
# by shape), so the random-weights comparison feeds one image per batch everywhere: then each
# image's activations are computed identically and "exact" really means bit-for-bit. The
# torchrun test below uses an integer-exact model and different batch sizes instead.
BATCH = 1


def make_model() -> torch.nn.Module:
    from tests.conftest import TinyCNN

    torch.manual_seed(0)
    return TinyCNN().eval()


def make_dataset(root: Path, n: int = 10) -> tk.ImageDataset:
    rng = np.random.default_rng(0)
    items = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = root / f"{i}.png"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(p)
        items.append((p, None))
    return tk.ImageDataset(items, (3, 12, 12))


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        result = tkd.distributed_topk_patches(make_model(), make_dataset(Path(tmp) / "data"), LAYERS,
                                              channels=3, k=4, batch_size=BATCH)
        if rank == 0:
            np.savez(Path(tmp) / "dist.npz", **tkd.result_arrays(result))
        else:
            assert result is None
    finally:
        dist.destroy_process_group()


def assert_same(npz, single: tk.TopKResult) -> None:
    got = dict(np.load(npz)) if isinstance(npz, Path) else npz
    want = tkd.result_arrays(single)
    assert sorted(got) == sorted(want)
    for key in want:
        if key == "header":
            assert json.loads(str(got[key])) == json.loads(str(want[key]))
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_two_spawned_processes_match_one(tmp_path):
    dataset = make_dataset(tmp_path / "data")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    single = tk.topk_patches(make_model(), dataset, LAYERS, channels=3, k=4, batch_size=BATCH)
    assert_same(tmp_path / "dist.npz", single)


BOXNET = '''
import torch
from torch import nn

class BoxNet(nn.Module):
    """Integer weights on 0/1 inputs: every activation is an exact small integer (lots of ties)."""
    def __init__(self, num_classes=2):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            w = torch.ones(3, 1, 3, 3)
            w[1, 0, :, 0] = -1
            w[2] = -1
            self.conv.weight.copy_(w)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).amax(dim=(2, 3)))
'''

SPEC = """\
title: sharded
model:
  factory: boxnet:BoxNet
  input_size: [1, 8, 8]
preprocess: {mean: [0.0], std: [1.0]}
dataset: {root: data, batch_size: 2}
sections:
  topk: {layers: [relu, pool], channels: 3, k: 5}
"""


def test_torchrun_entry_point_matches_one_process(tmp_path):
    from reportgen.sections.base import BuildContext
    from reportgen.sections.dataset_pass import dataset_for
    from reportgen.spec import load_spec
    from reportgen.spec.resolve import resolve

    (tmp_path / "boxnet.py").write_text(BOXNET)
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            img = (rng.random((8, 8)) < 0.3).astype(np.uint8) * 255
            Image.fromarray(img).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "spec.yaml").write_text(SPEC)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "reportgen.distributed", "topk", "--spec", str(tmp_path / "spec.yaml"),
         "--out", str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    res = resolve(load_spec(tmp_path / "spec.yaml"), "cpu")
    ctx = BuildContext(model=res.model, device=res.device, input_size=res.input_size, probes=[],
                       classes=res.classes, checkpoints=[], spec=res.spec, dataset=res.dataset)
    single = tk.topk_patches(res.model, dataset_for(ctx), ["relu", "pool"], 3, 5, batch_size=3)
    # the file holds the merged stream state (build --topk finishes it): equal to one process's
    state, header = tkd.load_topk_pass(tmp_path / "out.npz")
    assert header["kind"] == "topk-pass" and json.loads(header["plan"])["layers"] == ["relu", "pool"]
    want = tk.stream_topk(res.model, dataset_for(ctx), ["relu", "pool"], 5, batch_size=3)
    assert state.n_images == want.n_images == 8 and state.shapes == want.shapes
    for name in ("relu", "pool"):
        for f in ("values", "images", "positions"):
            np.testing.assert_array_equal(state.layers[name][f], want.layers[name][f], err_msg=f"{name}/{f}")
    finished = tk.finish_topk(res.model, dataset_for(ctx), state, ["relu", "pool"], 3, 5, "cpu", res.input_size)
    assert_same(tkd.result_arrays(finished), single)
    # the exact model makes ties: the merged order must have broken them by image index
    v, i = single.layers[0].values, single.layers[0].images
    tied = (v[:, 1:] == v[:, :-1])
    assert tied.any() and (i[:, 1:][tied] > i[:, :-1][tied]).all()

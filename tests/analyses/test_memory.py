"""Peak-memory estimate of one forward pass, checked by hand on a two-layer chain, and its meta-device twin."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reportgen.engine.memory import nbytes, on_meta, peak_estimate, probe, probe_shapes
from reportgen.model.hooks import count_hooks


def test_nbytes_counts_tensors_in_sequences_only():
    assert nbytes(torch.zeros(2, 3)) == 24
    assert nbytes((torch.zeros(4, dtype=torch.float64), [torch.zeros(1, dtype=torch.uint8)], "x")) == 33
    assert nbytes({"a": torch.zeros(3)}) == 0


def test_peak_estimate_by_hand():
    assert peak_estimate([], 10) == 20
    # max(in + out) = 30 + 50, max(out) = 50, plus the input
    assert peak_estimate([(10, 30), (30, 50), (50, 5)], 10) == 80 + 50 + 10


def test_probe_sums_leaf_inputs_and_outputs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    x = torch.zeros(1, 1, 4, 4)                      # 64 bytes
    with torch.no_grad():
        peak, out = probe(model, x)
    # leaves: conv (64 -> 128), relu (128 -> 128), flatten (128 -> 128), linear (128 -> 12)
    assert peak == (128 + 128) + 128 + 64
    assert torch.equal(out, model(x)) and count_hooks(model) == 0


def test_probe_shapes_matches_the_real_probe_without_computing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32, 3)).eval()
    x = torch.randn(1, 1, 4, 4)
    with torch.no_grad():
        peak, out = probe(model, x)
    meta_peak, meta_out = probe_shapes(model, x)
    assert meta_peak == peak and meta_out.shape == out.shape and meta_out.is_meta
    # the model keeps its own weights and no hook
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert count_hooks(model) == 0 and torch.equal(model(x), out)


def test_on_meta_refuses_torchscript_and_raises_what_the_model_raises():
    scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="TorchScript"):
        on_meta(scripted, scripted, torch.zeros(1, 2))

    class Peeks(nn.Module):
        def forward(self, x):
            return x * float(x.sum())                  # needs a value: no meta run

    with pytest.raises(RuntimeError):
        on_meta(Peeks(), Peeks(), torch.zeros(1, 2))

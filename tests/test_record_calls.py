"""record_calls: every module call of one pass, in order, and nothing left on the model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reportgen.model.hooks import count_hooks, record_calls


def _nested() -> nn.Module:
    # "" -> "0" (conv 1->2 3x3 pad 1, relu) -> "1" (flatten) -> "2" (linear 2*4*4 -> 3)
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()), nn.Flatten(),
                         nn.Linear(32, 3))


class SharedRelu(nn.Module):
    """One ReLU called twice, as torchvision's BasicBlock does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(self.relu(x)))


def test_calls_finish_child_first_and_start_parent_first():
    rec = record_calls(_nested(), torch.zeros(1, 1, 4, 4))
    assert [c.name for c in rec.calls] == ["0.0", "0.1", "0", "1", "2", ""]
    starts = {c.name: c.order for c in rec.calls}
    assert starts == {"": 0, "0": 1, "0.0": 2, "0.1": 3, "1": 4, "2": 5}
    shapes = {c.name: tuple(c.tensor.shape) for c in rec.calls}
    assert shapes["0.0"] == (1, 2, 4, 4) and shapes["1"] == (1, 32) and shapes[""] == (1, 3)
    assert [tuple(c.inputs[0].shape) for c in rec.calls if c.name == "2"] == [(1, 32)]
    assert [c.name for c in rec.calls if c.leaf] == ["0.0", "0.1", "1", "2"]
    assert torch.is_tensor(rec.output) and rec.output.device.type == "cpu"   # the real output


def test_a_module_called_twice_gives_two_calls():
    rec = record_calls(SharedRelu(), torch.zeros(1, 1, 5, 5))
    relu = [c for c in rec.calls if c.name == "relu"]
    assert [tuple(c.tensor.shape) for c in relu] == [(1, 1, 5, 5), (1, 1, 3, 3)]
    assert [c.order for c in relu] == [1, 3]          # root 0, relu 1, conv 2, relu 3


def test_tensors_are_meta_twins_unless_kept():
    model = _nested()
    x = torch.zeros(1, 1, 4, 4)
    light = record_calls(model, x).calls
    assert all(c.tensor.device.type == "meta" for c in light)
    assert light[0].tensor.dtype == torch.float32 and light[0].tensor.numel() == 32
    kept = {c.name: c for c in record_calls(model, x, keep_tensors=True).calls}
    assert kept["0.1"].inputs[0] is kept["0.0"].output          # identity: conv feeds relu
    assert kept["0.0"].inputs[0] is x


def test_tuple_outputs_give_their_first_tensor():
    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, "aux"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    pair = next(c for c in record_calls(Net(), torch.zeros(2, 3)).calls if c.name == "pair")
    assert tuple(pair.tensor.shape) == (2, 3) and pair.output[1] == "aux"


def test_model_is_left_as_it_was_even_when_the_pass_fails():
    model = _nested().train()
    model[2].eval()                                      # a mixed state must come back as it was
    with pytest.raises(RuntimeError):
        record_calls(model, torch.zeros(1, 1, 5, 5))     # flatten gives 50 features, not 32
    assert count_hooks(model) == 0
    assert model.training and model[0].training and not model[2].training
    record_calls(model, torch.zeros(1, 1, 4, 4))
    assert count_hooks(model) == 0 and model.training


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_ragged_nested_tensor_is_kept_as_it_is():
    class Ragged(nn.Module):
        def forward(self, x):
            return torch.nested.nested_tensor([x[0, :2], x[0]])

    calls = record_calls(Ragged(), torch.zeros(1, 3, 2)).calls
    assert calls[0].output.is_nested and calls[0].tensor is calls[0].output

"""reportgen/model/hooks.py and the paths built on it leave no trace on a model, even on an exception.

Every test raises inside (or on the way into) a ``with`` block and then
checks each module's own hook dicts, not a count: a hook left on any module,
or a train/eval flag not put back, fails it.
"""
from __future__ import annotations

from typing import Dict, List

import pytest
import torch
from torch import nn

import reportgen
from reportgen.analyses.activations import activations, stage_layers
from reportgen.model.hooks import ActivationRecorder, count_hooks, eval_mode, hooks

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


class Boom(Exception):
    pass


def leftover_hooks(model: nn.Module) -> Dict[str, List[str]]:
    """{module name: names of its non-empty hook dicts}; also torch's global module hooks."""
    left = {name or "<root>": [d for d in HOOK_DICTS if getattr(m, d, None)]
            for name, m in model.named_modules()}
    left = {k: v for k, v in left.items() if v}
    from torch.nn.modules import module as torch_module
    for d in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
              "_global_backward_pre_hooks"):
        if getattr(torch_module, d, None):
            left.setdefault("<global>", []).append(d)
    return left


def flags(model: nn.Module) -> Dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


@pytest.fixture
def model(make_cnn) -> nn.Module:
    """The tiny CNN in a mixed state: trained as a whole, one layer frozen in eval."""
    net = make_cnn().train()
    net.conv2.eval()
    return net


def test_leftover_hooks_sees_a_hook(model):
    handle = model.conv1.register_forward_pre_hook(lambda *a: None)
    assert leftover_hooks(model) == {"conv1": ["_forward_pre_hooks"]}
    handle.remove()
    assert leftover_hooks(model) == {}


def test_hooks_removes_every_handle_on_an_exception(model):
    given = model.fc.register_forward_hook(lambda *a: None)
    with pytest.raises(Boom):
        with hooks([given]) as hs:
            for m in model.modules():
                hs.append(m.register_forward_hook(lambda *a: None))
                hs.append(m.register_forward_pre_hook(lambda *a: None))
                hs.append(m.register_full_backward_hook(lambda *a: None))
                hs.append(m.register_full_backward_pre_hook(lambda *a: None))
                hs.append(m.register_forward_hook(lambda *a, **k: None, with_kwargs=True))
            assert count_hooks(model) > 0
            model(torch.zeros(1, 3, 8, 8))
            raise Boom
    assert leftover_hooks(model) == {}
    assert hs == []


def test_eval_mode_restores_each_flag_on_an_exception(model):
    before = flags(model)
    with pytest.raises(Boom):
        with eval_mode(model):
            assert not any(flags(model).values())
            raise Boom
    assert flags(model) == before
    assert before["conv1"] and not before["conv2"]   # a mixed state came back, not just model.train()


def test_activation_recorder_removes_its_hooks_on_an_exception(model):
    with pytest.raises(Boom):
        with ActivationRecorder(model, ["conv1", "conv2"]) as rec:
            model(torch.zeros(1, 3, 8, 8))
            assert set(rec.outputs) == {"conv1", "conv2"}
            raise Boom
    assert leftover_hooks(model) == {}
    assert rec.outputs == {}


def test_activation_recorder_removes_its_hooks_when_a_layer_is_unknown(model):
    # conv1's hook is on before "nope" fails: the with block never starts, so
    # __exit__ never runs and __enter__ must clean up after itself
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        with ActivationRecorder(model, ["conv1", "nope"]):
            pass
    assert leftover_hooks(model) == {}


class Failing(nn.Module):
    """The tiny CNN whose forward raises half-way, after conv1's hooks fired."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        self.net.relu1(self.net.conv1(x))
        raise Boom("forward failed")


@pytest.mark.parametrize("call", [
    lambda m, x: activations(m, x, ["net.conv1", "net.relu1"]),
    lambda m, x: activations(m, x, ["net.conv1", "nope"]),
    lambda m, x: stage_layers(m, x),
], ids=["activations", "activations-unknown-layer", "stage_layers"])
def test_activation_paths_leave_no_trace_on_an_exception(model, call):
    wrapped = Failing(model).train()
    before = flags(wrapped)
    with pytest.raises((Boom, ValueError)):
        call(wrapped, torch.zeros(2, 3, 8, 8))
    assert leftover_hooks(wrapped) == {}
    assert flags(wrapped) == before


def test_activations_leaves_no_trace_when_a_layer_is_never_called(model):
    model.unused = nn.Conv2d(6, 6, 1)
    before = flags(model)
    with pytest.raises(ValueError, match="'unused' was not called"):
        activations(model, torch.zeros(2, 3, 8, 8), ["conv1", "unused"])
    assert leftover_hooks(model) == {}
    assert flags(model) == before


@pytest.mark.parametrize("method,layer", [("gradcam", "net.conv1"), ("scorecam", "net.conv1"),
                                          ("eigencam", "net.conv1"), ("saliency", None),
                                          ("guided_backprop", None), ("integrated_gradients", None)])
def test_explain_leaves_no_trace_when_the_forward_raises(model, method, layer):
    wrapped = Failing(model).train()
    before = flags(wrapped)
    with pytest.raises(Boom):
        reportgen.explain(wrapped, torch.zeros(2, 3, 8, 8), method, target=0, layer=layer)
    assert leftover_hooks(wrapped) == {}
    assert flags(wrapped) == before
    assert torch._C._len_torch_function_stack() == 0

"""Receptive fields: hand-computed cases, then the ground truth of real nets.

The ground truth is the input gradient of one unit: with positive weights,
zero biases, identity BatchNorm and a positive input, every path carries a
strictly positive gradient, so the pixels with a non-zero gradient are exactly
the pixels the unit sees. Max-pools send gradient only to their argmax, so the
checked copy swaps them for average pools of the same geometry (kernel,
stride, padding, ceil_mode), which is all a receptive field depends on; the
receptive field itself is computed on the unmodified model.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import reportgen
from reportgen.analyses.receptive_field import receptive_field, receptive_field_box
from reportgen.model.hooks import count_hooks, hooks
from reportgen.model.layers import get_layer

Box = Tuple[int, int, int, int]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small float64 nets run faster single-threaded, and CI runners are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------ ground truth

def _linearised(model: nn.Module) -> nn.Module:
    """A float64 copy-in-place whose every path passes a positive gradient (see module doc)."""
    torch.manual_seed(0)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                assert child.dilation in (1, (1, 1))
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   child.ceil_mode))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = torch.rand_like(m.weight) + 0.5
                m.weight.copy_(w / w.sum((1, 2, 3), keepdim=True))  # averages: no overflow
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # running mean 0, var 1, weight 1, bias 0
    return model.double().eval()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the deepest layer of interest ran."""


def _layer_outputs(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict:
    """Outputs of ``layers`` (given in execution order; last call wins), skipping the rest of the net."""
    outputs = {}

    def record(name):
        def fn(_m, _i, out):
            outputs[name] = out
            if name == layers[-1]:
                raise _Stop
        return fn

    with hooks() as hs:
        for name in layers:
            hs.append(get_layer(model, name).register_forward_hook(record(name)))
        try:
            model(x)
        except _Stop:
            pass
    return outputs


def _gradient_boxes(model: nn.Module, layers: Sequence[str], hw: Tuple[int, int],
                    units: Sequence[Sequence[Tuple[int, int]]]) -> List[List[Box]]:
    """Bounding box (y0, x0, y1, x1; ends exclusive) of each unit's non-zero input gradient.

    ``units[k]`` are units of ``layers[k]``. One batch row per unit, so one
    forward and one backward pass give every unit its own gradient.
    """
    rows = [(layer, unit) for layer, us in zip(layers, units) for unit in us]
    x = torch.full((len(rows), 3, *hw), 0.1, dtype=torch.float64, requires_grad=True)
    outputs = _layer_outputs(model, layers, x)
    total = sum(outputs[layer][n, :, i, j].sum() for n, (layer, (i, j)) in enumerate(rows))
    (grad,) = torch.autograd.grad(total, x)
    boxes = []
    for g in grad.abs().sum(1):
        r = torch.nonzero(g.sum(1)).flatten()
        c = torch.nonzero(g.sum(0)).flatten()
        boxes.append((int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1))
    per_layer, start = [], 0
    for us in units:
        per_layer.append(boxes[start:start + len(us)])
        start += len(us)
    return per_layer


def _check_against_gradient(model: nn.Module, layers: Sequence[str], hw: Tuple[int, int]) -> None:
    """For each layer: corner, centre, centre's neighbour and last unit match the gradient.

    Where the centre unit and its neighbour lie inside the image, size, start
    and jump are also checked unclipped (at least one layer per net must allow
    it); the other units check the clipping of receptive_field_box.
    """
    rfs = [receptive_field(model, layer, (3, *hw)) for layer in layers]
    model = _linearised(model)
    with torch.no_grad():
        shapes = [out.shape[-2:] for out in _layer_outputs(
            model, layers, torch.zeros(1, 3, *hw, dtype=torch.float64)).values()]
    units = []
    for oh, ow in shapes:
        cy, cx = oh // 2, ow // 2
        units.append([(0, 0), (cy, cx), (min(cy + 1, oh - 1), min(cx + 1, ow - 1)), (oh - 1, ow - 1)])
    unclipped = 0
    for layer, rf, us, got in zip(layers, rfs, units, _gradient_boxes(model, layers, hw, units)):
        assert got == [receptive_field_box(rf, i, j, hw) for i, j in us], (layer, rf, us)
        (y0, x0, y1, x1), (ny0, nx0, ny1, nx1) = got[1], got[2]
        if (y1 - y0, x1 - x0) == (ny1 - ny0, nx1 - nx0) == rf["size"]:
            unclipped += 1
            (cy, cx) = us[1]
            assert ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2) == (
                rf["start"][0] + cy * rf["jump"][0], rf["start"][1] + cx * rf["jump"][1])
            assert (ny0 - y0, nx0 - x0) == rf["jump"]
    assert unclipped, "every centre unit is clipped: use a larger input or shallower layers"


ARCHITECTURES = [
    # (builder, kwargs, input H=W, layers in execution order)
    ("resnet18", {}, 112, ["layer1.0.relu", "layer1", "layer2.0", "layer2"]),
    ("vgg11", {}, 64, ["features.2", "features.5", "features.10"]),
    ("alexnet", {}, 96, ["features.2", "features.5"]),
    ("mobilenet_v2", {}, 64, ["features.3", "features.6"]),
    ("densenet121", {}, 72, ["features.denseblock1", "features.transition1"]),
    ("googlenet", {"aux_logits": False, "init_weights": False}, 96,
     ["maxpool2", "inception3a", "inception3b"]),
]


@pytest.mark.parametrize("name,kwargs,size,layers", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_matches_gradient_extent_of_torchvision_nets(name, kwargs, size, layers):
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    for head in ("fc", "classifier"):  # never needed, and huge in float64 for VGG/AlexNet
        if hasattr(model, head):
            setattr(model, head, nn.Identity())
    _check_against_gradient(model, layers, (size, size))


def test_clipped_windows_match_gradient_for_deeper_layers():
    # googlenet's inception4a sees 107 px: every unit is clipped at 64 px; the
    # boxes (with unit 0's reaching into padding) must still match the gradient.
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    model.fc = nn.Identity()
    rf = receptive_field(model, "inception4a", (3, 64, 64))
    assert rf == {"size": (107, 107), "jump": (16, 16), "start": (14.0, 14.0)}
    model = _linearised(model)
    units = [(0, 0), (1, 2), (3, 3)]
    assert _gradient_boxes(model, ["inception4a"], (64, 64), [units]) == [[
        receptive_field_box(rf, i, j, (64, 64)) for i, j in units]]


# ---------------------------------------------------------------- by hand

def _rf(*modules: nn.Module, size: int = 32) -> dict:
    model = nn.Sequential(*modules)
    return receptive_field(model, str(len(modules) - 1), (1, size, size))


def test_single_conv_padding_sets_start():
    assert _rf(nn.Conv2d(1, 1, 3, padding=1)) == {"size": (3, 3), "jump": (1, 1), "start": (0.0, 0.0)}
    assert _rf(nn.Conv2d(1, 1, 3)) == {"size": (3, 3), "jump": (1, 1), "start": (1.0, 1.0)}


def test_stride_and_rectangular_kernel():
    rf = _rf(nn.Conv2d(1, 1, (5, 3), stride=(2, 3), padding=(2, 0)))
    assert rf == {"size": (5, 3), "jump": (2, 3), "start": (0.0, 1.0)}


def test_dilation_widens_extent():
    assert _rf(nn.Conv2d(1, 1, 3, dilation=2))["size"] == (5, 5)
    assert _rf(nn.Conv2d(1, 1, 3, dilation=2))["start"] == (2.0, 2.0)
    # a dilated pool after a stride-2 conv: 3 taps 2*2 apart, plus the conv's 3
    rf = _rf(nn.Conv2d(1, 1, 3, stride=2), nn.MaxPool2d(3, stride=1, dilation=2))
    assert rf == {"size": (11, 11), "jump": (2, 2), "start": (5.0, 5.0)}


def test_conv_pool_stack():
    # conv3 p1: pixels -1..1; pool2: -1..2, jump 2; conv3: -1..2+2*2 = 6
    rf = _rf(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3))
    assert rf == {"size": (8, 8), "jump": (2, 2), "start": (2.5, 2.5)}
    # ceil_mode adds units at the end, never moves unit 0
    assert _rf(nn.MaxPool2d(3, 2, ceil_mode=True), size=8) == _rf(nn.MaxPool2d(3, 2), size=8)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), (4, 2), (2, 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_paddings_match_pytorch(kernel, dilation, padding):
    # 'same' with an even extent pads one pixel more at the end: checked on torch's own conv
    net = nn.Sequential(nn.Conv2d(3, 1, kernel, padding=padding, dilation=dilation))
    rf = receptive_field(net, "0", (3, 12, 12))
    assert _gradient_boxes(_linearised(net), ["0"], (12, 12), [[(4, 5)]]) == [[
        receptive_field_box(rf, 4, 5, (12, 12))]], rf


def test_adaptive_pools():
    conv = nn.Conv2d(1, 1, 3, stride=2)  # 17 px -> 8 units, jump 2, size 3
    same = _rf(conv, nn.AdaptiveAvgPool2d(8), size=17)
    assert same == _rf(conv, size=17)
    halved = _rf(conv, nn.AdaptiveAvgPool2d(4), size=17)   # a 2x2 stride-2 pool
    assert halved == {"size": (5, 5), "jump": (4, 4), "start": (2.0, 2.0)}
    whole = _rf(conv, nn.AdaptiveMaxPool2d(1), size=17)    # all 8 units: pixels 0..16
    assert whole["size"] == (17, 17) and whole["start"] == (8.0, 8.0)
    uneven = _rf(conv, nn.AdaptiveAvgPool2d(3), size=17)   # over-estimate: the whole input
    assert uneven == {"size": (17, 17), "jump": (0, 0), "start": (8.0, 8.0)}


class _Branchy(nn.Module):
    """Functional forms, a residual add, a concat of branches of different widths, a pad."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.wide = nn.Conv2d(4, 4, 5, padding=2)
        self.weight = nn.Parameter(torch.rand(4, 8, 3, 3))
        self.out = nn.Identity()

    def forward(self, x):
        x = F.relu(self.stem(x))                                  # pixels -1..1
        x = x + self.wide(x)                                      # union: -3..3
        x = torch.cat([x, F.avg_pool2d(x, 3, 1, 1)], dim=1)       # union: -4..4
        x = F.pad(x, (1, 1, 1, 1))                                # unit 0 moves: -5..3
        x = F.conv2d(x, self.weight, stride=2)                    # -5..5, jump 2
        return self.out(x).flatten(1)


def test_functional_graph_by_hand_and_by_gradient():
    model = _Branchy()
    assert receptive_field(model, "wide", (3, 16, 16)) == {
        "size": (7, 7), "jump": (1, 1), "start": (0.0, 0.0)}
    rf = receptive_field(model, "out", (3, 16, 16))
    assert rf == {"size": (11, 11), "jump": (2, 2), "start": (0.0, 0.0)}
    units = [(0, 0), (4, 3), (7, 7)]
    assert _gradient_boxes(_linearised(model), ["out"], (16, 16), [units]) == [[
        receptive_field_box(rf, i, j, (16, 16)) for i, j in units]]


def test_functional_max_pool_and_permute_round_trip():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.mix = nn.Linear(4, 4)                  # ConvNeXt style: channels last
            self.out = nn.Identity()

        def forward(self, x):
            x = F.max_pool2d(self.conv(x), kernel_size=2, stride=2)
            x = self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.out(x.contiguous())

    assert receptive_field(Net(), "out", (3, 16, 16)) == {
        "size": (4, 4), "jump": (2, 2), "start": (1.5, 1.5)}


def test_squeeze_excitation_scale_is_left_out():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.squeeze = nn.AdaptiveAvgPool2d(1)
            self.excite = nn.Conv2d(4, 4, 1)
            self.out = nn.Identity()

        def forward(self, x):
            x = self.conv(x)
            return self.out(x * torch.sigmoid(self.excite(self.squeeze(x))))

    assert receptive_field(SE(), "out", (3, 16, 16))["size"] == (3, 3)


# ------------------------------------------------------------ the errors

def test_unknown_layer_names_the_choices():
    with pytest.raises(ValueError, match="unknown layer 'conv'.*Valid layers: 0"):
        receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3)), "conv", (3, 8, 8))


def test_non_spatial_layer_is_refused():
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    with pytest.raises(ValueError, match="'fc'.*not a spatial map"):
        receptive_field(model, "fc", (3, 64, 64))


def test_unsupported_op_is_named_not_guessed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="module '1'.*Upsample"):
        receptive_field(model, "2", (3, 16, 16))
    assert receptive_field(model, "0", (3, 16, 16))["size"] == (3, 3)  # before it: fine


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3)), "0", (16, 16))
    with pytest.raises(ValueError, match=r"does not run on inputs of shape \(1, 1, 16, 16\)"):
        receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3)), "0", (1, 16, 16))
    with pytest.raises(ValueError, match="does not run on inputs"):
        receptive_field(_Untraceable(), "b", (1, 16, 16))


# ------------------------------------------------- fallback and hygiene

class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this, hooks must take over."""

    def __init__(self, functional_gap: bool = False):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.b = nn.Conv2d(4, 4, 3)
        self.gap = functional_gap

    def forward(self, x):
        if x.sum() > 1e9:  # never true, but fx cannot know
            x = x * 2
        x = self.pool(self.a(x))
        return self.b(F.relu(x) if self.gap else x)


def test_untraceable_chain_falls_back_to_hooks():
    model = _Untraceable()
    assert receptive_field(model, "b", (3, 16, 16)) == {"size": (8, 8), "jump": (2, 2), "start": (2.5, 2.5)}
    assert count_hooks(model) == 0


def test_untraceable_with_hidden_functional_op_is_refused():
    model = _Untraceable(functional_gap=True)
    with pytest.raises(ValueError, match="torch.fx could not trace"):
        receptive_field(model, "b", (3, 16, 16))
    assert count_hooks(model) == 0


def test_model_is_left_as_it_was():
    model = torchvision.models.resnet18(weights=None, num_classes=3).train()
    model.layer2.eval()
    before = {k: (v, v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
    receptive_field(model, "layer3", (3, 64, 64))
    assert model.training and not model.layer2.training and model.layer3.training
    after = model.state_dict(keep_vars=True)
    for k, (obj, value) in before.items():
        assert after[k] is obj and after[k].device == value.device and torch.equal(after[k], value), k
    assert count_hooks(model) == 0


def test_lazy_top_level_name():
    assert reportgen.receptive_field is receptive_field


def test_box_clips_to_the_image():
    rf = {"size": (3, 5), "jump": (2, 2), "start": (0.0, 1.0)}
    assert receptive_field_box(rf, 0, 0, (10, 10)) == (0, 0, 2, 4)      # y -1..1, x -1..3
    assert receptive_field_box(rf, 2, 3, (10, 10)) == (3, 5, 6, 10)     # y 3..5, x 5..9
    assert receptive_field_box(rf, 9, 9, (10, 10)) == (10, 10, 10, 10)  # outside: empty
    even = {"size": (4, 4), "jump": (1, 1), "start": (1.5, 1.5)}
    assert receptive_field_box(even, 0, 0, (8, 8)) == (0, 0, 4, 4)

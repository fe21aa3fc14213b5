"""What a torch.fx node does to a feature map: one classification for every graph walker.

Receptive fields (``receptive_field``), incremental occlusion (``incremental``)
and the architecture diagram (``architecture``) each walk a traced graph and
must agree on what an op is. :func:`node_kind` names it, from the module class
(``call_module``), the function (``call_function``) or the tensor method's
name (``call_method``):

* ``conv``: a 2-d convolution (``nn.Conv2d``, ``F.conv2d``);
* ``pool``: a windowed 2-d pool (max, average, LP);
* ``adaptive_pool``: an adaptive 2-d pool (output size fixed, window derived);
* ``pad``: explicit padding of the last dims;
* ``pointwise``: each output pixel from the same pixel of one input
  (activations, dropout and Identity in eval, casts and copies);
* ``norm``: normalisation that is per pixel in eval (batch norm with its
  running statistics, local response norm across channels);
* ``stat_norm``: normalisation by statistics over the map (instance, group,
  layer norm): every pixel depends on all of them;
* ``arith``: elementwise arithmetic on several operands (add, mul, where, ...),
  broadcasting allowed;
* ``softmax``: softmax along one dim;
* ``reshape``: view/reshape/flatten/squeeze and their modules;
* ``permute``: permute or transpose;
* ``concat``: cat/concat/stack;
* ``split``: chunk/split;
* ``getitem``: ``x[...]``, or one element of a tuple result;
* ``linear``: ``nn.Linear`` (over the last dim);
* ``other``: anything else. Placeholder, get_attr and output nodes are their op.

The kinds say what an op *is*; each walker decides what it can do with one
(receptive fields need exact windows, incremental inference exact per-pixel
locality, the diagram only dataflow). :func:`is_inplace` says whether an op
overwrites its first argument.

:class:`Tracer` is the one ``torch.fx`` tracer the walkers share: for a timm
model it keeps timm's own fx leaf modules (``Conv2dSame``, ``BatchNormAct2d``,
...) whole and autowraps timm's functions, as ``timm.models._features_fx``
does, so TF-"same" padding (a pad computed from the input size) traces.
:func:`tf_same` says whether a module pads that way; :func:`same_padding`
computes the leading pad from the size.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

CONV = "conv"
POOL = "pool"
ADAPTIVE_POOL = "adaptive_pool"
PAD = "pad"
POINTWISE = "pointwise"
NORM = "norm"
STAT_NORM = "stat_norm"
ARITH = "arith"
SOFTMAX = "softmax"
RESHAPE = "reshape"
PERMUTE = "permute"
CONCAT = "concat"
SPLIT = "split"
GETITEM = "getitem"
LINEAR = "linear"
OTHER = "other"

KINDS = (CONV, POOL, ADAPTIVE_POOL, PAD, POINTWISE, NORM, STAT_NORM, ARITH, SOFTMAX, RESHAPE, PERMUTE,
         CONCAT, SPLIT, GETITEM, LINEAR, OTHER)


def _nn(*names: str) -> tuple:
    """The nn classes of these names that this torch has."""
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


_ACTIVATIONS = _nn(
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Hardswish", "Hardsigmoid", "Hardtanh", "Hardshrink", "Softshrink", "Tanhshrink", "Sigmoid",
    "LogSigmoid", "Tanh", "Softplus", "Softsign", "Threshold", "Softmax2d")

# (classes, kind), first match wins
_MODULE_KINDS = (
    ((nn.Conv2d,), CONV),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d), POOL),
    ((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), ADAPTIVE_POOL),
    (_nn("ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d", "CircularPad2d"), PAD),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), SOFTMAX),
    (_ACTIVATIONS + (nn.modules.dropout._DropoutNd, nn.Identity), POINTWISE),
    ((nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d), NORM),
    ((nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm), STAT_NORM),
    ((nn.Flatten, nn.Unflatten), RESHAPE),
    ((nn.Linear,), LINEAR),
)


def _optional_funcs() -> set:
    """torchvision's fx-wrapped per-sample ops (identity in eval)."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return set()
    return {stochastic_depth}


_FUNCTION_GROUPS = (
    (CONV, {F.conv2d, torch.conv2d}),
    (POOL, {F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices, F.avg_pool2d}),
    (ADAPTIVE_POOL, {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}),
    (PAD, {F.pad}),
    (POINTWISE, {
        operator.neg, operator.pos, operator.abs, torch.neg, torch.abs, torch.relu, torch.relu_,
        torch.sigmoid, torch.tanh, torch.clamp, torch.exp, torch.sqrt, torch.rsqrt,
        F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
        F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.prelu, F.threshold,
        F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    } | _optional_funcs()),
    (NORM, {torch.batch_norm, F.batch_norm, F.local_response_norm}),
    (STAT_NORM, {F.instance_norm, F.group_norm, F.layer_norm}),
    (ARITH, {
        operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
        operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.add, torch.sub,
        torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
    }),
    (SOFTMAX, {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax}),
    (RESHAPE, {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten}),
    (PERMUTE, {torch.permute, torch.transpose}),
    (CONCAT, {torch.cat, torch.concat, torch.stack}),
    (SPLIT, {torch.chunk, torch.split}),
    (GETITEM, {operator.getitem}),
)
_FUNCTION_KINDS: Dict[Callable, str] = {f: kind for kind, funcs in _FUNCTION_GROUPS for f in funcs}

_METHOD_GROUPS = (
    (POINTWISE, "neg abs exp sqrt rsqrt relu relu_ sigmoid sigmoid_ tanh tanh_ clamp clamp_ clamp_min "
                "clamp_min_ clamp_max contiguous clone detach float double half to type type_as requires_grad_"),
    (ARITH, "add add_ sub sub_ mul mul_ div div_ pow masked_fill masked_fill_"),
    (SOFTMAX, "softmax log_softmax"),
    (RESHAPE, "view reshape flatten unflatten squeeze unsqueeze view_as reshape_as expand_as"),
    (PERMUTE, "permute transpose"),
    (SPLIT, "chunk split"),
)
_METHOD_KINDS: Dict[str, str] = {name: kind for kind, names in _METHOD_GROUPS for name in names.split()}

_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.ipow}


def module_kind(module: nn.Module) -> str:
    """The kind of a module call (see the module docstring)."""
    if _from_timm(module) and type(module).__name__ in _TIMM_NORM_ACT:
        return NORM
    for classes, kind in _MODULE_KINDS:
        if isinstance(module, classes):
            return kind
    return OTHER


def function_kind(target: Any) -> str:
    """The kind of a ``call_function`` target."""
    return _FUNCTION_KINDS.get(target, OTHER)


def method_kind(name: str) -> str:
    """The kind of a ``call_method`` (a tensor method, by name)."""
    return _METHOD_KINDS.get(name, OTHER)


def node_kind(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """The kind of any fx node; ``modules`` maps the graph's module names (``dict(gm.named_modules())``)."""
    if node.op == "call_module":
        module = modules.get(node.target)
        return OTHER if module is None else module_kind(module)
    if node.op == "call_function":
        return function_kind(node.target)
    if node.op == "call_method":
        return method_kind(node.target)
    return node.op


def _underscored(name: str) -> bool:
    """relu_, add_: a trailing underscore that is not a dunder marks PyTorch's in-place forms."""
    return name.endswith("_") and not name.endswith("__")


def is_inplace(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether the op overwrites its first argument: ``x.relu_()``, ``x += y``,
    ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``."""
    if node.op == "call_method":
        return _underscored(node.target)
    if node.op == "call_function":
        return bool(node.kwargs.get("inplace")) or node.target in _INPLACE_OPERATORS \
            or _underscored(getattr(node.target, "__name__", ""))
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    return False


# ------------------------------------------------------------------ timm-aware tracing

# timm's modules that pad TF-"same" at run time: padding depends on the input size
_TF_SAME = ("Conv2dSame", "StdConv2dSame", "ScaledStdConv2dSame", "MaxPool2dSame", "AvgPool2dSame")
# timm's leaves that are a batch norm plus a pointwise activation (and dropout)
_TIMM_NORM_ACT = ("BatchNormAct2d", "FrozenBatchNormAct2d", "SyncBatchNormAct", "InplaceAbn")


def _from_timm(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


def is_timm_model(model: nn.Module) -> bool:
    """Whether any of the model's modules is one of timm's classes."""
    return any(_from_timm(m) for m in model.modules())


def timm_notrace(model: nn.Module) -> Tuple[frozenset, Tuple[Callable, ...]]:
    """timm's fx leaf module classes and autowrap functions, for a timm model; empty otherwise."""
    if not is_timm_model(model):
        return frozenset(), ()
    try:
        import timm.models._features_fx  # noqa: F401 - registers the model-specific leaves
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - a timm model without timm importable
        return frozenset(), ()
    return frozenset(get_notrace_modules()), tuple(f for f in get_notrace_functions() if callable(f))


class Tracer(fx.Tracer):
    """``fx.Tracer`` that also treats timm's registered leaves as leaves (timm models only)."""

    def __init__(self, model: nn.Module) -> None:
        leaves, functions = timm_notrace(model)
        super().__init__(autowrap_functions=functions)
        self.extra_leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:  # noqa: D102 - fx hook
        return type(m) in self.extra_leaves or super().is_leaf_module(m, module_qualified_name)


def tf_same(module: nn.Module) -> bool:
    """A timm conv/pool whose padding TF-"same" computes from the input size at run time."""
    return _from_timm(module) and type(module).__name__ in _TF_SAME


def same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int]) -> Tuple[int, int]:
    """Leading (top, left) TF-"same" padding for an input of ``size`` (H, W): the total pad
    makes ceil(size / stride) outputs, its smaller half goes first (timm's ``pad_same``)."""
    lead = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        lead.append(total // 2)
    return lead[0], lead[1]

"""Input attributions built from gradients of one class score.

Saliency, Deconvnet, Guided Backprop, Integrated Gradients and SmoothGrad all
answer "which input pixels move the target logit" and all return raw
(N, C, H, W) float32 attributions, with the conventions of Captum so results
can be compared with it one to one.

Gradients are taken with ``torch.autograd.grad`` with respect to the input
only: nothing accumulates in the model's ``.grad`` fields, so explaining a
model never changes what a caller's optimizer would see.

The target-score helpers at the top (``class_scores``, ``resolve_targets``)
are shared with the CAM family in ``reportgen.analyses.cam``.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from reportgen.errors import MethodNotApplicable
from reportgen.model.hooks import eval_mode
from reportgen.model.outputs import OutputKey, select_output

Target = Union[None, int, Sequence[int], np.ndarray, torch.Tensor]
Baseline = Union[float, int, np.ndarray, torch.Tensor]

IG_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


# --------------------------------------------------------------------------- targets

def class_scores(model: nn.Module, x: torch.Tensor, output_key: OutputKey = None) -> torch.Tensor:
    """The (N, classes) score tensor of ``model(x)``.

    Every method reads scores through here so tuple/dict outputs are handled
    in one place and a model that does not return per-class scores fails with
    a message rather than an indexing error deep inside a method.
    """
    scores = select_output(model(x), output_key)
    if not torch.is_tensor(scores) or scores.ndim != 2 or scores.shape[0] != x.shape[0]:
        shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise ValueError(f"the model's class scores have shape {shape}; expected ({x.shape[0]}, classes)"
                         " (set output= to pick the right output of the model)")
    return scores


def resolve_targets(target: Target, scores: torch.Tensor) -> torch.Tensor:
    """Target class per image as a (N,) long tensor on the scores' device.

    None means the predicted class. Negative indices are refused rather than
    wrapped around: a -1 in a target list is far more often a bug (an
    "unknown" label) than a wish for the last class.
    """
    n, k = scores.shape
    if target is None:
        return scores.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise ValueError(f"target must be an int, a list of {n} ints or None, not {target!r}")
    if isinstance(target, (int, np.integer)):
        values = [int(target)] * n
    else:
        if torch.is_tensor(target):
            target = target.detach().cpu().reshape(-1).tolist()
        elif isinstance(target, np.ndarray):
            target = target.reshape(-1).tolist()
        values = list(target)
        if len(values) != n:
            raise ValueError(f"target has {len(values)} entries but there are {n} images")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"targets must be ints (class indices), got {v!r}")
        values = [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < k]
    if bad:
        raise ValueError(f"target {bad[0]} is out of range: the model has {k} classes (valid: 0..{k - 1})")
    return torch.tensor(values, dtype=torch.long, device=scores.device)


def _target_score(scores: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's target logit.

    Summing is safe because in eval mode image i's logit depends on image i
    only, so d(sum)/d(x_i) is exactly d(logit_i)/d(x_i).
    """
    return scores.gather(1, t[:, None]).sum()


def _input_gradients(model: nn.Module, x: torch.Tensor, target: Target,
                     output_key: OutputKey) -> Tuple[torch.Tensor, torch.Tensor]:
    """(d target logit / d x, resolved targets), targets resolved on this same forward."""
    x = x.detach().clone().requires_grad_(True)
    scores = class_scores(model, x, output_key)
    t = resolve_targets(target, scores)
    (grad,) = torch.autograd.grad(_target_score(scores, t), x)
    return grad, t


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------- saliency

def saliency(model: nn.Module, images: torch.Tensor, target: Target = None, *,
             output_key: OutputKey = None) -> np.ndarray:
    """|d logit_target / d input| (Simonyan et al. 2014; Captum ``Saliency(abs=True)``)."""
    with eval_mode(model), torch.enable_grad():
        grad, _ = _input_gradients(model, images, target, output_key)
    return _numpy(grad.abs())


# --------------------------------------------------------------------------- modified ReLU backward

class _GuidedReLU(torch.autograd.Function):
    """(Clipped) ReLU whose backward passes grad only where the unit passes its input
    (0 < x, and x < cap for a clipped ReLU) AND grad > 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cap: Optional[float] = None) -> torch.Tensor:
        # save a fresh mask, not x: an in-place caller overwrites x right after
        passes = (x > 0) if cap is None else (x > 0) & (x < cap)
        ctx.save_for_backward(passes.to(x.dtype))
        return x.clamp(min=0, max=cap)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad.clamp(min=0) * mask, None


class _DeconvReLU(torch.autograd.Function):
    """(Clipped) ReLU whose backward is relu(grad), ignoring the forward mask (Zeiler & Fergus 2014)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cap: Optional[float] = None) -> torch.Tensor:
        return x.clamp(min=0, max=cap)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.clamp(min=0), None


# function -> in place? (None: read F.relu's inplace argument)
_RELU_FUNCS = {torch.relu: False, torch.nn.functional.relu: None, torch.Tensor.relu: False,
               torch.relu_: True, torch.Tensor.relu_: True}
_F = torch.nn.functional
# clipped ReLUs: relu6 (nn.ReLU6) and hardtanh with a lower bound of 0 (nn.Hardtanh(0, c))
_CLIPPED = {_F.relu6, _F.hardtanh, _F.hardtanh_}
# smooth or non-gating nonlinearities: the modified-ReLU methods have no rule for them
_OTHER_ACTIVATIONS = {
    _F.silu: "SiLU (x·sigmoid(x))", _F.hardswish: "Hardswish", _F.gelu: "GELU", _F.mish: "Mish",
    _F.elu: "ELU", _F.selu: "SELU", _F.celu: "CELU", _F.leaky_relu: "LeakyReLU", _F.softplus: "Softplus",
    _F.prelu: "PReLU", torch.sigmoid: "sigmoid", torch.tanh: "tanh", _F.hardsigmoid: "Hardsigmoid"}


def _clip_args(func, args, kwargs) -> Optional[Tuple[float, bool]]:
    """(cap, inplace) of a clipped-ReLU call, or None when the call is not one (hardtanh(-1, 1))."""
    if func is _F.relu6:
        return 6.0, bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
    lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
    if float(lo) != 0.0 or float(hi) <= 0.0:
        return None
    inplace = func is _F.hardtanh_ or bool(kwargs.get("inplace", args[3] if len(args) > 3 else False))
    return float(hi), inplace


class _ReluOverride(TorchFunctionMode):
    """Routes every ReLU and clipped ReLU the forward pass calls through a modified-backward Function.

    A ``__torch_function__`` mode sees ``nn.ReLU`` (it calls ``F.relu``),
    ``nn.ReLU(inplace=True)``, ``F.relu``, ``torch.relu``, ``x.relu()`` and
    ``x.relu_()`` alike, and ``nn.ReLU6`` / ``nn.Hardtanh(0, c)`` (``F.relu6``,
    ``F.hardtanh``), whose positive part follows the same rule. Module backward
    hooks (Captum's way) see only ``nn.ReLU`` modules and break on in-place ones,
    silently degrading to plain gradients for functional ReLUs. Other
    activations (SiLU, GELU, Hardswish, ...) are counted by name in ``others``.
    """

    def __init__(self, rule: type):
        super().__init__()
        self.rule = rule
        self.calls = 0
        self.others: Dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not (args and torch.is_tensor(args[0])):
            return func(*args, **kwargs)
        cap = None
        if func in _RELU_FUNCS:
            inplace = _RELU_FUNCS[func]
            if inplace is None:  # F.relu(x, inplace=...)
                inplace = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        elif func in _CLIPPED and _clip_args(func, args, kwargs) is not None:
            cap, inplace = _clip_args(func, args, kwargs)
        else:
            if func in _OTHER_ACTIVATIONS:
                name = _OTHER_ACTIVATIONS[func]
                self.others[name] = self.others.get(name, 0) + 1
            return func(*args, **kwargs)
        self.calls += 1
        x = args[0]
        y = self.rule.apply(x, cap)
        if inplace:
            # keep in-place semantics for callers that ignore the return value;
            # autograd routes the gradient of x's new version through y
            x.copy_(y)
            return x
        return y


@contextlib.contextmanager
def relu_backward_override(rule: str) -> Iterator[_ReluOverride]:
    """Inside this block every (clipped) ReLU's backward follows ``rule`` ("guided" or "deconv")."""
    mode = _ReluOverride({"guided": _GuidedReLU, "deconv": _DeconvReLU}[rule])
    with mode:
        yield mode


def _modified_relu_gradients(model: nn.Module, images: torch.Tensor, target: Target,
                             output_key: OutputKey, rule: str, name: str) -> np.ndarray:
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodNotApplicable(f"{name} cannot see the ReLUs of a TorchScript model (they run outside "
                                  "Python); use saliency or integrated_gradients for it")
    with eval_mode(model), torch.enable_grad():
        with relu_backward_override(rule) as mode:
            grad, _ = _input_gradients(model, images, target, output_key)
    if mode.calls == 0:
        # never hand back plain gradients under another method's name
        found = ", ".join(sorted(mode.others)) or "no ReLU"
        raise MethodNotApplicable(
            f"{name} does not apply: it is defined by a rule for ReLU's gate (and clipped ReLUs such as "
            f"ReLU6), and this model's nonlinearities are {found}, which have none (nn.ReLU, F.relu, "
            "torch.relu, Tensor.relu, ReLU6 or Hardtanh(0, c) were never called); saliency, integrated "
            "gradients and SmoothGrad apply to any model")
    return _numpy(grad)


def guided_backprop(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                    output_key: OutputKey = None) -> np.ndarray:
    """Gradient where every ReLU passes only positive gradients at positive inputs (Springenberg 2015)."""
    return _modified_relu_gradients(model, images, target, output_key, "guided", "guided_backprop")


def deconvnet(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              output_key: OutputKey = None) -> np.ndarray:
    """Zeiler's deconvnet: every ReLU's backward is relu(grad), whatever its forward input was."""
    return _modified_relu_gradients(model, images, target, output_key, "deconv", "deconvnet")


# --------------------------------------------------------------------------- integrated gradients

def ig_steps(steps: int, rule: str = "gausslegendre") -> Tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1] for the path integral, as Captum's approximation_methods.

    Gauss-Legendre is Captum's default: with the same ``steps`` it is far more
    accurate than a Riemann sum on the smooth stretches of the path.
    """
    if rule not in IG_RULES:
        raise ValueError(f"unknown integration rule {rule!r}; valid rules: {', '.join(IG_RULES)}")
    if rule == "gausslegendre":
        if steps < 1:
            raise ValueError("steps must be at least 1")
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1 + nodes), 0.5 * weights
    if steps < 2:
        raise ValueError("steps must be at least 2 for a Riemann sum")
    kind = rule.split("_")[1]
    w = np.full(steps, 1.0 / steps)
    if kind == "trapezoid":
        w[0] /= 2
        w[-1] /= 2
        a = np.linspace(0, 1, steps)
    elif kind == "left":
        a = np.linspace(0, 1 - 1 / steps, steps)
    elif kind == "middle":
        a = np.linspace(1 / (2 * steps), 1 - 1 / (2 * steps), steps)
    else:
        a = np.linspace(1 / steps, 1, steps)
    return a, w


def _baseline_like(baseline: Baseline, images: torch.Tensor) -> torch.Tensor:
    """The baseline broadcast to the images' (N, C, H, W), on their device and dtype."""
    if isinstance(baseline, (int, float, np.floating, np.integer)) and not isinstance(baseline, bool):
        return torch.full_like(images, float(baseline))
    if isinstance(baseline, np.ndarray):
        baseline = torch.from_numpy(baseline)
    if not torch.is_tensor(baseline):
        raise ValueError(f"baseline must be a number or a tensor, not {type(baseline).__name__}")
    b = baseline.to(device=images.device, dtype=images.dtype)
    if b.ndim == images.ndim - 1:
        b = b[None]
    try:
        return b.expand_as(images).clone()
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the "
                         f"images' shape {tuple(images.shape)}") from None


def integrated_gradients_with_delta(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                                    steps: int = 50, rule: str = "gausslegendre",
                                    baseline: Baseline = 0.0, batch_size: int = 64,
                                    output_key: OutputKey = None) -> Tuple[np.ndarray, np.ndarray]:
    """Integrated Gradients (Sundararajan et al. 2017) and its completeness delta.

    attr = (x - x') * sum_k w_k * dF/dx(x' + a_k (x - x')), the same sum as
    Captum's ``IntegratedGradients``; ``rule`` is Captum's ``method`` (renamed
    because explain() takes the attribution method's name as ``method``).
    ``delta`` (N,) is sum(attr) - (F(x) - F(x')) per image: how far the approximation is from the
    completeness axiom, which the report shows so a reader knows whether ``steps`` was enough.
    ``batch_size`` is the number of path points per forward pass; it changes
    speed and memory only.
    """
    alphas, weights = ig_steps(steps, rule)
    n = images.shape[0]
    with eval_mode(model), torch.enable_grad():
        x = images.detach()
        base = _baseline_like(baseline, x)
        with torch.no_grad():
            end = class_scores(model, x, output_key)
            t = resolve_targets(target, end)
            start = class_scores(model, base, output_key)
        diff = x - base
        total = torch.zeros_like(x)
        per_pass = max(1, batch_size // max(n, 1))
        for lo in range(0, len(alphas), per_pass):
            chunk = alphas[lo:lo + per_pass]
            path = torch.cat([base + float(a) * diff for a in chunk], dim=0).requires_grad_(True)
            scores = class_scores(model, path, output_key)
            (grad,) = torch.autograd.grad(_target_score(scores, t.repeat(len(chunk))), path)
            for j, w in enumerate(weights[lo:lo + per_pass]):
                total += float(w) * grad[j * n:(j + 1) * n]
        attr = total * diff
        gap = (end.gather(1, t[:, None]) - start.gather(1, t[:, None]))[:, 0]
        delta = attr.flatten(1).sum(dim=1) - gap
    return _numpy(attr), _numpy(delta)


def integrated_gradients(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                         steps: int = 50, rule: str = "gausslegendre", baseline: Baseline = 0.0,
                         batch_size: int = 64, output_key: OutputKey = None) -> np.ndarray:
    """Integrated Gradients attributions only; see ``integrated_gradients_with_delta``."""
    attr, _ = integrated_gradients_with_delta(model, images, target, steps=steps, rule=rule,
                                              baseline=baseline, batch_size=batch_size,
                                              output_key=output_key)
    return attr


# --------------------------------------------------------------------------- smoothgrad

def smoothgrad(model: nn.Module, images: torch.Tensor, target: Target = None, *,
               noise_level: float = 0.15, samples: int = 25, seed: int = 0, batch_size: int = 64,
               output_key: OutputKey = None) -> np.ndarray:
    """Mean gradient over noisy copies of each image (Smilkov et al. 2017).

    The noise std is ``noise_level`` times each image's value range (the
    paper's 10-20 %). Noise comes from a CPU generator seeded with ``seed``
    per image, so the result is deterministic, identical on CPU and GPU, and
    the same for an image alone or inside a batch. The target is fixed from
    the clean image so every sample explains the same class.
    """
    if samples < 1:
        raise ValueError("samples must be at least 1")
    with eval_mode(model), torch.enable_grad():
        x = images.detach()
        with torch.no_grad():
            t = resolve_targets(target, class_scores(model, x, output_key))
        sigma = noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        out = torch.zeros_like(x)
        for i in range(x.shape[0]):
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn((samples, *x.shape[1:]), generator=gen, dtype=x.dtype).to(x.device)
            noisy = x[i:i + 1] + sigma[i] * noise
            acc = torch.zeros_like(x[0])
            for lo in range(0, samples, batch_size):
                grad, _ = _input_gradients(model, noisy[lo:lo + batch_size],
                                           t[i:i + 1].repeat(len(noisy[lo:lo + batch_size])), output_key)
                acc += grad.sum(dim=0)
            out[i] = acc / samples
    return _numpy(out)

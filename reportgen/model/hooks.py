"""Context managers for touching a model without leaving traces on it.

Every piece of reportgen that registers a hook or flips train/eval does it
inside one of these, so an exception half-way through an analysis cannot
leave a user's model instrumented or in the wrong mode. Code that needs every
module's call on one forward pass (output shapes, the order layers run in,
which tensor feeds which module) takes it from :func:`record_calls`.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from reportgen.model.layer_lookup import get_layer


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode and restore every module's own flag after."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


@contextlib.contextmanager
def hooks(handles: Iterable[torch.utils.hooks.RemovableHandle] = ()) -> Iterator[List]:
    """Collect hook handles and remove all of them on exit, even on error.

    Usage: ``with hooks() as hs: hs.append(m.register_forward_hook(f))``.
    """
    collected: List = list(handles)
    try:
        yield collected
    finally:
        for h in collected:
            h.remove()
        collected.clear()


def hook_layers(stack: contextlib.ExitStack, model: nn.Module, names: Sequence[str],
                make_hook: Callable[[str], Callable]) -> None:
    """Forward hooks ``make_hook(name)`` on the named layers, removed when ``stack`` closes.

    For context managers that hook in ``__enter__``: an unknown name after a
    known one raises before any ``with`` block exists, so no ``__exit__`` would
    run; the stack is closed here instead and no hook stays behind.
    """
    try:
        handles = stack.enter_context(hooks())
        for name in names:
            handles.append(get_layer(model, name).register_forward_hook(make_hook(name)))
    except BaseException:
        stack.close()
        raise


class ActivationRecorder:
    """Record the outputs of named modules during forward passes.

    Tensors are kept as they are (on their device, attached to the graph when
    ``keep_graph``) so callers decide when to move or detach them.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], keep_graph: bool = False):
        self.model = model
        self.names = list(names)
        self.keep_graph = keep_graph
        self.outputs: Dict[str, torch.Tensor] = {}
        self._stack = contextlib.ExitStack()

    def _hook(self, name: str) -> Callable:
        def fn(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.outputs[name] = out if self.keep_graph else out.detach()
        return fn

    def __enter__(self) -> "ActivationRecorder":
        hook_layers(self._stack, self.model, self.names, self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self.outputs = {} if exc[0] is not None else self.outputs


@dataclass(frozen=True)
class Call:
    """One module call of a recorded forward pass.

    ``inputs`` and ``output`` hold storage-less ``meta`` twins of the tensors
    (shape, dtype and size, no values), or with ``keep_tensors`` the tensors
    themselves, alive until the recording is dropped so ``id()`` tells them
    apart (later in-place ops may have changed their values).
    """

    name: str                  # dotted module name, "" for the model itself
    module: nn.Module
    order: int                 # rank of the call's start: a container starts before its children
    inputs: Tuple[Any, ...]    # the positional arguments the module received
    output: Any                # what it returned

    @property
    def tensor(self) -> Optional[torch.Tensor]:
        """The output tensor, or element 0 of a tuple/list output (as ActivationRecorder takes it)."""
        out = self.output
        if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
            out = out[0]
        return out if torch.is_tensor(out) else None

    @property
    def leaf(self) -> bool:
        """True for a module without children."""
        return next(self.module.children(), None) is None


@dataclass
class Recording:
    """What :func:`record_calls` saw."""

    calls: List[Call]          # in the order the calls finished (forward hooks fire child-first)
    output: Any                # the model's output


def record_calls(model: nn.Module, *inputs: Any, keep_tensors: bool = False) -> Recording:
    """Run ``model`` once on ``inputs`` (eval mode, no grad), recording every module's calls.

    Every module, the model itself included, is hooked; a module called
    several times gives one Call per call. Without ``keep_tensors`` the pass
    holds no more memory than a plain one. Hooks come off and train/eval
    flags are restored even when the forward pass raises.
    """
    calls: List[Call] = []
    starts = itertools.count()
    running: Dict[int, List[int]] = {}   # id(module) -> start ranks of its unfinished calls
    keep = (lambda v: v) if keep_tensors else _meta_twins

    def on_start(module, _args):
        running.setdefault(id(module), []).append(next(starts))

    def on_finish(name: str) -> Callable:
        def fn(module, args, output):
            calls.append(Call(name, module, running[id(module)].pop(), keep(args), keep(output)))
        return fn

    with torch.no_grad(), eval_mode(model), hooks() as hs:
        for name, m in model.named_modules():
            hs.append(m.register_forward_pre_hook(on_start))
            hs.append(m.register_forward_hook(on_finish(name)))
        output = model(*inputs)
    return Recording(calls, output)


def _meta_twins(v: Any) -> Any:
    """``v`` with each tensor (in tuples, lists and dict values) replaced by a meta tensor
    of its shape and dtype; one without a plain shape (a ragged nested tensor) is kept as it is."""
    if torch.is_tensor(v):
        try:
            return torch.empty(v.shape, dtype=v.dtype, device="meta")
        except RuntimeError:
            return v
    if isinstance(v, (tuple, list)):
        twins = [_meta_twins(x) for x in v]
        return twins if isinstance(v, list) else tuple(twins)
    if isinstance(v, dict):
        return {k: _meta_twins(x) for k, x in v.items()}
    return v


def count_hooks(model: nn.Module) -> int:
    """Number of forward/backward hooks on the model; tests use it to prove cleanup."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total

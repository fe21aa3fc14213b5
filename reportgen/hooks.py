"""Context managers for touching a model without leaving traces on it.

Every piece of reportgen that registers a hook or flips train/eval does it
inside one of these, so an exception half-way through an analysis cannot
leave a user's model instrumented or in the wrong mode.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, Iterator, List

import torch
from torch import nn


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
        from reportgen.layers import get_layer

        handles = self._stack.enter_context(hooks())
        try:
            for name in self.names:
                handles.append(get_layer(self.model, name).register_forward_hook(self._hook(name)))
        except BaseException:
            # an unknown layer after a known one: no with block, so no __exit__ either
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self.outputs = {} if exc[0] is not None else self.outputs


def count_hooks(model: nn.Module) -> int:
    """Number of forward/backward hooks on the model; tests use it to prove cleanup."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total

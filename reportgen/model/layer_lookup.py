"""Looking a module up by its dotted name, with the close matches when there is none.

The bottom of the model-touching helpers: ``reportgen.model.hooks`` (recorders) and
``reportgen.model.layers`` (automatic picks) both import it, and it imports neither.
"""
from __future__ import annotations

from typing import List

from torch import nn

from reportgen.errors import suggest


def layer_names(model: nn.Module) -> List[str]:
    """Dotted names of every sub-module (the root, named "", excluded)."""
    return [n for n, _ in model.named_modules() if n]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name``; ValueError listing close matches otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = layer_names(model)
    shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    raise ValueError(f"unknown layer {name!r}{suggest(name, names, most=5)}. Valid layers: {shown}")

"""Pulling the class scores out of whatever a model's forward returns."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

OutputKey = Optional[Union[int, str]]


def select_output(out: Any, key: OutputKey) -> torch.Tensor:
    """The class-score tensor in ``out``.

    ``key`` None means: the tensor itself, else element 0 of a tuple/list, else
    ``logits`` of a dict or object (Hugging Face style). An int indexes a
    sequence, a str is a dict key or attribute. Inception/GoogLeNet in train
    mode return named tuples whose element 0 is the main head, so the default
    is right for them too.
    """
    if key is None:
        if torch.is_tensor(out):
            return out
        if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
            return out[0]
        if isinstance(out, dict) and "logits" in out:
            return out["logits"]
        if hasattr(out, "logits") and torch.is_tensor(out.logits):
            return out.logits
        raise ValueError(
            f"the model returned {type(out).__name__}, not a tensor; set model.output to the "
            "index, key or attribute that holds the class scores")
    if isinstance(key, int):
        if not isinstance(out, (tuple, list)):
            raise ValueError(f"model.output is {key} but the model returned {type(out).__name__}, not a tuple/list")
        if not -len(out) <= key < len(out):
            raise ValueError(f"model.output is {key} but the model returned {len(out)} outputs")
        return out[key]
    if isinstance(out, dict):
        if key not in out:
            raise ValueError(f"model.output is {key!r} but the model's dict has keys {sorted(map(str, out))}")
        return out[key]
    if hasattr(out, key):
        return getattr(out, key)
    raise ValueError(f"model.output is {key!r} but {type(out).__name__} has no such attribute")


class ScoresModel(torch.nn.Module):
    """Wraps a model so its forward returns the class-score tensor only.

    Attribution code can then treat every model alike. The wrapped model stays
    reachable as ``.model`` and layer names are looked up on it, not the wrapper.
    """

    def __init__(self, model: torch.nn.Module, key: OutputKey = None):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.model(x), self.key)

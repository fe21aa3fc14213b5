"""Building the user's model from a spec: torchvision name, factory or TorchScript.

No weights are ever downloaded: torchvision builders get ``weights=None``, and
a builder that would fetch anything is given no chance to.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

DEFAULT_INPUT_SIZE = (3, 224, 224)

# torchvision builders whose architecture needs a minimum input size or a fixed one.
_MIN_SIDE = {"inception_v3": 75, "googlenet": 15}


class ModelError(Exception):
    """A model that cannot be built; the resolver adds the spec key path."""

    def __init__(self, message: str, key: str = "model"):
        super().__init__(message)
        self.message = message
        self.key = key


def torchvision_classifiers() -> List[str]:
    """Sorted names of torchvision's image-classification builders."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def build_torchvision(name: str, kwargs: Dict[str, Any]) -> nn.Module:
    import torchvision.models as tvm

    names = torchvision_classifiers()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ModelError(f"unknown torchvision classification model {name!r}{hint}", "model.torchvision")
    kw = dict(kwargs)
    for key in ("weights", "pretrained"):
        if kw.get(key) not in (None, False):
            raise ModelError(f"reportgen never downloads weights; remove {key!r} and list the weights "
                             "under checkpoints instead", f"model.kwargs.{key}")
        kw.pop(key, None)
    if name in ("googlenet", "inception_v3"):
        # aux heads stay as torchvision builds them (checkpoints usually carry them;
        # in eval mode the model returns the main logits only); this silences the
        # "default initialization will change" warning without changing weights' layout
        kw.setdefault("init_weights", True)
    try:
        return tvm.get_model(name, weights=None, **kw)
    except TypeError as e:
        raise ModelError(f"torchvision {name}(): {e}", "model.kwargs") from None
    except ValueError as e:
        raise ModelError(f"torchvision {name}(): {e}", "model.kwargs") from None


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """Make the spec's folder importable for the duration of the import only."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def build_factory(ref: str, kwargs: Dict[str, Any], base_dir: Path) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    with _on_path(base_dir):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ModelError(f"cannot import module {module_name!r} ({e}); it must be importable "
                             f"from {base_dir} or sys.path", "model.factory") from None
        except Exception as e:  # the user's module raised while importing
            raise ModelError(f"importing {module_name!r} failed: {type(e).__name__}: {e}",
                             "model.factory") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ModelError(f"module {module_name!r} has no attribute {part!r}{hint}", "model.factory")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{ref!r} is not callable", "model.factory")
    try:
        model = obj(**kwargs)
    except TypeError as e:
        raise ModelError(f"{ref}(**kwargs) failed: {e}", "model.kwargs") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module", "model.factory")
    return model


def load_torchscript(path: Path) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"TorchScript archive not found: {path}", "model.torchscript")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelError(f"{path} is not a loadable TorchScript archive: {e}".splitlines()[0],
                         "model.torchscript") from None


def unwrap(model: nn.Module) -> nn.Module:
    """DataParallel / DistributedDataParallel hide the real model under .module."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def build_model(model_spec: Dict[str, Any], base_dir: Path) -> nn.Module:
    """The nn.Module the spec names, on the CPU, in eval mode, with its initial weights."""
    kwargs = model_spec.get("kwargs") or {}
    if model_spec.get("torchvision"):
        model = build_torchvision(model_spec["torchvision"], kwargs)
    elif model_spec.get("factory"):
        model = build_factory(model_spec["factory"], kwargs, base_dir)
    else:
        ts = Path(model_spec["torchscript"])
        model = load_torchscript(ts if ts.is_absolute() else base_dir / ts)
    return unwrap(model).eval()


def input_size(model_spec: Dict[str, Any], model: nn.Module) -> Tuple[int, int, int]:
    """(C, H, W): the spec's, else inferred channels of the first conv and 224x224."""
    if model_spec.get("input_size"):
        return tuple(model_spec["input_size"])  # type: ignore[return-value]
    channels = 3
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            channels = m.in_channels
            break
    side = max(224, _MIN_SIDE.get(model_spec.get("torchvision") or "", 0))
    return (channels, side, side)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelError("device is 'cuda' but no CUDA device is available", "device")
        return torch.device("cuda")
    return torch.device("cpu")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def is_scripted(model: nn.Module) -> bool:
    """TorchScript modules run fine but accept no hooks and cannot be traced."""
    return isinstance(model, torch.jit.ScriptModule)


def require_hooks(model: nn.Module, what: str) -> None:
    """Raise NotApplicable for analyses that must look inside a TorchScript model."""
    from reportgen.errors import NotApplicable

    if is_scripted(model):
        raise NotApplicable(f"{what} needs forward hooks, which TorchScript models do not support; "
                            "give the model as `torchvision:` or `factory:` with a checkpoint to see it")


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Where the model's weights live (parameters, else buffers), else ``fallback``.

    Inputs are moved there rather than the model moved to them: the user placed it.
    """
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback

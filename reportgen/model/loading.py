"""Building the user's model from a spec: torchvision name, factory, TorchScript or timm name.

No weights are ever downloaded: torchvision builders get ``weights=None``, timm
gets ``pretrained=False``, and a builder that would fetch anything is given no
chance to.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from reportgen.errors import suggest

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
        raise ModelError(f"unknown torchvision classification model {name!r}{suggest(name, names, most=3)}",
                         "model.torchvision")
    kw = _without_downloads(kwargs, ("weights", "pretrained"))
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


def _without_downloads(kwargs: Dict[str, Any], keys: Tuple[str, ...]) -> Dict[str, Any]:
    """The builder's kwargs, refusing any that would fetch or read weights themselves."""
    kw = dict(kwargs)
    for key in keys:
        if kw.get(key) not in (None, False):
            raise ModelError(f"reportgen never downloads or loads weights in the builder; remove {key!r} "
                             "and list the weights under checkpoints instead", f"model.kwargs.{key}")
        kw.pop(key, None)
    return kw


TIMM_EXTRA = "needs the timm package: pip install 'timm>=0.9' (reportgen's timm extra)"
# What reportgen reads from a timm model's pretrained_cfg: preprocessing only. Its
# download addresses (url, hf_hub_id, ...) are never read, so they never reach a report.
TIMM_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise ModelError(TIMM_EXTRA, "model.timm") from None
    return timm


def build_timm(name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``; ``name`` may carry a tag (``resnet18.a1_in1k``)."""
    timm = _timm()
    if ":" in name:   # hf-hub:..., local-dir:...: timm would read a config from there
        raise ModelError(f"{name!r} names a hub or folder; give a timm architecture name "
                         "(timm.list_models()) and list the weights under checkpoints", "model.timm")
    arch = name.partition(".")[0]
    if not timm.is_model(arch):
        raise ModelError(f"unknown timm model {name!r}{suggest(arch, timm.list_models(), most=3)}", "model.timm")
    kw = _without_downloads(kwargs, ("pretrained", "checkpoint_path"))
    try:
        return timm.create_model(name, pretrained=False, **kw)
    except TypeError as e:
        raise ModelError(f"timm {name}(): {e}", "model.kwargs") from None
    except Exception as e:  # timm's builders raise RuntimeError/ValueError/AssertionError on bad settings
        key = "model.kwargs" if kw else "model.timm"
        raise ModelError(f"timm {name}(): {type(e).__name__}: {e}".splitlines()[0], key) from None


def timm_data_config(model: nn.Module) -> Dict[str, Any]:
    """The preprocessing a timm model's pretrained_cfg gives (TIMM_DATA_KEYS only; {} if none)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        return {}
    return {k: cfg[k] for k in TIMM_DATA_KEYS if cfg.get(k) is not None}


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


# The user's own modules that factory imports brought in, as they were imported:
# name -> (module object, real path of its .py source, digest of that source then).
_user_modules: Dict[str, Tuple[ModuleType, str, Optional[str]]] = {}


def _source_digest(path: str) -> Optional[str]:
    from reportgen.cache import file_digest

    try:
        return file_digest(Path(path))
    except OSError:
        return None


def _user_source(module: ModuleType) -> Optional[str]:
    """The .py file a module ran from, unless it is compiled, standard library or installed.

    Only such modules are ever imported again: re-running torch's or
    torchvision's import would register their operators twice.
    """
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    path = os.path.realpath(path)
    if {"site-packages", "dist-packages"} & set(Path(path).parts):
        return None
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    return None if path.startswith(stdlib + os.sep) else path


def _user_modules_stale(module_name: str, base_dir: Path) -> bool:
    """Whether a fresh import would run other code than the user's modules imported earlier.

    True when one of them changed on disk since, or when the factory's
    top-level package would now come from another file (the same module name
    in another spec's folder).
    """
    for name, (module, source, digest) in _user_modules.items():
        if sys.modules.get(name) is module and _source_digest(source) != digest:
            return True
    top = module_name.partition(".")[0]
    if top in _user_modules and sys.modules.get(top) is _user_modules[top][0]:
        found = importlib.machinery.PathFinder.find_spec(top, [str(base_dir)])
        if found is not None and found.origin and os.path.realpath(found.origin) != _user_modules[top][1]:
            return True
    return False


def _forget_user_modules() -> None:
    """Un-import every recorded user module, and drop bytecode Python would wrongly trust.

    They go together: a module keeps what it took from a helper (``from
    helper import Block``), so an edited helper means its importers run again
    too. A .pyc is trusted by the source's size and mtime in whole seconds,
    which a quick same-size edit keeps.
    """
    for name, (module, source, digest) in _user_modules.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
        if _source_digest(source) != digest:
            with contextlib.suppress(OSError):
                os.remove(importlib.util.cache_from_source(source))
    _user_modules.clear()
    importlib.invalidate_caches()


def user_module_digests(module_name: str, base_dir: Path) -> Dict[str, Optional[str]]:
    """The user's modules that came with a factory import, name -> digest of the source now.

    Those of the factory's top-level package and those in the spec's folder:
    the build's cache key hashes them all, since an edited helper beside the
    factory changes the results as surely as an edited factory.
    """
    top, root = module_name.partition(".")[0], os.path.realpath(base_dir) + os.sep
    return {name: _source_digest(source) for name, (_, source, _) in sorted(_user_modules.items())
            if name.partition(".")[0] == top or source.startswith(root)}


def _import_factory_module(module_name: str, base_dir: Path) -> ModuleType:
    """Import ``module_name`` as a fresh process would, yet only when its code changed.

    A module reportgen imported for a factory is imported again when it, or
    another of the user's modules that came with it (a helper next to it, a
    submodule of its package), changed on disk since: the second build in a
    notebook runs the edited code, which is also what the cache key hashes.
    Unchanged, the module is reused. Modules imported by someone else, and
    installed or standard-library ones, are left to Python.
    """
    if _user_modules_stale(module_name, base_dir):
        _forget_user_modules()
    before = set(sys.modules)
    try:
        return importlib.import_module(module_name)
    finally:
        for name in sorted(set(sys.modules) - before):
            # the factory's module, and modules of top-level packages new with it
            if name == module_name or name.partition(".")[0] not in before:
                source = _user_source(sys.modules[name])
                if source is not None:
                    _user_modules[name] = (sys.modules[name], source, _source_digest(source))


def build_factory(ref: str, kwargs: Dict[str, Any], base_dir: Path) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    with _on_path(base_dir):
        try:
            module = _import_factory_module(module_name, base_dir)
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
            raise ModelError(f"module {module_name!r} has no attribute {part!r}{suggest(part, names, most=3)}",
                             "model.factory")
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


# The ways a spec names its model, model: {<source>: ...}, exactly one of them
MODEL_SOURCES = ("torchvision", "factory", "torchscript", "timm")
ONE_SOURCE = f"needs exactly one of {', '.join(MODEL_SOURCES[:-1])} or {MODEL_SOURCES[-1]}"


def source_of(model_spec: Dict[str, Any]) -> Optional[str]:
    """Which of MODEL_SOURCES the spec's ``model`` uses (the first one given), or None."""
    return next((key for key in MODEL_SOURCES if model_spec.get(key)), None)


def build_model(model_spec: Dict[str, Any], base_dir: Path) -> nn.Module:
    """The nn.Module the spec names, on the CPU, in eval mode, with its initial weights."""
    kwargs = model_spec.get("kwargs") or {}
    source = source_of(model_spec)
    value = model_spec.get(source) if source else None
    if source == "torchvision":
        model = build_torchvision(value, kwargs)
    elif source == "factory":
        model = build_factory(value, kwargs, base_dir)
    elif source == "timm":
        model = build_timm(value, kwargs)
    elif source == "torchscript":
        ts = Path(value)
        model = load_torchscript(ts if ts.is_absolute() else base_dir / ts)
    else:
        raise ModelError(ONE_SOURCE, "model")
    return unwrap(model).eval()


def input_size(model_spec: Dict[str, Any], model: nn.Module) -> Tuple[int, int, int]:
    """(C, H, W): the spec's, else inferred channels of the first conv and 224x224.

    A timm model's H and W come from its pretrained_cfg (a ViT needs exactly its own).
    """
    if model_spec.get("input_size"):
        return tuple(model_spec["input_size"])  # type: ignore[return-value]
    channels = 3
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            channels = m.in_channels
            break
    cfg_size = timm_data_config(model).get("input_size") if model_spec.get("timm") else None
    if cfg_size is not None and len(cfg_size) == 3:
        return (channels, int(cfg_size[1]), int(cfg_size[2]))
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

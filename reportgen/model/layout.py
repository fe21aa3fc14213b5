"""Where a layer keeps its channels, and how to read its output as (N, C, H, W).

Every analysis of feature maps reads a layer's output as (N, C, H, W). CNNs
produce that; vision transformers produce token sequences (N, L, C) with
class and register tokens in front of the patch grid, and Swin or ConvNeXt
blocks work channels-last, (N, H, W, C). Read as (N, C, H, W), a Swin stage
(N, 7, 7, 768) becomes "7 channels of 7 x 768" and a ViT attention tensor
(N, heads, L, d) becomes "3 channels": pictures that look fine and are wrong.
This module is the one place that tells the layouts apart (``detect``, for
every module call of one recorded forward pass), states them (``Layout``) and
converts (``to_nchw``). It only reads shapes, module types and model
attributes: no forward pass of its own, no hooks.

The rule, for a call whose output (element 0 of a tuple) has the example's
batch size N:

* **Never a feature map** (``Layout.skip`` says why; automatic choices pass
  over it, a layer named in the spec is still read): attention internals - the
  module or one of its ancestors is an attention module (class name containing
  "Attention", ``nn.MultiheadAttention``, a dotted-name part such as ``attn``,
  ``attention``, ``q``/``k``/``v``/``qkv``, ``q_norm``/``k_norm``,
  ``attn_drop``) - and 4-D tensors shaped like attention: (N, heads, L, L)
  weights or (N, heads, L, d) with L a token count of the same pass. Outputs
  whose batch differs from N (Swin's window-partitioned tensors) and outputs
  of other ranks get no layout at all.
* **(N, A, B, D), 4-D**: the first of these that speaks decides.
  1. The module itself: a conv / batch-, group- or instance-norm whose channel
     count is A, timm's ``LayerNorm2d`` (a LayerNorm over dim 1) or an
     ``output_fmt`` of NCHW say "nchw"; an ``nn.Linear`` (it always acts on the
     last dim), an ``nn.LayerNorm`` over the last dim or an ``output_fmt`` of
     NHWC say "nhwc". timm's ``feature_info`` says which dim holds a listed
     stage's ``num_chs``.
  2. The modules that read the same shape: a shape that a Linear, LayerNorm or
     ``input_fmt="NHWC"`` pool consumes is channels-last wherever it occurs in
     the pass (dropouts, activations, residual containers have no evidence of
     their own); a shape a conv consumes is channels-first.
  3. The input's grid: only the channels-last reading (A, B) is the input
     downsampled by one integer stride on both axes, while (B, D) does not
     even have the input's aspect (strides within a factor 1.5) -> "nhwc".
  4. Otherwise "nchw": the reading reportgen always had, so plain CNNs never
     get a different answer.
* **(N, L, C), 3-D**: tokens when L less p prefix tokens is a grid h x w.
  p is the model's ``num_prefix_tokens`` (timm: class, distillation and
  register tokens) when that fits, else the smallest p in 0..8 that does;
  the grid is a known one (timm's ``patch_embed.grid_size``, the grid of a 4-D
  map of the same pass) or else the input downsampled by one integer stride on
  both axes (14 x 14 for 196 tokens of a 224 x 224 input; 13 x 15 is refused).
  A 3-D output whose last dim, not its middle one, is the size of a known grid
  is a map flattened channels-first, (N, C, H*W), and gets no layout.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

KINDS = ("nchw", "nhwc", "tokens")
AUTO = "auto"
MAX_PREFIX = 8          # class + distillation + register tokens tried when the model does not say
ASPECT_SLACK = 1.5      # strides of a channels-first grid may differ by this factor (ceil rounding)

Grid = Tuple[int, int]

# dotted-name parts that mark attention internals (timm, torchvision, Hugging Face spellings)
_ATTENTION_PART = re.compile(r"^(attn|attention|self_attn|self_attention|cross_attn|mha|q|k|v|qkv|"
                             r"q_norm|k_norm|q_proj|k_proj|v_proj|attn_drop|attn_dropout|softmax)$")


@dataclass(frozen=True)
class Layout:
    """How one layer's output holds a feature map.

    ``kind``: "nchw", "nhwc" or "tokens"; ``grid``: its spatial (h, w);
    ``channels``: C; ``prefix``: tokens before the grid (class/register
    tokens), dropped by ``to_nchw``; ``skip``: why automatic layer choices pass
    this call over (an attention internal), None when they may pick it.
    """

    kind: str
    grid: Grid
    channels: int
    prefix: int = 0
    skip: Optional[str] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(C, h, w) of the map ``to_nchw`` gives."""
        return (self.channels, self.grid[0], self.grid[1])

    def to_nchw(self, t: torch.Tensor) -> torch.Tensor:
        return to_nchw(t, self)

    def describe(self) -> str:
        if self.kind == "tokens":
            extra = f", {self.prefix} prefix token(s) dropped" if self.prefix else ""
            return f"tokens (N, L, C) on a {self.grid[0]}x{self.grid[1]} grid{extra}"
        return {"nchw": "channels-first (N, C, H, W)", "nhwc": "channels-last (N, H, W, C)"}[self.kind]


def to_nchw(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``t`` laid out as ``layout`` says, as (N, C, h, w): a view where it can be, autograd kept."""
    if layout.kind == "nchw":
        _expect(t, 4, layout)
        return t
    if layout.kind == "nhwc":
        _expect(t, 4, layout)
        return t.permute(0, 3, 1, 2)
    if layout.kind == "tokens":
        _expect(t, 3, layout)
        h, w = layout.grid
        grid = t[:, layout.prefix:, :]
        if grid.shape[1] != h * w:
            raise ValueError(f"a token tensor of shape {tuple(t.shape)} has {grid.shape[1]} tokens after "
                             f"{layout.prefix} prefix token(s), not the {h}x{w} grid of its layout")
        return grid.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    raise ValueError(f"unknown layout {layout.kind!r}; valid: {', '.join(KINDS)}")


def refit(layout: Layout, shape: Sequence[int]) -> Layout:
    """``layout`` for an output of ``shape`` from another input size: same kind and prefix,
    the grid read off the shape (a token grid keeps the old grid's aspect where it can)."""
    shape = tuple(int(v) for v in shape)
    if layout.kind == "nchw" and len(shape) == 4:
        return Layout("nchw", (shape[2], shape[3]), shape[1], 0, layout.skip)
    if layout.kind == "nhwc" and len(shape) == 4:
        return Layout("nhwc", (shape[1], shape[2]), shape[3], 0, layout.skip)
    if layout.kind == "tokens" and len(shape) == 3 and shape[1] > layout.prefix:
        count = shape[1] - layout.prefix
        gh, gw = layout.grid
        h = max(1, round(math.sqrt(count * gh / gw)))
        grid = (h, count // h) if count % h == 0 else (1, count)
        return Layout("tokens", grid, shape[2], layout.prefix, layout.skip)
    raise ValueError(f"an output of shape {list(shape)} does not fit the {layout.kind} layout of its layer")


def _expect(t: torch.Tensor, ndim: int, layout: Layout) -> None:
    if t.ndim != ndim:
        raise ValueError(f"a {layout.kind} layout needs a {ndim}-D tensor, got shape {tuple(t.shape)}")


# --------------------------------------------------------------------------- grid arithmetic

def strided_grid(grid: Grid, input_hw: Sequence[int]) -> bool:
    """True when ``grid`` is the input downsampled by one integer stride on both axes.

    Each side may be the floor or the ceiling of input / stride (valid or
    'same' padding); so 14 x 14 fits 224 x 224 (stride 16), 13 x 15 fits no stride.
    """
    h, w = grid
    big_h, big_w = int(input_hw[0]), int(input_hw[1])
    if min(h, w) < 1 or h > big_h or w > big_w:
        return False
    stride_h = {s for s in (big_h // h, -(-big_h // h)) if s >= 1}
    for s in sorted(stride_h):
        if h in (big_h // s, -(-big_h // s)) and w in (big_w // s, -(-big_w // s)):
            return True
    return False


def same_aspect(grid: Grid, input_hw: Sequence[int], slack: float = ASPECT_SLACK) -> bool:
    """True when the strides H/h and W/w agree within ``slack`` (a lenient check for CNN maps)."""
    h, w = grid
    if min(h, w) < 1:
        return False
    sh, sw = int(input_hw[0]) / h, int(input_hw[1]) / w
    return max(sh, sw) / min(sh, sw) <= slack


def token_grid(count: int, input_hw: Sequence[int], known: Iterable[Grid] = ()) -> Optional[Grid]:
    """The (h, w) grid ``count`` tokens cover: a known grid of that size, else a strided one."""
    if count < 1:
        return None
    for g in known:
        if g[0] * g[1] == count:
            return (int(g[0]), int(g[1]))
    big_h, big_w = int(input_hw[0]), int(input_hw[1])
    guess = max(1, round(math.sqrt(count * big_h / big_w)))
    for h in (guess, guess - 1, guess + 1):
        if h >= 1 and count % h == 0 and strided_grid((h, count // h), input_hw):
            return (h, count // h)
    return None


def prefix_candidates(model: Optional[nn.Module]) -> List[int]:
    """Prefix-token counts to try, the model's own first (timm's ``num_prefix_tokens``)."""
    stated = getattr(model, "num_prefix_tokens", None) if model is not None else None
    first = [int(stated)] if isinstance(stated, int) and stated >= 0 else []
    return list(dict.fromkeys(first + list(range(MAX_PREFIX + 1))))


def tokens_layout(shape: Sequence[int], model: Optional[nn.Module], input_hw: Sequence[int],
                  known: Iterable[Grid] = ()) -> Optional[Layout]:
    """A tokens Layout for a (N, L, C) shape, or None when no prefix leaves a grid.

    Known grids are tried for every prefix before arithmetic is, so 196 patch
    tokens of a ViT with one class token are read as 14 x 14 (no prefix), not
    as 195 = 13 x 15 after dropping a token that is not there.
    """
    if len(shape) != 3:
        return None
    length, channels = int(shape[1]), int(shape[2])
    known = [tuple(g) for g in known]
    prefixes = prefix_candidates(model)
    sizes = {g[0] * g[1] for g in known}
    if channels in sizes and not any(length - p in sizes for p in prefixes):
        return None          # (N, C, H*W): a map flattened channels-first, not a token sequence
    for pool in (known, None):
        for p in prefixes:
            if length - p < 1:
                continue
            if pool is not None:
                grid = next((g for g in pool if g[0] * g[1] == length - p), None)
            else:
                grid = token_grid(length - p, input_hw)
            if grid is not None:
                return Layout("tokens", (int(grid[0]), int(grid[1])), channels, p)
    return None


def infer(shape: Sequence[int], kind: str, model: Optional[nn.Module], input_hw: Sequence[int],
          known: Iterable[Grid] = ()) -> Optional[Layout]:
    """The Layout of an output of ``shape`` (batch first) when its kind is stated; None if it cannot be."""
    shape = tuple(int(v) for v in shape)
    if kind == "nchw" and len(shape) == 4:
        return Layout("nchw", (shape[2], shape[3]), shape[1])
    if kind == "nhwc" and len(shape) == 4:
        return Layout("nhwc", (shape[1], shape[2]), shape[3])
    if kind == "tokens":
        return tokens_layout(shape, model, input_hw, known)
    if kind not in KINDS:
        raise ValueError(f"unknown layout {kind!r}; valid: {AUTO}, {', '.join(KINDS)}")
    return None


def linear_input_layout(shape: Sequence[int], model: Optional[nn.Module],
                        input_hw: Sequence[int]) -> Optional[Layout]:
    """How the input of an ``nn.Linear`` holds a map: 4-D is channels-last (a Linear acts on
    the last dim), 3-D is tokens when they lie on a grid; None for a plain (N, C) vector."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 4:
        return infer(shape, "nhwc", model, input_hw)
    if len(shape) == 3:
        return tokens_layout(shape, model, input_hw)
    return None


# --------------------------------------------------------------------------- evidence

def is_attention_internal(name: str, modules: Dict[str, nn.Module]) -> bool:
    """True for an attention module or anything inside one (by class or by dotted name)."""
    parts = name.split(".") if name else []
    for i in range(1, len(parts) + 1):
        if _ATTENTION_PART.match(parts[i - 1]):
            return True
        m = modules.get(".".join(parts[:i]))
        if m is not None and (isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__):
            return True
    return False


def _fmt(module: nn.Module, attr: str) -> Optional[str]:
    """timm's ``input_fmt``/``output_fmt`` (a str enum: NCHW, NHWC, NCL, NLC) as "nchw"/"nhwc"."""
    value = getattr(module, attr, None)
    value = getattr(value, "value", value)
    return {"NCHW": "nchw", "NHWC": "nhwc"}.get(value) if isinstance(value, str) else None


def _module_reads(module: nn.Module, shape: Tuple[int, ...]) -> Optional[str]:
    """Which dim of a 4-D ``shape`` (N, A, B, D) ``module`` treats as channels, from its type and size."""
    _, a, _, d = shape
    if isinstance(module, nn.Linear):
        return "nhwc"                                    # a Linear always acts on the last dim
    if isinstance(module, nn.LayerNorm):
        norm = tuple(module.normalized_shape)
        if len(norm) != 1:
            return None
        if type(module).__name__.lower().endswith("2d"):  # timm LayerNorm2d: over dim 1
            return "nchw" if norm[0] == a else None
        return "nhwc" if norm[0] == d else None
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return "nchw"
    if isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
        return "nchw" if module.num_features == a else None
    if isinstance(module, nn.GroupNorm):
        return "nchw" if module.num_channels == a else None
    return None


def _feature_info(model: Optional[nn.Module]) -> Dict[str, int]:
    """timm's ``feature_info``: module name -> its channel count."""
    info = getattr(model, "feature_info", None) if model is not None else None
    out: Dict[str, int] = {}
    try:
        for entry in info or []:
            if isinstance(entry, dict) and isinstance(entry.get("module"), str) and isinstance(
                    entry.get("num_chs"), int):
                out[entry["module"]] = entry["num_chs"]
    except TypeError:
        return {}
    return out


def _output_tensor(output: Any) -> Optional[torch.Tensor]:
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        output = output[0]
    return output if torch.is_tensor(output) else None


def _own_evidence(name: str, module: nn.Module, shape: Tuple[int, ...],
                  channels_of: Dict[str, int]) -> Optional[str]:
    said = _fmt(module, "output_fmt") or _module_reads_output(module, shape)
    if said:
        return said
    c = channels_of.get(name)
    if c is not None and (shape[1] == c) != (shape[3] == c):
        return "nchw" if shape[1] == c else "nhwc"
    return None


def _module_reads_output(module: nn.Module, shape: Tuple[int, ...]) -> Optional[str]:
    """What the module's own output size says: a conv's out_channels, a Linear's out_features, ..."""
    _, a, _, d = shape
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return "nchw" if module.out_channels == a else None
    if isinstance(module, nn.Linear):
        return "nhwc" if module.out_features == d else None
    return _module_reads(module, shape)


def detect(calls: Sequence[Any], model: Optional[nn.Module], input_hw: Sequence[int],
           batch: int) -> List[Optional[Layout]]:
    """One Layout (or None) per recorded call, in the calls' order (see the module docstring).

    ``calls`` are ``reportgen.model.hooks.Call`` records of one forward pass of
    ``batch`` images of ``input_hw`` (H, W): name, module, inputs, output.
    """
    modules = dict(model.named_modules()) if model is not None else {}
    channels_of = _feature_info(model)
    outs = [_output_tensor(c.output) for c in calls]
    shapes = [tuple(int(v) for v in t.shape) if t is not None else None for t in outs]
    ok = [s is not None and len(s) in (3, 4) and s[0] == batch for s in shapes]
    token_counts: Set[int] = {s[1] for s, good in zip(shapes, ok) if good and len(s) == 3}

    # evidence per 4-D shape from the modules that read it (step 2)
    by_shape: Dict[Tuple[int, ...], Set[str]] = {}
    for c, s, good in zip(calls, shapes, ok):
        for x in c.inputs if isinstance(c.inputs, (tuple, list)) else ():
            if torch.is_tensor(x) and x.ndim == 4 and int(x.shape[0]) == batch:
                key = tuple(int(v) for v in x.shape)
                said = _fmt(c.module, "input_fmt") or _module_reads(c.module, key)
                if said:
                    by_shape.setdefault(key[1:], set()).add(said)
        if good and len(s) == 4:
            said = _own_evidence(c.name, c.module, s, channels_of)
            if said:
                by_shape.setdefault(s[1:], set()).add(said)

    layouts: List[Optional[Layout]] = [None] * len(calls)
    for i, (c, s, good) in enumerate(zip(calls, shapes, ok)):
        if good and len(s) == 4:
            kind = _kind_4d(c, s, channels_of, by_shape, input_hw)
            layouts[i] = infer(s, kind, model, input_hw)
            attention_like = (s[2] == s[3] and s[2] in token_counts) or (
                s[2] in token_counts and kind == "nchw" and not same_aspect((s[2], s[3]), input_hw))
            skip = _skip(c.name, modules) or ("attention-shaped (N, heads, L, ...)" if attention_like else None)
            if layouts[i] is not None and skip:
                layouts[i] = _with_skip(layouts[i], skip)
    known = known_grids(model, layouts)
    for i, (c, s, good) in enumerate(zip(calls, shapes, ok)):
        if good and len(s) == 3:
            found = tokens_layout(s, model, input_hw, known)
            skip = _skip(c.name, modules)
            layouts[i] = _with_skip(found, skip) if found is not None and skip else found
    return layouts


def _skip(name: str, modules: Dict[str, nn.Module]) -> Optional[str]:
    return "attention internal" if is_attention_internal(name, modules) else None


def _with_skip(layout: Layout, skip: str) -> Layout:
    return Layout(layout.kind, layout.grid, layout.channels, layout.prefix, skip)


def _kind_4d(call: Any, shape: Tuple[int, ...], channels_of: Dict[str, int],
             by_shape: Dict[Tuple[int, ...], Set[str]], input_hw: Sequence[int]) -> str:
    own = _own_evidence(call.name, call.module, shape, channels_of)
    if own:
        return own
    seen = by_shape.get(shape[1:], set())
    if len(seen) == 1:
        return next(iter(seen))
    _, a, b, d = shape
    if strided_grid((a, b), input_hw) and not same_aspect((b, d), input_hw):
        return "nhwc"
    return "nchw"


def known_grids(model: Optional[nn.Module], layouts: Sequence[Optional[Layout]]) -> List[Grid]:
    """Grids a token count may stand for: timm's ``patch_embed.grid_size``, then the pass's feature maps."""
    grids: List[Grid] = []
    patch = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(patch, (tuple, list)) and len(patch) == 2 and all(isinstance(v, int) for v in patch):
        grids.append((int(patch[0]), int(patch[1])))
    grids += [lay.grid for lay in layouts if lay is not None and lay.skip is None]
    return list(dict.fromkeys(grids))

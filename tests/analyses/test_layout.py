"""Layouts: channels-first, channels-last and token outputs, told apart and read as (N, C, H, W).

Tiny hand-built models with answers known by construction: a channels-last
block (conv -> permute -> LayerNorm -> Linear -> permute back, as ConvNeXt and
Swin do it), a ViT-like model with a class token and an ``attn`` module, and
a map flattened channels-first, which is not a token sequence.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reportgen.model.hooks import record_calls
from reportgen.model.layers import call_layouts, last_spatial_layer, layer_layouts, spatial_calls
from reportgen.model.layout import (
    Layout,
    detect,
    infer,
    linear_input_layout,
    refit,
    strided_grid,
    to_nchw,
    token_grid,
    tokens_layout,
)

# ----------------------------------------------------------------- models

class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class ChannelsLast(nn.Module):
    """conv (N, 6, 8, 8) -> permute -> LayerNorm(6) -> Linear(6, 6) -> GELU -> permute back -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.to_last = Permute(0, 2, 3, 1)
        self.norm = nn.LayerNorm(6)
        self.mlp = nn.Linear(6, 6)
        self.act = nn.GELU()
        self.to_first = Permute(0, 3, 1, 2)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.act(self.mlp(self.norm(self.to_last(self.conv(x)))))
        return self.fc(self.to_first(y).mean(dim=(2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention with timm's module names; ``q_norm`` sees (N, heads, L, d)."""

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.Identity()
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q = self.q_norm(q)
        weights = self.softmax(q @ k.transpose(-2, -1) / (dim // self.heads) ** 0.5)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenNet(nn.Module):
    """Patch conv (4x4 grid on 16x16) -> class token + 16 patch tokens -> 2 blocks -> norm -> head(class token)."""

    num_prefix_tokens = 1

    def __init__(self, dim: int = 8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class Flattened(nn.Module):
    """(N, 4, 8, 8) -> (N, 4, 64): a map flattened channels-first, then a Linear over the 64 positions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.flat = nn.Flatten(2)
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        return self.fc(self.flat(self.conv(x))).flatten(1)


def _layouts(model, x):
    return {c.name: lay for c, lay in call_layouts(model.eval(), x) if c.name}


# ----------------------------------------------------------------- conversion and arithmetic

def test_to_nchw_reads_each_layout_by_hand():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)      # (N, C, H, W)
    assert torch.equal(to_nchw(x, Layout("nchw", (4, 5), 3)), x)
    last = x.permute(0, 2, 3, 1).contiguous()                                     # (N, H, W, C)
    assert torch.equal(to_nchw(last, Layout("nhwc", (4, 5), 3)), x)
    tokens = last.reshape(2, 20, 3)                                               # raster order
    with_cls = torch.cat([torch.full((2, 2, 3), -1.0), tokens], dim=1)          # 2 prefix tokens
    assert torch.equal(to_nchw(with_cls, Layout("tokens", (4, 5), 3, prefix=2)), x)
    with pytest.raises(ValueError, match="not the 4x5 grid"):
        to_nchw(tokens, Layout("tokens", (4, 5), 3, prefix=2))
    with pytest.raises(ValueError, match="needs a 4-D tensor"):
        to_nchw(tokens, Layout("nhwc", (4, 5), 3))


def test_grid_arithmetic_takes_one_integer_stride():
    assert strided_grid((14, 14), (224, 224)) and strided_grid((7, 7), (224, 224))
    assert strided_grid((14, 20), (224, 320)) and strided_grid((2, 2), (64, 48))   # ceil(48 / 32) = 2
    assert not strided_grid((13, 15), (224, 224)) and not strided_grid((56, 96), (224, 224))
    assert token_grid(196, (224, 224)) == (14, 14)
    assert token_grid(195, (224, 224)) is None and token_grid(197, (224, 224)) is None
    assert token_grid(12, (64, 64), known=[(3, 4)]) == (3, 4)


def test_a_token_count_with_a_class_token_finds_its_prefix():
    vit = TokenNet()
    assert tokens_layout((1, 197, 192), vit, (224, 224)) == Layout("tokens", (14, 14), 192, 1)
    # 196 patch tokens (before the class token is added): no prefix, not 195 = 13 x 15
    assert tokens_layout((1, 196, 192), vit, (224, 224), known=[(14, 14)]) == Layout("tokens", (14, 14), 192, 0)
    # two register tokens after the class token, and a model that does not say: the smallest prefix that fits
    assert tokens_layout((1, 199, 64), None, (224, 224)).prefix == 3
    # the size of a known grid in the last dim: (N, C, H*W), not tokens
    assert tokens_layout((1, 4, 64), None, (8, 8), known=[(8, 8)]) is None


def test_stated_kinds_and_refits():
    assert infer((1, 7, 7, 768), "nhwc", None, (224, 224)) == Layout("nhwc", (7, 7), 768)
    assert infer((1, 768, 7, 7), "nchw", None, (224, 224)) == Layout("nchw", (7, 7), 768)
    assert infer((1, 49, 768), "nhwc", None, (224, 224)) is None
    with pytest.raises(ValueError, match="unknown layout"):
        infer((1, 3, 4, 4), "chw", None, (4, 4))
    lay = Layout("tokens", (4, 4), 8, 1)
    assert refit(lay, (2, 65, 8)) == Layout("tokens", (8, 8), 8, 1)                # another input size
    assert refit(Layout("nhwc", (7, 7), 5), (2, 3, 3, 5)).grid == (3, 3)
    assert linear_input_layout((2, 3, 3, 5), None, (12, 12)) == Layout("nhwc", (3, 3), 5)
    assert linear_input_layout((2, 5), None, (12, 12)) is None


# ----------------------------------------------------------------- detection on recorded passes

def test_a_cnn_is_channels_first_everywhere(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=1, h=16, w=16)
    found = _layouts(model, x)
    assert {n: lay.kind for n, lay in found.items() if lay is not None} == {
        "conv1": "nchw", "relu1": "nchw", "pool": "nchw", "conv2": "nchw", "relu2": "nchw", "gap": "nchw"}
    assert found["fc"] is None


def test_channels_last_outputs_are_told_apart_from_channels_first():
    torch.manual_seed(0)
    found = _layouts(ChannelsLast(), torch.randn(1, 3, 16, 16))
    assert {n: (lay.kind, lay.channels, lay.grid) for n, lay in found.items() if lay is not None} == {
        "conv": ("nchw", 6, (8, 8)), "to_last": ("nhwc", 6, (8, 8)), "norm": ("nhwc", 6, (8, 8)),
        "mlp": ("nhwc", 6, (8, 8)), "act": ("nhwc", 6, (8, 8)), "to_first": ("nchw", 6, (8, 8))}


def test_tokens_with_a_class_token_and_attention_internals():
    torch.manual_seed(0)
    model, x = TokenNet().eval(), torch.randn(1, 3, 16, 16)
    found = _layouts(model, x)
    assert found["patch"] == Layout("nchw", (4, 4), 8)
    assert found["blocks.0.norm1"] == Layout("tokens", (4, 4), 8, 1)
    assert found["blocks.1.mlp.0"] == Layout("tokens", (4, 4), 16, 1)            # the MLP's hidden width
    for internal in ("blocks.0.attn", "blocks.0.attn.qkv", "blocks.0.attn.q_norm", "blocks.0.attn.softmax"):
        assert found[internal] is not None and found[internal].skip == "attention internal", internal
    picks = {name for name, _ in spatial_calls(model, x)}
    assert "blocks.1.norm1" in picks and not any(".attn" in n for n in picks)
    assert {hw for _, hw in spatial_calls(model, x)} == {(4, 4)}


def test_the_cam_choice_is_the_last_layer_whose_patch_tokens_feed_the_class_token():
    torch.manual_seed(0)
    model, x = TokenNet().eval(), torch.randn(1, 3, 16, 16)
    # after blocks.1's attention every token only reads itself; the head reads the class token
    assert last_spatial_layer(model, x) == "blocks.1.norm1"


def test_a_flattened_channels_first_map_is_not_read_as_tokens():
    torch.manual_seed(0)
    found = _layouts(Flattened(), torch.randn(1, 3, 8, 8))
    assert found["conv"].kind == "nchw" and found["flat"] is None


def test_detect_needs_the_example_batch():
    """A call whose batch is not the example's (Swin's windows) gets no layout."""
    class Windows(nn.Module):
        def forward(self, x):
            return x.reshape(4, 3, 4, 4)
    rec = record_calls(nn.Sequential(Windows()).eval(), torch.zeros(1, 3, 8, 8))
    assert detect(rec.calls, None, (8, 8), 1)[0] is None


def test_named_layers_stated_or_detected():
    torch.manual_seed(0)
    model, x = TokenNet().eval(), torch.randn(1, 3, 16, 16)
    got = layer_layouts(model, x, ["blocks.1", "patch"])
    assert got["blocks.1"] == Layout("tokens", (4, 4), 8, 1) and got["patch"].kind == "nchw"
    # a named attention internal is read, skip or not: naming it is the user's choice
    assert layer_layouts(model, x, ["blocks.1.attn"])["blocks.1.attn"].kind == "tokens"
    assert layer_layouts(model, x, ["blocks.1"], "tokens")["blocks.1"].prefix == 1
    with pytest.raises(ValueError, match=r"'blocks.1'.*\[1, 17, 8\].*not a nhwc"):
        layer_layouts(model, x, ["blocks.1"], "nhwc")
    with pytest.raises(ValueError, match=r"'head'.*not \(N, C, H, W\)"):
        layer_layouts(model, x, ["head"])
    assert layer_layouts(model, x, ["head"], strict=False) == {}
    with pytest.raises(ValueError, match="unknown layer"):
        layer_layouts(model, x, ["nope"])

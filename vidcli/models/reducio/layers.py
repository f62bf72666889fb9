"""Reducio-VAE building blocks, with the released checkpoints' parameter names.

Shapes: videos / motion features (B, C, T, H, W), images / content features (B, C, H, W);
`dims` is 3 for the motion path and 2 for the content encoder. See shared/reference/reducio.md
§3 for the maths each block reproduces.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vidcli.errors import ShapeError

SELF_ATTENTION_HEADS = 8
"""Heads of the mid self-attention (C/8 wide each), unlike LDM's single-head block."""
FUSION_HEAD_DIM = 64
"""Head width of the fusion cross-attention; heads = max(1, C // 64)."""


def conv(dims: int, c_in: int, c_out: int, kernel, stride=1, padding=0) -> nn.Module:
    """Conv2d or Conv3d with bias."""
    return (nn.Conv3d if dims == 3 else nn.Conv2d)(c_in, c_out, kernel, stride, padding)


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups, eps 1e-6; on 5-D tensors each group is normalised over (C/32, T, H, W) jointly."""
    return nn.GroupNorm(32, channels, eps=1e-6)


def sinusoid_table(length: int, dim: int) -> Tensor:
    """(length, dim) fp32: row p, column j = sin/cos(p / 10000^(2·⌊j/2⌋/dim)), interleaved.

    Computed in float64 and rounded once, as the reference does (its checkpoints store it).
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * (j // 2) / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class ResBlock(nn.Module):
    """GN → SiLU → conv3 → GN → SiLU → dropout → conv3, plus x (or a 1×1 `nin_shortcut`)."""

    def __init__(self, dims: int, c_in: int, c_out: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = conv(dims, c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(dims, c_out, c_out, 3, padding=1)
        self.nin_shortcut = conv(dims, c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class SelfAttention(nn.Module):
    """Mid-block attention: GN, 1×1 q/k/v, 8 heads over all positions, 1×1 `proj_out`, residual.

    Channel c belongs to head ⌊c / (C/8)⌋; positions are flattened (t, h, w) with t slowest.
    2-D maps with more than w0·w1 positions attend within (w0, w1) windows of the normalised map,
    zero-padded at the bottom/right (padded positions still get the q/k/v biases, as upstream).
    """

    def __init__(self, dims: int, channels: int, window: tuple[int, int] | None = None):
        super().__init__()
        self.window = window
        self.norm = group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (conv(dims, channels, channels, 1) for _ in "qkvo")

    def forward(self, x: Tensor) -> Tensor:  # (B, C, *S) -> (B, C, *S)
        y = self.norm(x)
        windowed = (
            self.window and y.ndim == 4 and y.shape[-2] * y.shape[-1] > math.prod(self.window)
        )
        return x + self.proj_out(self._windowed(y) if windowed else self._attend(y))

    def _attend(self, y: Tensor) -> Tensor:
        q, k, v = (
            rearrange(f(y), "b (n d) ... -> b n (...) d", n=SELF_ATTENTION_HEADS)
            for f in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        return rearrange(out, "b n s d -> b (n d) s").reshape(y.shape)

    def _windowed(self, y: Tensor) -> Tensor:  # (B, C, H, W), attention per window
        h, w = y.shape[-2:]
        w0, w1 = self.window
        y = F.pad(y, (0, -w % w1, 0, -h % w0))
        grid = {"i": y.shape[-2] // w0, "j": y.shape[-1] // w1}
        windows = rearrange(y, "b c (i w0) (j w1) -> (b i j) c w0 w1", w0=w0, w1=w1)
        out = rearrange(self._attend(windows), "(b i j) c w0 w1 -> b c (i w0) (j w1)", **grid)
        return out[..., :h, :w]


class Downsample(nn.Module):
    """Zero-pad one row/column (and frame) at the end, then a stride-2 conv without padding."""

    # kind: (kernel, stride, F.pad amounts: last dim first)
    KINDS: ClassVar[dict[str, tuple]] = {
        "2d": ((3, 3), 2, (0, 1, 0, 1)),
        "spatial": ((1, 3, 3), (1, 2, 2), (0, 1, 0, 1, 0, 0)),
        "full": ((3, 3, 3), 2, (0, 1, 0, 1, 0, 1)),
    }

    def __init__(self, channels: int, kind: str):
        super().__init__()
        kernel, stride, self.pad = self.KINDS[kind]
        self.conv = conv(len(kernel), channels, channels, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class Upsample(nn.Module):
    """Nearest ×2 in (T, H, W) ("full") or in (H, W) only ("spatial"), then a 3³ conv."""

    SCALES: ClassVar[dict[str, tuple[float, ...]]] = {
        "spatial": (1.0, 2.0, 2.0),
        "full": (2.0, 2.0, 2.0),
    }

    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.scale = self.SCALES[kind]
        self.conv = conv(3, channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens to context tokens; q/k/v without bias."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:  # (B, N, C), (B, M, Cc) -> (B, N, C)
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = (
            rearrange(f(context), "b m (h d) -> b h m d", h=self.heads)
            for f in (self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class FusionBlock(nn.Module):
    """Motion features read content features by cross-attention (upstream's BasicTransformerBlock).

    x + pos (a sinusoid row per frame, kept in the residual stream), LayerNorm, cross-attention to
    the content map's (h', w') tokens; windowed when the content map has more than w0·w1
    positions and the motion map at least w0·w1 (see `forward`).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        frames: int,
        window_size: tuple[int, int],
        head_dim: int = FUSION_HEAD_DIM,
    ):
        super().__init__()
        self.window_size = window_size
        self.attn = CrossAttention(dim, context_dim, max(1, dim // head_dim), head_dim)
        self.norm = nn.LayerNorm(dim)
        # Fixed, never trained; stored in the released checkpoints (checked on load).
        self.register_buffer("pos_embed", sinusoid_table(frames, dim)[None, :, None, :])

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, C, T, H, W), context (B, Cc, H', W') -> (B, C, T, H, W)."""
        t, h, w = x.shape[2:]
        if t != self.pos_embed.shape[1]:
            raise ShapeError(f"fusion block at {t} frames: built for {self.pos_embed.shape[1]}")
        x = x + rearrange(self.pos_embed, "1 t 1 c -> 1 c t 1 1")
        y = self.norm(rearrange(x, "b c t h w -> b t h w c"))
        hc, wc = context.shape[-2:]
        w0, w1 = self.window_size
        if hc * wc > w0 * w1 and h * w >= w0 * w1:
            out = self._windowed(y, context)
        else:
            tokens = rearrange(context, "b c h w -> b (h w) c")
            out = self.attn(rearrange(y, "b t h w c -> b (t h w) c"), tokens)
            out = rearrange(out, "b (t h w) c -> b t h w c", t=t, h=h)
        return x + rearrange(out, "b t h w c -> b c t h w")

    def _windowed(self, y: Tensor, context: Tensor) -> Tensor:
        """Attention within matching windows: content (w0, w1), motion scaled by the size ratio.

        Both maps are zero-padded at the bottom/right to whole windows. Padded content positions
        are not masked: their keys and values are zero, as in the reference.
        """
        _, t, h, w, _ = y.shape
        hc, wc = context.shape[-2:]
        w0, w1 = self.window_size
        m0, m1 = math.ceil(w0 * h / hc), math.ceil(w1 * w / wc)
        context = F.pad(context, (0, -wc % w1, 0, -hc % w0))
        y = F.pad(y, (0, 0, 0, -w % m1, 0, -h % m0))
        grid = (y.shape[2] // m0, y.shape[3] // m1)
        if grid != (context.shape[2] // w0, context.shape[3] // w1):
            raise ShapeError(
                f"windowed fusion: motion map {h}x{w} and content map {hc}x{wc} give different "
                f"window grids; use content {grid[0] * w0}x{grid[1] * w1} or a tiled decode"
            )
        q = rearrange(y, "b t (i m0) (j m1) c -> (b i j) (t m0 m1) c", m0=m0, m1=m1)
        kv = rearrange(context, "b c (i w0) (j w1) -> (b i j) (w0 w1) c", w0=w0, w1=w1)
        out = rearrange(
            self.attn(q, kv),
            "(b i j) (t m0 m1) c -> b t (i m0) (j m1) c",
            i=grid[0],
            j=grid[1],
            t=t,
            m0=m0,
        )
        return out[:, :, :h, :w]

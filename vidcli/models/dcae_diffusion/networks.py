"""UViT (also USiT) and DiT; module and parameter names equal the released checkpoint keys.

Shapes: B batch, C latent channels, S latent size, p patch, L = (S/p)² patch tokens, D width.
Labels are ints in 0..num_classes, where num_classes is the null label of CFG.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from vidcli.errors import ShapeError
from vidcli.models.dcae_diffusion.config import DiTConfig, UViTConfig
from vidcli_kernels.attention import attention
from vidcli_kernels.linear import Linear


def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos | sin] of t·exp(-ln(max_period)·k/half), k < half = dim/2, in float32.

    t: (B,) float or int -> (B, dim) float32. Both networks divide by half, not half − 1.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row (index num_classes) for the null label."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """Patchify conv (stride p), tokens in row-major order: (B, C, S, S) -> (B, L, D)."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class Attention(nn.Module):
    """Multi-head self-attention; qkv features laid out [q | k | v], each split into heads."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, upcast: bool):
        super().__init__()
        self.num_heads = num_heads
        self.upcast = upcast
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        if self.upcast:  # UViT computes attention in fp32 whatever the weights' dtype
            q, k, v = q.float(), k.float(), v.float()
        out = attention(q, k, v).to(x.dtype)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu_approximate: str):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU(approximate=gelu_approximate)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _check_input(x: torch.Tensor, channels: int, size: int) -> None:
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ShapeError(
            f"latent of shape {tuple(x.shape)}; this network takes (B, {channels}, {size}, {size})"
        )


class UViTBlock(nn.Module):
    """Pre-norm transformer block; output blocks first fuse a long skip with `skip_linear`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip: bool):
        super().__init__()
        self.skip_linear = Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=False, upcast=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu_approximate="none")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat((x, skip), dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """Tokens [label, time, patches] + learned positions, in/mid/out blocks with LIFO long skips.

    forward(x (B, C, S, S), t (B,), y (B,)) -> (B, C, S, S). t goes into the time token as is:
    1000·t for the VP/DPM-Solver models, t ∈ [0, 1] for USiT.
    """

    extra_tokens = 2

    def __init__(self, config: UViTConfig):
        super().__init__()
        self.config = config
        c, d, p = config.in_channels, config.hidden_size, config.patch_size
        num_patches = (config.input_size // p) ** 2
        self.patch_embed = PatchEmbed(c, d, p)
        self.label_emb = LabelEmbedder(config.num_classes, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extra_tokens + num_patches, d))
        half = config.depth // 2
        args = (d, config.num_heads, config.mlp_ratio)
        self.in_blocks = nn.ModuleList(UViTBlock(*args, skip=False) for _ in range(half))
        self.mid_block = UViTBlock(*args, skip=False)
        self.out_blocks = nn.ModuleList(UViTBlock(*args, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(d)
        self.decoder_pred = Linear(d, p * p * c)

    @property
    def out_channels(self) -> int:
        return self.config.in_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        _check_input(x, cfg.in_channels, cfg.input_size)
        tokens = self.patch_embed(x)
        time_token = sinusoid(t, cfg.hidden_size).to(tokens.dtype)
        label_token = self.label_emb(y)
        h = torch.cat((label_token[:, None], time_token[:, None], tokens), dim=1)
        h = h + self.pos_embed
        skips = []
        for block in self.in_blocks:
            h = block(h)
            skips.append(h)
        h = self.mid_block(h)
        for block in self.out_blocks:
            h = block(h, skips.pop())
        h = self.decoder_pred(self.norm(h))[:, self.extra_tokens :]
        p, n = cfg.patch_size, cfg.input_size // cfg.patch_size
        return rearrange(h, "b (h w) (p q c) -> b c (h p) (w q)", h=n, p=p, q=p)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, L, D) · (1 + scale) + shift, with shift/scale (B, D) broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    # DiT's LayerNorms carry no parameters: the adaLN modulation scales and shifts.
    return nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)


class TimestepEmbedder(nn.Module):
    """sinusoid₂₅₆(t) -> Linear -> SiLU -> Linear (keys `mlp.0`, `mlp.2`)."""

    frequency_dim = 256

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(Linear(self.frequency_dim, dim), nn.SiLU(), Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoid(t, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """adaLN-Zero block: six modulation vectors (shift₁, scale₁, gate₁, shift₂, scale₂, gate₂)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.attn = Attention(dim, num_heads, qkv_bias=True, upcast=False)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu_approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(_modulate(_layer_norm(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(_layer_norm(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.linear = Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(_modulate(_layer_norm(x), shift, scale))


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """DiT's fixed table (grid², dim): first half encodes the column, second half the row, each
    [sin | cos] of position·10000^(−k/(dim/4)); float64 math as upstream, returned as float32."""
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        args = positions.reshape(-1, 1) * omega
        return torch.cat((torch.sin(args), torch.cos(args)), dim=1)

    return torch.cat((encode(cols), encode(rows)), dim=1).float()


class DiT(nn.Module):
    """forward(x (B, C, S, S), t (B,) integer timesteps, y (B,)) -> (B, 2C, S, S): ε, variance."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        c, d, p = config.in_channels, config.hidden_size, config.patch_size
        grid = config.input_size // p
        self.x_embedder = PatchEmbed(c, d, p)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d)
        # a frozen parameter (not a buffer) because the checkpoints store it
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(d, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, p * p * self.out_channels)

    @property
    def out_channels(self) -> int:
        return self.config.in_channels * (2 if self.config.learn_sigma else 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        _check_input(x, cfg.in_channels, cfg.input_size)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        h = self.final_layer(h, c)
        p, n = cfg.patch_size, cfg.input_size // cfg.patch_size
        return rearrange(h, "b (h w) (p q c) -> b c (h p) (w q)", h=n, p=p, q=p)


def forward_with_cfg(
    net: UViT | DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float
) -> torch.Tensor:
    """Upstream's doubled-batch CFG evaluation.

    x, t, y: (2B, ...) with y = [labels; null]. The network sees the first half of x twice;
    the first C output channels (ε or velocity) become uncond + s·(cond − uncond) in both halves,
    the rest (DiT's variance channels) stay per half. Returns (2B, out_channels, S, S).
    """
    half = x[: len(x) // 2]
    out = net(torch.cat((half, half)), t, y)
    channels = net.config.in_channels
    guided, rest = out[:, :channels], out[:, channels:]
    cond, uncond = guided.chunk(2)
    mixed = uncond + cfg_scale * (cond - uncond)
    return torch.cat((torch.cat((mixed, mixed)), rest), dim=1)

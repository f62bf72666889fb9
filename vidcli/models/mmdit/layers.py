"""MMDiT building blocks; module and parameter names equal the reference checkpoint keys.

Shapes: B batch, L tokens (L_txt text, L_img image), D = hidden_size, heads x head_dim = D.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from vidcli.models.mmdit.hooks import BlockHook
from vidcli.models.mmdit.rope import apply_rope
from vidcli.sequence_parallel import SequenceParallel
from vidcli_kernels.attention import attention
from vidcli_kernels.linear import Linear, linear

TIME_EMBED_DIM = 256


def timestep_embedding(t: torch.Tensor, dim: int = TIME_EMBED_DIM, time_factor: float = 1000.0):
    """Sinusoidal embedding [cos, sin] of 1000·t (spec §7.1).

    t: (B,) -> (B, dim) in t's dtype. The frequencies and arguments are float32 on purpose: with the
    1000x scale, float64 arguments move the model output by ~1e-4 against the reference.
    """
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    return emb.to(t.dtype) if torch.is_floating_point(t) else emb


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear: the time, guidance and pooled-text embedders."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = Linear(in_dim, hidden_dim)
        self.silu = nn.SiLU()
        self.out_layer = Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """x·rsqrt(mean(x²) + 1e-6) in float32, cast back, times a learned scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return y.to(x.dtype) * self.scale


class QKNorm(nn.Module):
    """Per-head RMSNorm of queries and keys (separate scales)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


def rope_attention(
    q, k, v, cos, sin, half_split: bool, sp: SequenceParallel | None = None
) -> torch.Tensor:
    """Joint attention with RoPE on q and k; with `sp`, over every rank's video tokens (Ulysses).

    q, k, v: (B, heads, L, head_dim) -> (B, L, D); under `sp` L = L_txt + this rank's L_loc.
    """
    q = apply_rope(q, cos, sin, half_split)
    k = apply_rope(k, cos, sin, half_split)
    out = attention(q, k, v) if sp is None else sp.joint_attention(q, k, v)
    return rearrange(out, "b h l d -> b l (h d)")


class Modulation(nn.Module):
    """adaLN parameters from the conditioning vector: `n` chunks of (shift, scale, gate)."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = Linear(dim, self.multiplier * dim)

    def forward(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """vec: (B, D) -> list of (B, 1, D), order shift, scale, gate (x2 for double blocks)."""
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    # LayerNorm without affine parameters (the modulation supplies scale and shift).
    return nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)


class SelfAttention(nn.Module):
    """One stream's projections of a double block: q/k/v (fused `qkv` or split), QK norm, `proj`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, fused_qkv: bool):
        super().__init__()
        self.num_heads = num_heads
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q_proj = Linear(dim, dim, bias=qkv_bias)
            self.k_proj = Linear(dim, dim, bias=qkv_bias)
            self.v_proj = Linear(dim, dim, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor):
        """x: (B, L, D) -> q, k, v: (B, heads, L, head_dim), q and k normalised."""
        if self.fused_qkv:
            q, k, v = rearrange(self.qkv(x), "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        else:
            q, k, v = (
                rearrange(proj(x), "b l (h d) -> b h l d", h=self.num_heads)
                for proj in (self.q_proj, self.k_proj, self.v_proj)
            )
        q, k = self.norm(q, k, v)
        return q, k, v


class DoubleStreamBlock(nn.Module):
    """Separate weights for image and text tokens, one attention over [text; image]."""

    def __init__(self, dim, num_heads, mlp_hidden, qkv_bias, fused_qkv, half_split):
        super().__init__()
        self.half_split = half_split
        self.sequence_parallel: SequenceParallel | None = None
        """Set by `MMDiT.use_sequence_parallel`: attention all-to-alls across the SP group."""
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(dim, double=True))
            setattr(self, f"{stream}_attn", SelfAttention(dim, num_heads, qkv_bias, fused_qkv))
            setattr(
                self,
                f"{stream}_mlp",
                nn.Sequential(
                    Linear(dim, mlp_hidden),
                    nn.GELU(approximate="tanh"),
                    Linear(mlp_hidden, dim),
                ),
            )

    def forward(self, img, txt, vec, cos, sin, hook: BlockHook | None = None):
        """img: (B, L_img, D), txt: (B, L_txt, D), vec: (B, D),
        cos/sin: (B, L_txt + L_img, head_dim/2) -> (img, txt) updated.

        `hook` (a caching policy's view of this block) may replace the attention and MLP outputs;
        without one the block computes everything.
        """
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)

        img_in = (1 + i_scale1) * _layer_norm(img) + i_shift1
        txt_in = (1 + t_scale1) * _layer_norm(txt) + t_shift1
        if hook is None:
            img_attn, txt_attn = self.attention(img_in, txt_in, cos, sin)
        else:
            img_attn, txt_attn = hook.attention(self, img_in, txt_in, cos, sin)

        img = img + i_gate1 * img_attn
        img_in = (1 + i_scale2) * _layer_norm(img) + i_shift2
        img = img + i_gate2 * (
            self.img_mlp(img_in) if hook is None else hook.mlp(self, "img", img_in)
        )
        txt = txt + t_gate1 * txt_attn
        txt_in = (1 + t_scale2) * _layer_norm(txt) + t_shift2
        txt = txt + t_gate2 * (
            self.txt_mlp(txt_in) if hook is None else hook.mlp(self, "txt", txt_in)
        )
        return img, txt

    def attention(self, img_in, txt_in, cos, sin):
        """Joint attention of the modulated streams, after each stream's `proj`, before the gate.

        img_in: (B, L_img, D), txt_in: (B, L_txt, D) -> (img (B, L_img, D), txt (B, L_txt, D))
        """
        img_q, img_k, img_v = self.img_attn.qkv_heads(img_in)
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(txt_in)
        # Text first: the RoPE tables and the reference's concatenation order.
        attn = rope_attention(
            torch.cat((txt_q, img_q), dim=2),
            torch.cat((txt_k, img_k), dim=2),
            torch.cat((txt_v, img_v), dim=2),
            cos,
            sin,
            self.half_split,
            self.sequence_parallel,
        )
        txt_attn, img_attn = attn[:, : txt_in.shape[1]], attn[:, txt_in.shape[1] :]
        return self.img_attn.proj(img_attn), self.txt_attn.proj(txt_attn)

    def modulated_image(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The image stream's attention input (1 + scale)·LN(img) + shift: TeaCache's indicator.

        img: (B, L_img, D), vec: (B, D) -> (B, L_img, D); the same numbers `forward` attends with.
        """
        shift, scale = self.img_mod(vec)[:2]
        return (1 + scale) * _layer_norm(img) + shift


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over one stream; fused `linear1` or split q_proj/k_proj/v_mlp."""

    def __init__(self, dim, num_heads, mlp_hidden, fused_qkv, half_split):
        super().__init__()
        self.dim, self.num_heads, self.mlp_hidden = dim, num_heads, mlp_hidden
        self.fused_qkv, self.half_split = fused_qkv, half_split
        self.sequence_parallel: SequenceParallel | None = None
        """Set by `MMDiT.use_sequence_parallel`: attention all-to-alls across the SP group."""
        if fused_qkv:
            self.linear1 = Linear(dim, dim * 3 + mlp_hidden)
        else:
            self.q_proj = Linear(dim, dim)
            self.k_proj = Linear(dim, dim)
            self.v_mlp = Linear(dim, dim + mlp_hidden)
        self.linear2 = Linear(dim + mlp_hidden, dim)
        self.norm = QKNorm(dim // num_heads)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(dim, double=False)

    def forward(self, x, vec, cos, sin, hook: BlockHook | None = None):
        """x: (B, L, D) = [text; image], vec: (B, D) -> (B, L, D).

        `hook` (a caching policy's view of this block) may replace the pre-gate output.
        """
        shift, scale, gate = self.modulation(vec)
        x_mod = (1 + scale) * _layer_norm(x) + shift
        if hook is None:
            q, k, v, mlp = self.project(x_mod)
            out = self.merge(self.attend(q, k, v, cos, sin), mlp)
        else:
            out = hook.single(self, x_mod, cos, sin)
        return x + gate * out

    def project(self, x_mod: torch.Tensor):
        """x_mod: (B, L, D) -> q, k, v: (B, heads, L, head_dim), MLP input: (B, L, mlp_hidden)."""
        if self.fused_qkv:
            qkv, mlp = self.linear1(x_mod).split((3 * self.dim, self.mlp_hidden), dim=-1)
            q, k, v = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        else:
            v, mlp = self.v_mlp(x_mod).split((self.dim, self.mlp_hidden), dim=-1)
            q, k, v = (
                rearrange(t, "b l (h d) -> b h l d", h=self.num_heads)
                for t in (self.q_proj(x_mod), self.k_proj(x_mod), v)
            )
        return q, k, v, mlp

    def attend(self, q, k, v, cos, sin) -> torch.Tensor:
        """QK norm, RoPE and attention: (B, heads, L, head_dim) x3 -> (B, L, D)."""
        q, k = self.norm(q, k, v)
        return rope_attention(q, k, v, cos, sin, self.half_split, self.sequence_parallel)

    def merge(self, attn: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
        """Pre-gate output linear2([attn; GELU(mlp)]).

        attn: (B, L', D), mlp: (B, L', mlp_hidden) -> (B, L', D)
        """
        return self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=-1))

    def mlp_input(self, x_mod: torch.Tensor) -> torch.Tensor:
        """Only the MLP input columns of `project`: (B, L', D) -> (B, L', mlp_hidden)."""
        fused = self.linear1 if self.fused_qkv else self.v_mlp
        start = fused.out_features - self.mlp_hidden
        return linear(x_mod, fused.weight[start:], fused.bias[start:])


class LastLayer(nn.Module):
    """adaLN (shift, scale) then Linear back to the token width."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.linear = Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """x: (B, L_img, D), vec: (B, D) -> (B, L_img, out_channels)."""
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear((1 + scale) * _layer_norm(x) + shift)

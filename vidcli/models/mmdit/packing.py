"""Latent video <-> token sequence, and the (t, h, w) ids the RoPE reads (spec §5, §6).

Token order is t-major, then h, then w; inside a token the feature index is c·p² + i·p + j for the
sub-pixel at row i, column j.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from vidcli.errors import ShapeError


def pack_latents(z: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> tokens (B, L, C·p²), L = T·(H/p)·(W/p)."""
    if z.ndim != 5:
        raise ShapeError(f"latents must be (B, C, T, H, W), got shape {tuple(z.shape)}")
    h, w = z.shape[-2:]
    if h % patch or w % patch:
        raise ShapeError(f"latent size {h}x{w} is not divisible by patch size {patch}")
    return rearrange(z, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=patch, pw=patch)


def unpack_latents(tokens: torch.Tensor, patch: int, T: int, H: int, W: int) -> torch.Tensor:
    """tokens (B, L, C·p²) -> (B, C, T, H, W); H, W are latent sizes (multiples of p)."""
    if tokens.shape[1] != T * (H // patch) * (W // patch):
        raise ShapeError(
            f"{tokens.shape[1]} tokens do not fill a {T}x{H}x{W} latent at patch size {patch}"
        )
    return rearrange(
        tokens,
        "b (t h w) (c ph pw) -> b c t (h ph) (w pw)",
        t=T,
        h=H // patch,
        w=W // patch,
        ph=patch,
        pw=patch,
    )


def make_image_ids(
    B: int, T: int, H_tok: int, W_tok: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Integer (t, h, w) coordinates of every image token as floats: (B, T·H_tok·W_tok, 3)."""
    grid = torch.stack(
        torch.meshgrid(
            torch.arange(T, device=device),
            torch.arange(H_tok, device=device),
            torch.arange(W_tok, device=device),
            indexing="ij",
        ),
        dim=-1,
    ).float()
    return repeat(grid, "t h w c -> b (t h w) c", b=B)

"""3-D rotary position embedding over (t, h, w) token ids, in both channel pairings.

Axis a with width d_a gets frequencies ω_{a,j} = θ^(-2j/d_a), j < d_a/2, and angles id_a·ω_{a,j};
the axes' angles are concatenated (t, then h, then w) into head_dim/2 angles m per token.
Angle m rotates the channel pair
- (m, m + head_dim/2) when `half_split` (Open-Sora 2.0, Liger "rotate-half" kernel), or
- (2m, 2m + 1) otherwise (Flux).
Both compute the rotation in float32; they differ only by a permutation of q/k channels inside
each head, so a checkpoint trained with one pairing is wrong under the other (spec §5).
"""

from __future__ import annotations

import torch


def rope_angles(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int, half_split: bool):
    """cos and sin of every rotation angle.

    ids: (B, L, 3) float positions -> cos, sin: (B, L, head_dim/2) float32
    """
    per_axis = []
    for axis, dim in enumerate(axes_dim):
        if half_split:
            # Liger's recipe: frequencies and products in float32.
            omega = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            per_axis.append(ids[..., axis].float()[..., None] * omega.to(ids.device))
        else:
            # Flux's recipe: float64 angles, rounded to float32 after cos/sin.
            omega = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
            per_axis.append(ids[..., axis].double()[..., None] * omega.to(ids.device))
    angles = torch.cat(per_axis, dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half_split: bool):
    """Rotate channel pairs of every head by the token's angles, in float32.

    x: (B, heads, L, head_dim); cos, sin: (B, L, head_dim/2) -> (B, heads, L, head_dim) in x's dtype
    """
    xf = x.float()
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    if half_split:
        x1, x2 = xf.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = xf.unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


def interleaved_to_half_split_index(head_dim: int) -> torch.Tensor:
    """Channel order that turns a Flux-pairing head into a half-split one: new[m] = old[2m],
    new[m + head_dim/2] = old[2m + 1]. Apply to the q/k projection rows inside each head and to
    the q/k norm scales to run Flux weights with the half-split rotation (spec §5)."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))

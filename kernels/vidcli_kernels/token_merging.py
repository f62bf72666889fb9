"""Temporal Dimension Token Merging (On-device Sora, arXiv 2502.04363) for joint video attention.

Sequence layout as in sparse_attention.py: `[text (L_txt) | image (T·H·W, t-major)]`, tensors
(B, heads, L, head_dim). Merging averages the image tokens of latent frames 2j and 2j+1 at the
same (h, w) (a last odd frame is dropped), so attention runs over L_txt + ⌊T/2⌋·H·W tokens: the
image-image part costs a quarter. Unmerging copies each merged output back to both frames (the
dropped frame gets the last merged frame's), as the authors' `unmerge` does.

Adaptation to joint text+image attention (ours, shared/reference/attention-tokens-solvers.md
§1.2): a merged key stands for two keys, so it gets a log 2 score bias (proportional attention,
as ToMe does); without it text keys would weigh twice as much against image keys as in the
unmerged model. With the bias, merging is exact where consecutive frames are identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def merge_frames(x: torch.Tensor, text: int, frames: int) -> torch.Tensor:
    """Average the image tokens of frame pairs (2j, 2j+1).

    x: (B, heads, text + T·S, d) with S tokens per frame -> (B, heads, text + ⌊T/2⌋·S, d)
    """
    B, heads, L, d = x.shape
    per_frame = (L - text) // frames
    pairs = frames // 2
    img = x[:, :, text : text + 2 * pairs * per_frame].reshape(B, heads, pairs, 2, per_frame, d)
    merged = img.mean(dim=3).reshape(B, heads, pairs * per_frame, d)
    return torch.cat((x[:, :, :text], merged), dim=2)


def unmerge_frames(y: torch.Tensor, text: int, frames: int) -> torch.Tensor:
    """Copy each merged frame back to both of its frames (and to a last odd frame).

    y: (B, heads, text + ⌊T/2⌋·S, d) -> (B, heads, text + T·S, d)
    """
    B, heads, L, d = y.shape
    pairs = frames // 2
    per_frame = (L - text) // pairs
    img = y[:, :, text:].reshape(B, heads, pairs, 1, per_frame, d).expand(-1, -1, -1, 2, -1, -1)
    img = img.reshape(B, heads, 2 * pairs, per_frame, d)
    if frames % 2:
        img = torch.cat((img, img[:, :, -1:]), dim=2)
    return torch.cat((y[:, :, :text], img.reshape(B, heads, frames * per_frame, d)), dim=2)


def merged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int, frames: int
) -> torch.Tensor:
    """Joint attention with the image tokens of frame pairs merged, then unmerged.

    q, k, v: (B, heads, text + T·S, d) -> (B, heads, text + T·S, d). Needs T >= 2.
    """
    qm, km, vm = (merge_frames(t, text, frames) for t in (q, k, v))
    # log 2 on merged keys: each stands for two keys (see the module docstring).
    bias = torch.zeros(km.shape[2], dtype=q.dtype, device=q.device)
    bias[text:] = math.log(2.0)
    out = F.scaled_dot_product_attention(qm, km, vm, attn_mask=bias[None, :])
    return unmerge_frames(out, text, frames)

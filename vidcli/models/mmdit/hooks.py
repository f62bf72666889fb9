"""The block-hook protocol: how code outside the MMDiT may stand in for parts of a block.

A double- or single-stream block given a hook asks it for the outputs it would otherwise compute
itself (attention and MLP outputs, or the single block's pre-gate output); without a hook the
block computes everything. The model defines the protocol so that it knows no caller: caching
policies (`vidcli.sampling.cache.hooks.ComputeHook`) implement it.

Shapes: B rows, L_img / L_txt tokens, D width, cos/sin (B, L_txt + L_img, head_dim/2).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn


class BlockHook(Protocol):
    """What a block asks of its hook; each method gets the block itself to compute with."""

    def attention(
        self, block: nn.Module, img_in: Tensor, txt_in: Tensor, cos: Tensor, sin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Double block: (img (B, L_img, D), txt (B, L_txt, D)) after `proj`, before the gate."""
        ...

    def mlp(self, block: nn.Module, stream: str, x: Tensor) -> Tensor:
        """Double block: the "img" or "txt" MLP of its modulated input (B, L, D), pre-gate."""
        ...

    def single(self, block: nn.Module, x_mod: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Single block: the pre-gate output (B, L, D) of its modulated input."""
        ...

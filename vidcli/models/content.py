"""Autoencoders whose decode needs the clip's content frame (Reducio-VAE), asked in one place.

A *conditioned* AE (`ae.conditioned = True`) renders a clip from a motion latent plus its
content frame (`ae.content_index`, the centre frame), so every stage that encodes or decodes
goes through these helpers: they pass the frame where the stage has one and refuse in one line
where it cannot. Plain AEs pass straight through.

The DiT's view of the content frame (`content_latent`): the frame held still for a whole clip,
encoded by the AE itself (deterministic: the layer-normed posterior mean). It has the motion
latent's shape (C, T', H', W'), so it conditions every latent token at its own position through
the MMDiT's per-token `cond` input (docs/reducio.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vidcli.errors import ShapeError, UsageError

CONTENT_CONVENTION = {
    "frame": "centre frame (T - 1) // 2 of each clip",
    "decode": "decode(z, content=frame)",
    "latent": "layer_norm(posterior sample), no scaling factor",
    "dit_condition": "content_latent: the frame held still, encoded (layer-normed mean)",
}
"""What latents of a conditioned AE mean, recorded in their provenance (`data.provenance`)."""


def needs_content(ae: Any) -> bool:
    """Whether `ae.decode` needs the clip's content frame (`content=`)."""
    return bool(getattr(ae, "conditioned", False))


def refuse_conditioned(ae: Any, what: str, instead: str) -> None:
    """A one-line UsageError when `ae` needs a content frame that `what` cannot give it."""
    if needs_content(ae):
        raise UsageError(
            f"{what} cannot give the {ae.family}'s decode its content frame; {instead}"
        )


@dataclass
class ContentFrames:
    """The content frames of a batch of N videos, as the decoder and the DiT take them."""

    images: Tensor
    """(N, 3, H, W) in [-1, 1]: each video's content frame (it becomes frame `content_index`)."""
    latents: list[Tensor]
    """Per video, `content_latent` of its image: (C, T', H', W'), the DiT's condition."""

    def for_videos(self, n: int) -> ContentFrames:
        """The same frames for n videos; one frame (an `--image`) serves all of them."""
        if len(self.latents) == n:
            return self
        if len(self.latents) != 1:
            raise ShapeError(f"{len(self.latents)} content frames for {n} videos: pass 1 or {n}")
        return ContentFrames(self.images.expand(n, -1, -1, -1), self.latents * n)


def encode_for_dit(ae: Any, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Latents (B, C, T', H', W') a DiT trains on: a conditioned AE's reference latent (the
    layer-normed posterior *sample*, ε from `generator`), else the AE's encode."""
    if needs_content(ae):
        return ae.encode(video, sample=True, generator=generator)
    return ae.encode(video)


def content_frames(ae: Any, video: Tensor) -> Tensor | None:
    """The content frames (B, 3, H, W) of clips (B, 3, T, H, W); None for a plain AE."""
    return ae.content_frame(video) if needs_content(ae) else None


def content_latent(ae: Any, images: Tensor) -> Tensor:
    """The DiT's condition of content frames (N, 3, H, W): each held still for `ae.frames`
    frames and encoded deterministically -> (N, C, T', H', W')."""
    clip = images[:, :, None].expand(-1, -1, ae.frames, -1, -1)
    weight = next(ae.parameters())  # the AE's device and dtype
    return ae.encode(clip.to(weight.device, weight.dtype))


def decode(ae: Any, z: Tensor, content: Tensor | None = None, **kwargs: Any) -> Tensor:
    """`ae.decode(z)`, with `content=` (content frames (B, 3, H, W)) for a conditioned AE."""
    if not needs_content(ae):
        return ae.decode(z, **kwargs)
    if content is None:
        raise UsageError(f"the {ae.family} decodes from a content frame, and none was given")
    weight = next(ae.parameters())
    return ae.decode(z, content=content.to(weight.device, weight.dtype), **kwargs)


def reconstruct(ae: Any, video: Tensor) -> Tensor:
    """decode(encode(video)), with the clip's own content frame for a conditioned AE."""
    return decode(ae, ae.encode(video), content_frames(ae, video))

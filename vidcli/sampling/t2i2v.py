"""Text -> image -> video, as Open-Sora 2.0's released inference configs do it (`use_t2i2v`).

1. A guidance-distilled text-to-image MMDiT (Flux-dev) draws frame 0 for the raw prompt at the
   `[t2i] resolution` (image area ≈ resolution², the video's aspect ratio, sides multiples of
   AE compression × patch), with Flux's guidance vector and the resolution-dependent shift
   α = lin(H_lat·W_lat / p²) (one latent frame), Euler, `flow.sample_distilled`;
   a DiT without guidance embedding (the Reducio demo's: the bundled demo MMDiT) samples with
   text CFG against the negative prompt instead (`flow.sample_i2v`, t2v); a video DiT can draw
   a whole clip (`[t2i] frames`) and give one frame of it (see `sample_images`);
2. its AE (Flux AE) decodes the image, which is resized to cover the video size and
   center-cropped (the reference resizes the saved PNG the same way);
3. the video AE encodes it as the i2v condition (`condition_latent`), and the video model
   samples i2v_head with text and image guidance (`flow.sample_i2v`).

The i2v condition, one definition for training and inference: **latent frame 0 of the encoded
clip**. Training (train-dit `i2v_ratio`) takes latent frame 0 of the encoded training clip; at
inference the clip is not known yet, so the image is held still for the video's frame count and
latent frame 0 of that clip is the condition (`condition_latent`), for `--image` and t2i2v
alike. For the causal HunyuanVideo VAE this equals the image encoded alone (the reference's
inference); the Video DC-AE is not causal, and there it differs from the image alone.

Deliberate difference: the reference's hcae config sets AE_SPATIAL_COMPRESSION = 32 process-wide,
so its Flux stage draws a 288×512 image at 768px (opensora2-mmdit.md §13.3); we draw the
documented 576×1024.

Shapes: images (N, 3, H, W) in [-1, 1]; latents (N, C, T, H', W').
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from vidcli import flow
from vidcli.errors import ShapeError
from vidcli.models.content import content_latent, needs_content


@dataclass
class ImageStage:
    """The text-to-image models of t2i2v, loaded once: a distilled DiT and its AE."""

    dit: Any
    """MMDiT with guidance_embed (Flux-dev), or a plain one sampled with text CFG."""
    ae: Any
    """Its 2-D autoencoder (Flux AE)."""
    resolution: int
    """Image area ≈ resolution² pixels."""
    guidance: float
    """Distilled guidance scale (Flux-dev: 4.0); a DiT without guidance_embed: the text CFG
    scale."""
    steps: int
    """Denoising steps."""
    frames: int = 1
    """Frames the image DiT samples (`[t2i] frames`); the image is one of them."""


# Open-Sora's named aspect ratios as height / width: 16:9, 9:16, 1:1, 2.39:1.
NAMED_RATIOS = (9 / 16, 16 / 9, 1.0, 1 / 2.39)


def image_size(resolution: int, height: int, width: int, multiple: int) -> tuple[int, int]:
    """(H, W) with H·W ≈ resolution² at the video's aspect ratio, sides multiples of `multiple`.

    The reference names the ratio ("16:9"); video sizes are rounded (256px 16:9 = 192×336), so a
    ratio within 3% of a named one is taken as that one: 768 for 192×336 -> (576, 1024).
    """
    ratio = height / width
    named = min(NAMED_RATIOS, key=lambda r: abs(math.log(r / ratio)))
    if abs(math.log(named / ratio)) < 0.03:
        ratio = named
    area = resolution * resolution
    h = max(multiple, round(math.sqrt(area * ratio) / multiple) * multiple)
    w = max(multiple, round(math.sqrt(area / ratio) / multiple) * multiple)
    return h, w


def prompt_with_suffix(prompt: str, fps: int, motion_score: int) -> str:
    """Open-Sora 2.0's inference suffix: "<prompt>. {fps} FPS. {motion_score} motion score."."""
    text = prompt.strip()
    if not text.endswith("."):
        text += "."
    if f"{fps} FPS" not in text:
        text += f" {fps} FPS."
    return f"{text} {motion_score} motion score."


def cover_resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 3, H, W) scaled to cover (height, width), then center-cropped to it (bilinear,
    antialiased); unchanged when the size already matches."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = F.interpolate(
        images.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[..., top : top + height, left : left + width].clamp(-1, 1)


@torch.no_grad()
def condition_latent(ae, image: torch.Tensor, frames: int) -> torch.Tensor:
    """The i2v condition of one image (3, H, W) in [-1, 1] for a `frames`-frame video: latent
    frame 0 of the image held still for `frames` frames, shaped (C, 1, H', W'). A conditioned AE
    (Reducio) keeps every latent frame: its DiT's content condition (C, T', H', W')."""
    if needs_content(ae):
        return content_latent(ae, image[None])[0].float()
    clip = image[:, None].expand(-1, frames, -1, -1)
    weight = next(ae.parameters())  # the AE's device and dtype (bf16 on GPUs)
    return ae.encode(clip[None].to(weight.device, weight.dtype))[0, :, :1].float()


@torch.no_grad()
def sample_images(
    dit,
    ae,
    tokens: torch.Tensor,
    pooled: torch.Tensor,
    seeds: list[int],
    size: tuple[int, int],
    steps: int,
    guidance: float,
    shift: bool = True,
    flow_shift: float | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    negative: tuple[torch.Tensor, torch.Tensor] | None = None,
    frames: int = 1,
    index: int = 0,
) -> torch.Tensor:
    """Text-to-image: (N, 3, H, W) in [-1, 1] for text embeddings tokens (N, L, D_txt), pooled
    (N, D_vec) and one seed per image; size = (H, W) in pixels.

    `frames` > 1 samples a clip of that many frames with a video DiT and AE and returns its frame
    `index`: a video DiT never trained on single frames (the bundled demo MMDiT) draws them off
    its distribution (the demo's white shapes came out yellow at one frame, white at 16).

    A guidance-distilled DiT (`guidance_embed`, Flux-dev) gets `guidance` through its guidance
    embedding, one row per image. Any other DiT (e.g. the bundled demo MMDiT) samples
    with text CFG at scale `guidance` against `negative` = (tokens, pooled) of the
    negative prompt (batch N or 1): 2N rows per step, v̂ = v_u + g·(v_c − v_u) (`flow.sample_i2v`
    without an image condition)."""
    height, width = size
    if not 0 <= index < frames:
        raise ShapeError(f"image frame {index} of a {frames}-frame clip: use 0..{frames - 1}")
    channels, t_lat, h_lat, w_lat = ae.latent_shape(frames, height, width)
    p = dit.config.patch_size
    if h_lat % p or w_lat % p:
        raise ShapeError(
            f"image {height}x{width}: latent {h_lat}x{w_lat} is not divisible by patch {p}"
        )
    device = tokens.device
    # One generator per image: an image depends on its seed, not on its batch.
    noise = torch.stack(
        [
            torch.randn((channels, t_lat, h_lat, w_lat), generator=torch.Generator().manual_seed(s))
            for s in seeds
        ]
    ).to(device)
    # α from the latent size at the DiT's patch (spec §9), as for the video, unless fixed.
    alpha = flow_shift
    if alpha is None:
        alpha = flow.inference_shift_alpha(h_lat, w_lat, t_lat, p)
    schedule = flow.inference_schedule(
        steps, h_lat * w_lat // (p * p), t_lat, shift=shift, flow_shift=alpha
    )
    # Image DiTs were all distilled before the CFG path: a config without the field is one.
    if getattr(dit.config, "guidance_embed", True):
        latents = flow.sample_distilled(
            dit.forward_video, noise, schedule, tokens, pooled, guidance=guidance, callback=callback
        )
    else:
        if negative is None:
            raise ShapeError(
                "a text-to-image DiT without guidance_embed samples with CFG: pass the negative "
                "prompt's embeddings"
            )
        neg_tokens, neg_pooled = (x.to(device) for x in negative)
        latents = flow.sample_i2v(
            dit.forward_video,
            noise,
            schedule,
            tokens,
            pooled,
            neg_tokens,
            neg_pooled,
            # Plain CFG at every step (no oscillation: one image, few steps).
            guidance=flow.GuidanceConfig(text=guidance, image=1.0, text_osci=False),
            callback=callback,
        )
    weight = next(ae.parameters())
    images = ae.decode(latents.to(weight.device, weight.dtype)).float().cpu()
    return images[:, :, index].clamp(-1, 1)


@torch.no_grad()
def first_frame_conditions(
    stage: ImageStage,
    video_ae,
    tokens: torch.Tensor,
    pooled: torch.Tensor,
    seeds: list[int],
    video_size: tuple[int, int, int],
    shift: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    negative: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """t2i2v steps 1-3: the frame-0 images (N, 3, H, W) at the video size (T, H, W), and their
    i2v condition latents [(C, 1, H', W')] under the video AE. tokens/pooled: raw-prompt
    embeddings; negative: the negative prompt's (tokens, pooled), for an image DiT sampled with
    CFG (see `sample_images`). An image stage that samples a clip (`frames` > 1) gives its frame
    0, or for a conditioned video AE (Reducio) its centre frame, where the content frame sits."""
    frames, height, width = video_size
    multiple = stage.ae.spatial_compression * stage.dit.config.patch_size
    size = image_size(stage.resolution, height, width, multiple)
    images = sample_images(
        stage.dit,
        stage.ae,
        tokens,
        pooled,
        seeds,
        size,
        stage.steps,
        stage.guidance,
        shift=shift,
        callback=callback,
        negative=negative,
        frames=stage.frames,
        index=(stage.frames - 1) // 2 if needs_content(video_ae) else 0,
    )
    images = cover_resize(images, height, width)
    return images, [condition_latent(video_ae, image, frames) for image in images]

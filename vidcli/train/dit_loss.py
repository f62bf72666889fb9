"""The rectified-flow loss of `train-dit`, shared by plain training and AE-Adapt (`adapt.py`),
which adds its alignment terms to it."""

from __future__ import annotations

from typing import Any

import torch

from vidcli import flow
from vidcli.devices import randn_on
from vidcli.models.mmdit import make_image_ids, pack_latents

TIMESTEP_BINS = (0.25, 0.5, 0.75, 1.0)
"""Upper ends of the timestep ranges whose mean loss is logged apart (loss_t0.00-0.25, ...)."""


def flow_loss(engine: Any, batch: dict[str, Any], alpha: float, patch: int):
    """Rectified-flow loss on one batch: x_t = (1-t)x0 + (1-(1-σ)(1-t))ε, target v = (1-σ)ε - x0."""
    x0 = batch["latent"]  # (B, C, T, H, W)
    B, _, T, H, W = x0.shape
    gen = batch["generator"]  # a CPU generator: the same t and noise on every device
    alpha = batch.get("shift_alpha", alpha)  # its bucket's, with [data] buckets
    device = x0.device
    t = flow.sample_training_timesteps(B, alpha, generator=gen).to(device)
    noise = randn_on(x0.shape, gen, device)
    x_t = flow.noisy_latents(x0, noise, t)
    target = flow.velocity_target(x0, noise)
    txt = batch["text_tokens"]
    cond = None
    if batch.get("cond_mask") is not None:
        cond = pack_latents(torch.cat((batch["cond_mask"], batch["cond_latent"]), dim=1), patch)
    pred = engine(
        img=pack_latents(x_t, patch),
        img_ids=make_image_ids(B, T, H // patch, W // patch, device=device),
        txt=txt,
        txt_ids=torch.zeros(B, txt.shape[1], 3, device=device),
        timesteps=t,
        y_vec=batch["text_pooled"],
        cond=cond,
    )
    per_sample = flow.flow_matching_loss(pred, pack_latents(target, patch))  # (B,)
    metrics = {}
    for lo, hi in zip((0.0, *TIMESTEP_BINS[:-1]), TIMESTEP_BINS, strict=True):
        inside = (t >= lo) & (t < hi) if hi < 1.0 else (t >= lo)
        if inside.any():
            metrics[f"loss_t{lo:.2f}-{hi:.2f}"] = float(per_sample[inside].detach().mean())
    return per_sample.mean(), metrics

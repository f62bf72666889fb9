"""`train-ae` for the Reducio-VAE: upstream's objective (shared/reference/reducio.md §8).

Per batch of clips x (B, 3, 16, H, W) in [-1, 1], with x̂ decoded from the layer-normed posterior
*sample* and the clip's content frame:

    loss = mean|x − x̂| + w_lpips·mean LPIPS(frames)          (w_lpips = [train] lpips_weight)
         + KL_WEIGHT · ½ Σ_{C,T,H,W}(μ² + σ² − 1 − log σ²)   (averaged over the batch)
         + OUTLIER_WEIGHT · mean max(0, x̂ − mean_{H,W} x̂ − 3 std_{H,W} x̂)
         + from `[train] gan_start` on: λ·(−mean D(x̂)), λ = gan_weight · clamp(‖∇_W rec‖ /
           (‖∇_W gan‖ + 1e-4), 0, 1e4), W = the decoder's last conv weight

and a 3-D PatchGAN (`ReducioDiscriminator3D`, its own engine at `[train] disc_lr`) learns with
the hinge loss, its rate scaled by `discriminator_multiplier`. Upstream's run: lpips_weight 0.1,
gan_start 10001, gan_weight 0.05, Adam(0.5, 0.9) at 2e-5 with the discriminator at 0.1×.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidcli.metrics import psnr
from vidcli.models.reducio import ReducioVAE, normalize_latent, sample_posterior
from vidcli.train.losses import adversarial_step, init_gan_weights

KL_WEIGHT = 1e-6
"""Upstream's `kl_weight`."""
OUTLIER_WEIGHT = 1.0
"""Upstream's outlier-penalty weight."""
OUTLIER_SIGMAS = 3.0
"""A pixel counts as an outlier this many standard deviations above its frame's mean."""
ADAPTIVE_CLAMP = 1e4
"""Upper bound of the adaptive GAN weight's gradient ratio."""
DISC_WARMUP = (5000, 6000)
"""The discriminator's rate multiplier is 0.1 before the first step, 1 after the second, linear
in between (upstream's schedule)."""
INIT_LOGVAR = -6.0
"""Posterior log-variance a Reducio-VAE trained from scratch starts at (std e^-3 ≈ 0.05)."""


class ReducioDiscriminator3D(nn.Module):
    """Upstream's 3-D PatchGAN: 4³/s2, 4³/s2, (3,4,4)/s2, (1,4,4)/s1 convs, then a (1,4,4) conv
    to one logit; BatchNorm3d (no conv bias) after all but the first and last, LeakyReLU 0.2.

    video (B, 3, T, H, W) -> patch logits (B, 1, T', H', W')
    """

    def __init__(self, base: int = 64):
        super().__init__()
        widths = (3, base, base * 2, base * 4, base * 8)
        kernels = (4, 4, (3, 4, 4), (1, 4, 4))
        strides = (2, 2, 2, 1)
        layers: list[nn.Module] = []
        for i, (kernel, stride) in enumerate(zip(kernels, strides, strict=True)):
            norm = i > 0
            layers.append(
                nn.Conv3d(widths[i], widths[i + 1], kernel, stride, _padding(kernel), bias=not norm)
            )
            if norm:
                layers.append(nn.BatchNorm3d(widths[i + 1]))
            layers.append(nn.LeakyReLU(0.2))
        layers.append(nn.Conv3d(widths[-1], 1, (1, 4, 4), 1, (0, 1, 1)))
        self.net = nn.Sequential(*layers)
        init_gan_weights(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


def _padding(kernel: int | tuple[int, int, int]) -> int | tuple[int, int, int]:
    """1 on every side, but none in time for a kernel one frame long."""
    return (0, 1, 1) if kernel == (1, 4, 4) else 1


def init_posterior(model: ReducioVAE, logvar: float = INIT_LOGVAR) -> None:
    """Start a from-scratch model's posterior nearly deterministic: `quant_conv`'s log-variance
    bias at `logvar`.

    With the default init the log-variance starts near 0 (std 1) while the means of different
    clips differ by about 0.3, so the layer-normed sample the decoder sees is mostly noise; a
    small decoder then learns to ignore the latent, and with no gradient to sharpen it the
    posterior stays that wide (a 1 × 1-latent demo AE after 400 steps: std 1.0, the direction
    of motion kept in 57 % of held-out reconstructions; the same run started at −6: 93 %).
    KL_WEIGHT is too small to matter at either value.
    """
    with torch.no_grad():
        model.quant_conv.bias[model.config.embed_dim :].fill_(logvar)


def discriminator_multiplier(step: int) -> float:
    """The discriminator's learning-rate multiplier at `step` (see DISC_WARMUP)."""
    start, end = DISC_WARMUP
    ramp = min(max((step - start) / (end - start), 0.0), 1.0)
    return 0.1 + 0.9 * ramp


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """½ Σ_{C,T,H,W}(μ² + σ² − 1 − log σ²), averaged over the batch."""
    per_sample = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
    return per_sample.mean()


def outlier_penalty(x_hat: torch.Tensor) -> torch.Tensor:
    """Mean over every element of max(0, x̂ − mean − 3·std), mean and (unbiased) std taken over
    (H, W) per sample, channel and frame of x̂ (B, C, T, H, W)."""
    mean = x_hat.mean(dim=(-2, -1), keepdim=True)
    std = x_hat.std(dim=(-2, -1), keepdim=True)
    return F.relu(x_hat - mean - OUTLIER_SIGMAS * std).mean()


def reconstruction(
    x_hat: torch.Tensor, video: torch.Tensor, lpips: nn.Module | None, lpips_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean|x − x̂| + lpips_weight · mean LPIPS over frames, and its parts."""
    loss = (x_hat - video).abs().mean()
    parts = {"l1": loss.item()}
    if lpips is not None and lpips_weight > 0:
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        perceptual = lpips(rearrange(x_hat, "b c t h w -> (b t) c h w"), frames).mean()
        loss = loss + lpips_weight * perceptual
        parts["lpips"] = perceptual.item()
    return loss, parts


def forward(model: ReducioVAE, video: torch.Tensor, noise: torch.Tensor | None = None):
    """(x̂, posterior mean, logvar, the decoder's last conv input) of a training step; noise:
    the posterior's ε (None: drawn from the global RNG, which the step loop seeds per step)."""
    mean, logvar = model.posterior(video)
    if noise is None:
        noise = torch.randn_like(mean)
    z = normalize_latent(sample_posterior(mean, logvar, noise))
    seen: list[torch.Tensor] = []
    hook = model.decoder.conv_out.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        x_hat = model.decode(z, content=model.content_frame(video))
    finally:
        hook.remove()
    return x_hat, mean, logvar, seen[-1]


def adaptive_weight(
    conv: nn.Conv3d,
    features: torch.Tensor,
    rec_loss_of: Any,
    g_loss_of: Any,
    base: float,
) -> torch.Tensor:
    """base · clamp(‖∇_W rec‖ / (‖∇_W g‖ + 1e-4), 0, 1e4) at W = `conv`'s weight.

    Both gradients only flow through the last conv, so it is re-run on detached copies of its
    input and weight: the AE's engine sees no extra backward (its ZeRO hooks stay quiet).
    """
    weight = conv.weight.detach().requires_grad_()
    x_hat = F.conv3d(features.detach(), weight, conv.bias.detach(), conv.stride, conv.padding)
    rec_grad = torch.autograd.grad(rec_loss_of(x_hat), weight, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss_of(x_hat), weight)[0]
    ratio = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return base * ratio.clamp(0.0, ADAPTIVE_CLAMP).detach()


def reducio_loss(
    engine: Any,
    batch: torch.Tensor,
    step: int,
    train: Any,
    lpips: nn.Module | None,
    discriminator: Any | None,
    freeze: Callable[[nn.Module], nn.Module],
) -> tuple[torch.Tensor, dict[str, float]]:
    """(generator loss, metrics) of clips `batch` (B, 3, 16, H, W) in [-1, 1]; see the module.

    freeze: a hook-free, frozen copy of a module (for the generator's view of D)."""
    model = engine.module  # ZeRO <= 2: parameters are whole, the engine's hooks see the grads
    x_hat, mean, logvar, features = forward(model, batch)
    x_hat = x_hat.float()
    rec, metrics = reconstruction(x_hat, batch, lpips, train.lpips_weight)
    kl = kl_loss(mean.float(), logvar.float())
    outlier = outlier_penalty(x_hat)
    loss = rec + KL_WEIGHT * kl + OUTLIER_WEIGHT * outlier
    metrics |= {"kl": kl.item(), "outlier": outlier.item()}
    metrics["psnr"] = psnr(x_hat.detach().clamp(-1, 1), batch, 2.0)
    if discriminator is not None and step >= train.gan_start:
        # A frozen copy of D for the generator: a backward through D's own engine would leak
        # generator gradients into D's next step.
        frozen_d = freeze(discriminator.module)
        weight = adaptive_weight(
            model.decoder.conv_out,
            features.float(),
            lambda x: reconstruction(x, batch, lpips, train.lpips_weight)[0],
            lambda x: -frozen_d(x).mean(),
            train.gan_weight,
        )
        loss, gan_metrics = adversarial_step(loss, weight, frozen_d, x_hat, batch, discriminator)
        metrics |= gan_metrics
    return loss, metrics
